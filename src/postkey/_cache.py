"""MemCache: a thread-safe key/value cache with per-entry TTL, LRU bounds and push-based waits.

Every operation is O(1) (amortised): entries sit in an insertion-ordered dict for LRU order, and
in one FIFO per distinct TTL, where insertion order is also expiry order.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

# Approximate bytes an entry costs beyond its value: the key string, the entry object, its slot
# in the LRU dict and in its expiry queue. Used for the byte bound, measured with tracemalloc.
ENTRY_OVERHEAD = 250
_MISSING: Any = object()


def value_size(value: object) -> int:
    """Approximate bytes held by a cached value (its own `cache_size()` if it has one)."""
    if isinstance(value, bytes | str):
        return len(value) + 40
    sizer = getattr(value, "cache_size", None)
    return int(sizer()) if sizer is not None else 64


class _Entry:
    __slots__ = ("expires_at", "key", "size", "value")

    def __init__(self, key: str, value: object, expires_at: float, size: int) -> None:
        self.key = key
        self.value = value
        self.expires_at = expires_at
        self.size = size


class MemCache:
    """A bounded in-memory cache; see the module docstring for the cost model.

    ``clock`` is injectable so tests can move time; waits always use real time.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        default_ttl_ms: int,
        tombstone_ttl_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._default_ttl = default_ttl_ms / 1000.0
        self._tombstone_ttl = tombstone_ttl_ms / 1000.0
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_ttl: dict[float, deque[_Entry]] = {}
        # key -> (buried until, fingerprint of the request whose result it was, or '')
        self._tombstones: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._waiters: dict[str, list[Callable[[object], None]]] = {}
        self._bytes = 0
        self._next_full_sweep = 0.0
        self.evictions = 0
        self.expirations = 0

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` if absent or expired. Marks it recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return default
            if entry.expires_at <= self._clock():
                self._expire(entry)
                return default
            self._entries.move_to_end(key)
            return entry.value

    def exists(self, key: str) -> bool:
        """True if ``key`` holds a live value."""
        return self.get(key, _MISSING) is not _MISSING

    def tombstone(self, key: str) -> str | None:
        """If ``key`` held a value that expired or was evicted within the tombstone TTL, the
        value's ``fingerprint`` attribute ('' if it had none); else None."""
        with self._lock:
            self._sweep(self._clock())
            grave = self._tombstones.get(key)
            return None if grave is None else grave[1]

    def count(self) -> int:
        """Number of live entries (expired ones are swept first)."""
        with self._lock:
            self._sweep(self._clock())
            return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """Approximate bytes held, as counted against the byte bound."""
        return self._bytes

    # -- writes ----------------------------------------------------------------------------------

    def set(
        self, key: str, value: object, ttl_ms: int | None = None, size: int | None = None
    ) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` (default TTL if None), waking its waiters.

        ``size`` is the value's cost in bytes if the caller knows it (else `value_size`).

        An existing value is replaced. If the cache is over its bounds afterwards, the least
        recently used entries are evicted (possibly this one, if it alone exceeds the byte bound).
        """
        ttl = self._default_ttl if ttl_ms is None else ttl_ms / 1000.0
        size = (value_size(value) if size is None else size) + len(key) + ENTRY_OVERHEAD
        with self._lock:
            now = self._clock()
            entry = _Entry(key, value, now + ttl, size)
            entries = self._entries
            old = entries.pop(key, None)
            if old is not None:
                self._drop(old)
            entries[key] = entry
            self._bytes += size
            queue = self._by_ttl.get(ttl)
            if queue is None:
                queue = self._by_ttl[ttl] = deque()
            queue.append(entry)
            if self._tombstones:
                self._tombstones.pop(key, None)
            # Writes pay for expiry: this TTL's queue now, every queue at most once a second.
            if queue[0].expires_at <= now or len(queue) > 2 * len(self._entries) + 1024:
                self._sweep_queue(ttl, queue)
            if now >= self._next_full_sweep:
                self._sweep(now)
            if len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._evict()
            waiters = self._waiters.pop(key, None) if self._waiters else None
        if waiters:
            for wake in waiters:
                wake(value)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it held a live value. Leaves no tombstone."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._drop(entry)
            return entry.expires_at > self._clock()

    def clear(self) -> None:
        """Remove every entry and tombstone. Waiters keep waiting."""
        with self._lock:
            self._entries.clear()
            self._by_ttl.clear()
            self._tombstones.clear()
            self._bytes = 0

    # -- waiting ---------------------------------------------------------------------------------

    def add_waiter(self, key: str, wake: Callable[[object], None]) -> Any:
        """Return the live value under ``key``, or register ``wake(value)`` for when one is set.

        Returns the value, or `MemCache.MISSING` after registering. ``wake`` runs on the thread
        that sets the value and must be quick.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at > self._clock():
                return entry.value
            self._waiters.setdefault(key, []).append(wake)
            return _MISSING

    def remove_waiter(self, key: str, wake: Callable[[object], None]) -> None:
        """Unregister ``wake`` (no error if it already ran)."""
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is not None:
                try:
                    waiters.remove(wake)
                except ValueError:
                    pass
                if not waiters:
                    del self._waiters[key]

    def wait(self, key: str, timeout: float | None, default: Any = None) -> Any:
        """Block until ``key`` holds a value or ``timeout`` seconds pass; return it or ``default``.

        The waiting thread sleeps on a lock that the setter releases: no polling.
        """
        gate = threading.Lock()
        gate.acquire()
        box: list[object] = []

        def wake(value: object) -> None:
            box.append(value)
            gate.release()

        found = self.add_waiter(key, wake)
        if found is not _MISSING:
            return found
        if gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return box[0]
        self.remove_waiter(key, wake)
        return box[0] if box else default

    MISSING: Any = _MISSING

    # -- internals (lock held) -------------------------------------------------------------------

    def _drop(self, entry: _Entry) -> None:
        # The entry may still sit in its expiry queue; drop the payload so only a small shell
        # lingers until the queue reaches it (or a compaction removes it).
        self._bytes -= entry.size
        entry.value = None
        entry.size = 0

    def _expire(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        self._bury(entry)
        self._drop(entry)
        self.expirations += 1

    def _bury(self, entry: _Entry) -> None:
        fingerprint = getattr(entry.value, "fingerprint", None) or ""
        self._tombstones[entry.key] = (self._clock() + self._tombstone_ttl, fingerprint)
        if len(self._tombstones) > max(self._max_entries, 1024):
            self._tombstones.popitem(last=False)

    def _sweep(self, now: float) -> None:
        self._next_full_sweep = now + 1.0
        for ttl, queue in list(self._by_ttl.items()):
            self._sweep_queue(ttl, queue)
        tombs = self._tombstones
        while tombs:
            key, (until, _fp) = next(iter(tombs.items()))
            if until > now:
                break
            del tombs[key]

    def _sweep_queue(self, ttl: float, queue: deque[_Entry]) -> None:
        now = self._clock()
        while queue and queue[0].expires_at <= now:
            entry = queue.popleft()
            if self._entries.get(entry.key) is entry:
                self._expire(entry)
        if not queue:
            del self._by_ttl[ttl]
        elif len(queue) > 2 * len(self._entries) + 1024:
            # Replaced and deleted entries leave shells behind; rebuild when they dominate.
            live = self._entries
            self._by_ttl[ttl] = deque(e for e in queue if live.get(e.key) is e)

    def _evict(self) -> None:
        while self._entries and (
            len(self._entries) > self._max_entries or self._bytes > self._max_bytes
        ):
            _key, entry = self._entries.popitem(last=False)
            self._bury(entry)
            self._drop(entry)
            self.evictions += 1
