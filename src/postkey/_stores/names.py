"""Every Redis key and channel name postkey uses, built in one place.

Keys are spread over `SHARDS` shards by a digest of the key. Everything that belongs to one
postkey key, and the queue stream its request waits in, shares the shard's hash tag
(``{prefix}:{sNN}:<key>:<part>`` and ``{prefix}:{sNN}:queue``), so on a Redis Cluster they share
a hash slot: the one Lua script that stores a worker's result also acknowledges and deletes its
queue entry, atomically, with no CROSSSLOT. A digest rather than the key itself picks the shard
because keys may contain ``{`` and ``}`` (MyChat's do), which would move or empty the tag; the
key follows the tag verbatim, so distinct keys never share a name.

Sixteen shards give a Cluster sixteen slots to spread over its masters (resharding moves a whole
shard); the number is part of the naming scheme, so every process agrees on it.
"""

from __future__ import annotations

import zlib

SHARDS = 16
RECORD = "r"  # the pending record, then the result, or a cache value
TOMBSTONE = "t"  # after the result's TTL: "expired", and the caller key's fingerprint
CHANNEL = "c"  # sharded pub/sub channel: a terminal result or a value was written
QUEUE = "queue"  # the shard's stream of requests waiting for a worker
DEAD = "dead"  # the shard's dead-letter stream: requests that kept killing their worker
GROUP = "workers"  # the consumer group every worker reads the queue streams in


def shard_of(key: str) -> int:
    """The shard ``key`` lives in (CRC-32: stable across processes and versions, and cheap)."""
    return zlib.crc32(key.encode()) % SHARDS


class Names:
    """Names under one prefix (``Settings.store_prefix``)."""

    __slots__ = ("_heads", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._heads = [f"{prefix}:{{s{index:02d}}}" for index in range(SHARDS)]

    def shard(self, index: int) -> str:
        """The hash-tagged head of every name in shard ``index``."""
        return self._heads[index]

    def tag(self, key: str) -> str:
        return f"{self._heads[zlib.crc32(key.encode()) % SHARDS]}:{key}"

    def parts(self, key: str) -> tuple[str, str, str]:
        """The record, tombstone and channel of ``key``, for the price of one."""
        tag = self.tag(key)
        return f"{tag}:{RECORD}", f"{tag}:{TOMBSTONE}", f"{tag}:{CHANNEL}"

    def record(self, key: str) -> str:
        return f"{self.tag(key)}:{RECORD}"

    def tombstone(self, key: str) -> str:
        return f"{self.tag(key)}:{TOMBSTONE}"

    def channel(self, key: str) -> str:
        return f"{self.tag(key)}:{CHANNEL}"

    def queue(self, index: int) -> str:
        """Shard ``index``'s queue stream (a name no key's record can take: no ``:r`` end)."""
        return f"{self.shard(index)}:{QUEUE}"

    def queue_of(self, key: str) -> str:
        """The queue stream a request under ``key`` waits in (its shard's)."""
        return self.queue(shard_of(key))

    def reply(self, index: int, reply_id: str) -> str:
        """The channel in shard ``index`` on which the submitter of ``reply_id`` hears of the
        results of its queued keys (one per shard: each result's script publishes in its own
        slot)."""
        return f"{self._heads[index]}:reply:{reply_id}"

    def dead(self, index: int) -> str:
        """Shard ``index``'s dead-letter stream."""
        return f"{self.shard(index)}:{DEAD}"

    def owner(self, owner: str) -> str:
        """The lease of one sending process or worker: present while it is alive."""
        return f"{self.prefix}:owner:{{{owner}}}"

    def key_of_channel(self, channel: str) -> str:
        """The postkey key a channel name belongs to."""
        tagged = channel[: -(len(CHANNEL) + 1)]
        return tagged.split("}:", 1)[1]

    def records_pattern(self) -> str:
        """A SCAN pattern for every record under the prefix."""
        return f"{_glob_escape(self.prefix)}:{{*}}:*:{RECORD}"


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)
