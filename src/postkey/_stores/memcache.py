"""MemCache: a thread-safe key/value cache with per-entry TTL, LRU bounds and push-based waits.

Cost model, whatever the mix of TTLs: reads are O(1), writes O(log n) (one heap push), and no call
walks the cache under the lock. Entries sit in an insertion-ordered dict (LRU order) and in one
heap of ``(expires_at, key)``. An entry removed early (replaced, deleted, evicted) leaves its heap
item behind as a shell that is skipped when it surfaces; when shells outnumber live entries the
heap is rebuilt a few items per write. Expired entries are reclaimed lazily: a read drops the
entry it finds expired, a write reclaims at most `REAP_PER_WRITE`, and `MemCache.reap` (the
store's tick, about once a second) reclaims a bounded number while the process is idle.

Tombstones say ``expired`` rather than ``unknown`` for a key whose value expired or was evicted.
Plain ones live ``tombstone_ttl_ms`` and are bounded in bytes (oldest dropped first). A key set
with a ``fingerprint`` (a result under an idempotency key) is instead *remembered* until its TTL
plus ``tombstone_ttl_ms`` has passed, whatever the pressure on the cache; the store bounds how many.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any, ClassVar

from .._waits import check_wait_timeout, wake_all
from .base import MISSING

# Approximate bytes an entry costs beyond its value: the key string, the entry object, its slot
# in the LRU dict and its item in the expiry heap. Used for the byte bound, measured with
# tracemalloc.
ENTRY_OVERHEAD = 300
# Approximate bytes a plain tombstone costs beyond its key's characters: the key string, the
# float and the ordered-dict slot (measured with tracemalloc).
TOMBSTONE_OVERHEAD = 160
#: Expired entries a write reclaims at most (so a write never pays for a whole expired cohort).
REAP_PER_WRITE = 64
# Heap items a write moves while a shell-heavy expiry heap is being rebuilt; at 4 the rebuild
# finishes before the new heap can itself be dominated by shells.
COMPACT_PER_WRITE = 4
# Entries evicted per hold of the lock when one write puts the cache over its bounds.
EVICT_PER_HOLD = 256
# Expired entries count() reclaims before counting; more than that expiring in the same instant
# shows in the count until a later call or the tick reclaims them.
COUNT_REAP = 1024
MiB = 1024 * 1024
_MISSING: Any = MISSING


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

    ``max_tombstone_bytes`` bounds plain tombstones (never above ``max_bytes``). ``clock`` is
    injectable so tests can move time; waits always use real time.
    """

    MISSING: ClassVar[Any] = _MISSING  # a class attribute (a compiled class needs it said)

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        default_ttl_ms: int,
        tombstone_ttl_ms: int,
        max_tombstone_bytes: int = 64 * MiB,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._default_ttl = default_ttl_ms / 1000.0
        self._tombstone_ttl = tombstone_ttl_ms / 1000.0
        self._max_tomb_bytes = min(max_tombstone_bytes, max_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # (expires_at, key): an item whose time is not its key's entry's time is a shell left by
        # an earlier entry under that key (compared with ==: a compiled build unboxes floats).
        self._heap: list[tuple[float, str]] = []
        # A shell-heavy heap being moved into _heap, a few items per write; empty otherwise.
        # Taking items from its end keeps it a valid heap, so both can be reaped meanwhile.
        self._old: list[tuple[float, str]] = []
        # Plain tombstones: key -> buried until. One TTL for all, so insertion order is expiry
        # order and the oldest is also the first to go under the byte bound.
        self._tombs: OrderedDict[str, float] = OrderedDict()
        self._tomb_bytes = 0
        # Idempotency keys: key -> (remembered until, fingerprint), and the same in expiry order.
        self._remembered: dict[str, tuple[float, str]] = {}
        self._remembered_heap: list[tuple[float, str]] = []
        # key -> its waiters (a dict: O(1) removal when a wait times out)
        self._waiters: dict[str, dict[Callable[[object], None], None]] = {}
        self._bytes = 0
        self.evictions = 0
        self.expirations = 0

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` if absent or expired. Marks it recently used."""
        # `with`, not acquire() / try: an interrupt (Ctrl-C) between those two would leave the
        # lock held for good.
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return default
            now = self._clock()
            if entry.expires_at <= now:
                self._expire(entry, now)
                return default
            self._entries.move_to_end(key)
            return entry.value

    def exists(self, key: str) -> bool:
        """True if ``key`` holds a live value."""
        return self.get(key, _MISSING) is not _MISSING

    def tombstone(self, key: str) -> str | None:
        """What the cache remembers of ``key`` beyond its live value.

        The fingerprint if ``key`` is a remembered idempotency key (its value live or not); ''
        if a plain value under it expired or was evicted within the tombstone TTL (and its
        tombstone was not dropped under the byte bound); else None.
        """
        with self._lock:
            now = self._clock()
            seen = self._remembered.get(key)
            if seen is not None and seen[0] > now:
                return seen[1]
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                self._expire(entry, now)
            until = self._tombs.get(key)
            return "" if until is not None and until > now else None

    def count(self) -> int:
        """Number of live entries.

        Exact unless more than 1,024 entries expired since the last reclaim: the rest are
        counted until a later call (or the store's tick) reclaims them.
        """
        with self._lock:
            self._reap(self._clock(), COUNT_REAP)
            return len(self._entries)

    def remembered_keys(self) -> int:
        """Number of idempotency keys remembered now (those whose time passed are reclaimed
        first, up to 1,024 per call)."""
        with self._lock:
            self._reap_remembered(self._clock(), COUNT_REAP)
            return len(self._remembered)

    @property
    def max_bytes(self) -> int:
        """The byte bound (``max_bytes``)."""
        return self._max_bytes

    @property
    def bytes_used(self) -> int:
        """Approximate bytes held by values, as counted against the byte bound."""
        return self._bytes

    @property
    def tombstone_bytes(self) -> int:
        """Approximate bytes held by plain tombstones, as counted against their bound."""
        return self._tomb_bytes

    # -- writes ----------------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: object,
        ttl_ms: int | None = None,
        size: int | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` (default TTL if None), waking its waiters.

        ``size`` is the value's cost in bytes if the caller knows it (else `value_size`). With a
        ``fingerprint`` (a result under an idempotency key), the key is remembered with it until
        the TTL plus the tombstone TTL has passed, whatever happens to the value.

        An existing value is replaced. If the cache is over its bounds afterwards, the least
        recently used entries are evicted. A value that alone exceeds the byte bound is not kept
        (its waiters still get it; the key reads as evicted): stored, it would evict every other
        entry, then itself. A waiter that raises is logged; it cannot stop the store or the
        other waiters.
        """
        ttl = self._default_ttl if ttl_ms is None else ttl_ms / 1000.0
        size = (value_size(value) if size is None else size) + len(key) + ENTRY_OVERHEAD
        with self._lock:  # `with`: see get()
            now = self._clock()
            expires_at = now + ttl
            entries = self._entries
            old = entries.pop(key, None)
            if old is not None:
                self._drop(old)
            if size > self._max_bytes:
                self._refuse(key, expires_at, fingerprint, now)
                over = False
            else:
                entries[key] = _Entry(key, value, expires_at, size)
                self._bytes += size
                heap = self._heap
                heappush(heap, (expires_at, key))
                if self._tombs and self._tombs.pop(key, None) is not None:
                    self._tomb_bytes -= len(key) + TOMBSTONE_OVERHEAD
                if fingerprint:
                    self._remember(key, expires_at + self._tombstone_ttl, fingerprint)
                # Writes pay for expiry and for a pending heap rebuild, a bounded amount each.
                if heap[0][0] <= now or self._old:
                    self._reap(now, REAP_PER_WRITE)
                    if self._old:
                        self._compact(COMPACT_PER_WRITE)
                over = self._evict(now, EVICT_PER_HOLD)
            waiters = self._waiters.pop(key, None) if self._waiters else None
        while over:  # a large value displacing many small ones: in bounded steps, not one hold
            time.sleep(0)  # let a thread waiting for the lock have it (locks are not fair)
            with self._lock:
                over = self._evict(self._clock(), EVICT_PER_HOLD)
        if waiters:
            wake_all(waiters, value, "cache key", key)

    def _refuse(self, key: str, expires_at: float, fingerprint: str | None, now: float) -> None:
        """(Under _lock) A value over the whole byte bound: not kept, counted as evicted at
        once, its key buried as any evicted key is."""
        if fingerprint:
            self._remember(key, expires_at + self._tombstone_ttl, fingerprint)
        self._bury(_Entry(key, None, expires_at, 0), now)
        self.evictions += 1

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it held a live value. Leaves no plain tombstone (a remembered
        idempotency key stays remembered until its time)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._drop(entry)
            if self._old:
                self._compact(COMPACT_PER_WRITE)  # deletes pay for the rebuild they cause
            return entry.expires_at > self._clock()

    def clear(self) -> None:
        """Remove every entry and plain tombstone. Remembered idempotency keys stay until their
        time; waiters keep waiting."""
        with self._lock:
            # Swapped under the lock, freed after it: freeing a million entries takes a while.
            entries, heap, old, tombs = self._entries, self._heap, self._old, self._tombs
            self._entries = OrderedDict()
            self._heap = []
            self._old = []
            self._tombs = OrderedDict()
            self._tomb_bytes = 0
            self._bytes = 0
        # ... and in steps, yielding in between: freeing holds the GIL, which other threads
        # (the engine among them) need as much as the lock.
        for table in (entries, tombs):
            while table:
                for _ in range(min(len(table), EVICT_PER_HOLD * 16)):
                    table.popitem()
                time.sleep(0)
        for items in (heap, old):
            while items:
                del items[-EVICT_PER_HOLD * 16 :]
                time.sleep(0)

    def release_waiters(self) -> None:
        """Wake every waiter with nothing (their waits return their default): the interpreter
        is exiting, and a wait for a value nobody will set must not hold it."""
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for key, wakes in waiters.items():
            wake_all(wakes, _MISSING, "cache key", key)

    def reap(self, limit: int) -> int:
        """Reclaim up to ``limit`` expired entries, tombstones and remembered keys, and move
        heap items of a pending rebuild; return how many (0 when nothing is due).

        Work is bounded by ``limit``: call it repeatedly (the store's tick does) to catch up.
        """
        with self._lock:
            now = self._clock()
            done = self._reap(now, limit)
            if done < limit:
                done += self._reap_tombstones(now, limit - done)
            if done < limit:
                done += self._reap_remembered(now, limit - done)
            if done < limit and self._old:
                done += self._compact(limit - done)
            return done

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
            self._waiters.setdefault(key, {})[wake] = None
            return _MISSING

    def remove_waiter(self, key: str, wake: Callable[[object], None]) -> None:
        """Unregister ``wake`` (no error if it already ran)."""
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.pop(wake, None)
                if not waiters:
                    del self._waiters[key]

    def wait(self, key: str, timeout: object, default: Any = None) -> Any:
        """Block until ``key`` holds a value or ``timeout`` seconds pass; return it or ``default``.

        The waiting thread sleeps on a lock that the setter releases: no polling. However the
        wait ends (value, timeout, KeyboardInterrupt), no waiter is left registered.

        Raises:
            InvalidValue: a bad ``timeout`` (see `check_wait_timeout`), refused before anything
                is registered.
        """
        seconds = check_wait_timeout(timeout)
        gate = threading.Lock()
        gate.acquire()
        box: list[object] = []

        def wake(value: object) -> None:
            box.append(value)
            gate.release()

        try:
            found = self.add_waiter(key, wake)
            if found is not _MISSING:
                return found
            gate.acquire(timeout=-1 if seconds is None else seconds)
            return box[0] if box and box[0] is not _MISSING else default
        finally:
            if not box:  # woken means already unregistered by the setter
                self.remove_waiter(key, wake)

    # -- internals (lock held) -------------------------------------------------------------------

    def _drop(self, entry: _Entry) -> None:
        # The entry's heap item stays as a shell; drop the payload so only the small item lingers.
        self._bytes -= entry.size
        entry.value = None
        entry.size = 0
        if not self._old and len(self._heap) > 2 * len(self._entries) + 1024:
            # Shells dominate: rebuild the heap from the live items, a few per write from now.
            self._old, self._heap = self._heap, []

    def _expire(self, entry: _Entry, now: float) -> None:
        del self._entries[entry.key]
        self._bury(entry, now)
        self._drop(entry)
        self.expirations += 1

    def _bury(self, entry: _Entry, now: float) -> None:
        key = entry.key
        seen = self._remembered.get(key)
        if seen is not None and seen[0] > now:
            return  # an idempotency key, remembered since it was set until its own time
        tombs = self._tombs
        tombs[key] = now + self._tombstone_ttl
        self._tomb_bytes += len(key) + TOMBSTONE_OVERHEAD
        while self._tomb_bytes > self._max_tomb_bytes and tombs:
            oldest, _until = tombs.popitem(last=False)
            self._tomb_bytes -= len(oldest) + TOMBSTONE_OVERHEAD

    def _remember(self, key: str, until: float, fingerprint: str) -> None:
        seen = self._remembered.get(key)
        if seen is not None and seen[0] >= until:
            # Keep the later time (and its float object, which its heap item is matched by).
            self._remembered[key] = (seen[0], fingerprint)
            return
        self._remembered[key] = (until, fingerprint)
        heappush(self._remembered_heap, (until, key))

    def _reap(self, now: float, limit: int) -> int:
        done = 0
        entries = self._entries
        for heap in (self._heap, self._old):
            while done < limit and heap and heap[0][0] <= now:
                expires_at, key = heappop(heap)
                done += 1
                entry = entries.get(key)
                # == and not `is`: a compiled build keeps floats unboxed, so identity says
                # nothing. An entry set again since has another time (or the same: due now too).
                if entry is not None and entry.expires_at == expires_at:
                    self._expire(entry, now)
        return done

    def _reap_tombstones(self, now: float, limit: int) -> int:
        done = 0
        tombs = self._tombs
        while done < limit and tombs:
            key = next(iter(tombs))
            if tombs[key] > now:
                break
            del tombs[key]
            self._tomb_bytes -= len(key) + TOMBSTONE_OVERHEAD
            done += 1
        return done

    def _reap_remembered(self, now: float, limit: int) -> int:
        done = 0
        heap = self._remembered_heap
        remembered = self._remembered
        while done < limit and heap and heap[0][0] <= now:
            until, key = heappop(heap)
            done += 1
            seen = remembered.get(key)
            if seen is not None and seen[0] == until:  # the current time (== : see _reap)
                del remembered[key]
        return done

    def _compact(self, limit: int) -> int:
        old = self._old
        heap = self._heap
        entries = self._entries
        moved = min(limit, len(old))
        for _ in range(moved):
            item = old.pop()
            entry = entries.get(item[1])
            if entry is not None and entry.expires_at == item[0]:  # == : see _reap
                heappush(heap, item)
        return moved

    def _evict(self, now: float, limit: int) -> bool:
        """Evict least recently used entries while over the bounds, at most ``limit``; True if
        still over them."""
        entries = self._entries
        for _ in range(limit):
            if not entries or (
                len(entries) <= self._max_entries and self._bytes <= self._max_bytes
            ):
                return False
            _key, entry = entries.popitem(last=False)
            self._bury(entry, now)
            self._drop(entry)
            self.evictions += 1
        return bool(entries) and (len(entries) > self._max_entries or self._bytes > self._max_bytes)
