"""A plain redis-py client on a store URL, for tests that look inside Redis (one or a Cluster)."""

from __future__ import annotations

from typing import Any

import redis


def spy_client(url: str) -> Any:
    """``redis.Redis`` for a ``redis://`` URL, ``redis.RedisCluster`` for ``redis+cluster://``."""
    scheme, sep, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        return redis.RedisCluster.from_url(scheme.removesuffix("+cluster") + sep + rest)
    return redis.Redis.from_url(url)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].endswith("+cluster")


def clients(spy: Any) -> list[dict[str, Any]]:
    """CLIENT LIST of every node (a Cluster's answer is per node)."""
    if isinstance(spy, redis.RedisCluster):
        per_node = spy.client_list(target_nodes=spy.ALL_NODES)
        return [c for node_clients in per_node.values() for c in node_clients]
    return list(spy.client_list())


def kill_pubsub_clients(spy: Any) -> None:
    """CLIENT KILL TYPE pubsub on every node."""
    nodes = [spy.get_redis_connection(n) for n in spy.get_nodes()] if is_cluster(spy) else [spy]
    for node in nodes:
        node.execute_command("CLIENT", "KILL", "TYPE", "pubsub")


def is_cluster(spy: Any) -> bool:
    return isinstance(spy, redis.RedisCluster)
