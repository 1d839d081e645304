"""Sharded pub/sub connections for the wait hub: one to a single Redis, or one per Cluster master.

Both kinds answer the same few calls (subscribe, unsubscribe, the next message without waiting,
the sockets to sleep on, close), so the hub never asks which it has. On a Cluster, one
``SSUBSCRIBE`` may only name channels of one slot, so channels are subscribed slot by slot on
the master that holds the slot. A connection that is lost, or a slot that moves to another
master, surfaces as a `redis.ConnectionError`: the hub then starts over on fresh connections
and reads every watched key again, rather than trusting a silent re-subscription.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import PubSub
from redis.exceptions import MovedError

from .redis_connect import is_cluster


class Channels:
    """Sharded pub/sub on a single Redis: one connection."""

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]

    def ssubscribe(self, channels: list[str]) -> None:
        self._pubsub.ssubscribe(*channels)

    def sunsubscribe(self, channels: list[str]) -> None:
        if self._pubsub.connection is not None:  # nothing was subscribed yet otherwise
            self._pubsub.sunsubscribe(*channels)

    def get_message(self) -> dict[str, Any] | None:
        """The next message already received (buffered or on the socket), without waiting."""
        message: dict[str, Any] | None = self._pubsub.get_message(timeout=0)
        return message

    def fds(self) -> list[int]:
        """The sockets to sleep on until a message comes."""
        connection = self._pubsub.connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        return [sock.fileno()] if sock is not None else []

    def close(self) -> None:
        self._pubsub.close()


class _NodePubSub(PubSub):
    """One Cluster master's pub/sub connection, which never re-subscribes by itself."""

    def on_connect(self, connection: Any) -> None:
        # redis-py calls this when it re-made a lost connection, and would subscribe again to
        # every channel of this node in one command, which a Cluster refuses (CROSSSLOT) once
        # they span slots. The hub starts over instead, slot by slot, and reads every key.
        raise redis.ConnectionError("the pub/sub connection to a cluster node was lost")


class ClusterChannels:
    """Sharded pub/sub on a Redis Cluster: one connection per master that holds a channel."""

    def __init__(self, cluster: redis.RedisCluster) -> None:
        self._cluster = cluster
        self._nodes: dict[str, _NodePubSub] = {}
        self._home: dict[str, tuple[str, int]] = {}  # channel -> (node name, slot)
        self._leaving: set[str] = set()  # channels we asked to leave, not yet confirmed
        self._turn = 0

    def ssubscribe(self, channels: list[str]) -> None:
        cluster = self._cluster
        groups: dict[tuple[str, int], list[str]] = {}
        for channel in channels:
            slot = cluster.keyslot(channel)  # type: ignore[no-untyped-call]
            node = cluster.get_node_from_key(channel)  # type: ignore[no-untyped-call]
            groups.setdefault((node.name, slot), []).append(channel)
            self._home[channel] = (node.name, slot)
            self._leaving.discard(channel)
            if node.name not in self._nodes:
                pool = cluster.get_redis_connection(node).connection_pool
                self._nodes[node.name] = _NodePubSub(pool, ignore_subscribe_messages=False)
        for (name, _slot), group in groups.items():
            self._nodes[name].ssubscribe(*group)

    def sunsubscribe(self, channels: list[str]) -> None:
        groups: dict[tuple[str, int], list[str]] = {}
        for channel in channels:
            home = self._home.pop(channel, None)
            if home is not None:
                groups.setdefault(home, []).append(channel)
                self._leaving.add(channel)
        for (name, _slot), group in groups.items():
            pubsub = self._nodes.get(name)
            if pubsub is not None and pubsub.connection is not None:
                pubsub.sunsubscribe(*group)

    def get_message(self) -> dict[str, Any] | None:
        """The next message any master's connection already holds, without waiting; the
        connections take turns, so a busy one cannot starve the others."""
        nodes = list(self._nodes.values())
        for i in range(len(nodes)):
            pubsub = nodes[(self._turn + i) % len(nodes)]
            if pubsub.connection is None:
                continue
            try:
                message: dict[str, Any] | None = pubsub.get_message(timeout=0)
            except MovedError as exc:  # a slot moved before we subscribed there
                self._cluster.nodes_manager.initialize()
                raise redis.ConnectionError(f"a subscribed slot moved: {exc}") from None
            if message is None:
                continue
            self._turn = (self._turn + i + 1) % len(nodes)
            if message["type"] == "sunsubscribe":
                channel = message["channel"]
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                if name not in self._leaving:
                    # Redis drops a shard channel's subscribers when its slot moves away.
                    self._cluster.nodes_manager.initialize()
                    raise redis.ConnectionError(f"the slot of {name!r} moved to another node")
                self._leaving.discard(name)
            return message
        return None

    def fds(self) -> list[int]:
        out = []
        for pubsub in self._nodes.values():
            sock = getattr(pubsub.connection, "_sock", None)
            if sock is not None:
                out.append(sock.fileno())
        return out

    def close(self) -> None:
        for pubsub in self._nodes.values():
            try:
                pubsub.close()
            except Exception:  # closing what is already broken: nothing left to do
                pass
        self._nodes.clear()


def open_channels(client: Any) -> Channels | ClusterChannels:
    """Sharded pub/sub for ``client``, a ``redis.Redis`` or a ``redis.RedisCluster``."""
    if is_cluster(client):
        return ClusterChannels(client)
    return Channels(client)
