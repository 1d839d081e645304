"""Every Redis key and channel name postkey uses, built in one place.

Everything that belongs to one postkey key shares a Redis Cluster hash slot: the names carry a
hash tag made of a digest of the key, ``{prefix}:{<digest>}:<key>:<part>``. A digest rather than
the key itself because keys may contain ``{`` and ``}`` (MyChat's do), which would move or empty
the tag; the key follows the tag verbatim, so distinct keys never share a name.
"""

from __future__ import annotations

import hashlib

RECORD = "r"  # the pending record, then the result, or a cache value
TOMBSTONE = "t"  # after the result's TTL: "expired", and the caller key's fingerprint
CHANNEL = "c"  # sharded pub/sub channel: a terminal result or a value was written


class Names:
    """Names under one prefix (``Settings.store_prefix``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def tag(self, key: str) -> str:
        digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        return f"{self.prefix}:{{{digest}}}:{key}"

    def record(self, key: str) -> str:
        return f"{self.tag(key)}:{RECORD}"

    def tombstone(self, key: str) -> str:
        return f"{self.tag(key)}:{TOMBSTONE}"

    def channel(self, key: str) -> str:
        return f"{self.tag(key)}:{CHANNEL}"

    def owner(self, owner: str) -> str:
        """The lease of one sending process: present while it is alive."""
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
