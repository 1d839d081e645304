"""Memos for parsing that repeats: plain dicts with a bound, for small inputs only.

Callers look up with ``memo.get(key)`` (the hot path, one C call) and `remember` results of
inputs small enough that the memo's memory stays bounded whatever the callers send.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Entries a memo holds at most.
MEMO_MAX_ENTRIES = 4096


def remember(memo: dict[K, V], key: K, value: V) -> None:
    """Put ``key`` in ``memo``, emptying it first when full (simpler and cheaper than LRU order;
    the working set refills it at once)."""
    if len(memo) >= MEMO_MAX_ENTRIES:
        memo.clear()
    memo[key] = value
