"""The in-process store: pending jobs in a dict, results and cache values in a MemCache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .._errors import IdempotencyKeysFull, InvalidValue, KeyConflict
from .._job import Job
from .._result import Result, State
from .._settings import Settings
from .._waits import check_wait_timeout, wake_all
from .memcache import ENTRY_OVERHEAD, MemCache, value_size

log = logging.getLogger(__name__)

# A tick reclaims in steps of _TICK_STEP under the cache lock, releasing it in between (each
# step holds it well under 1 ms), and at most `tick`'s limit per call.
_TICK_STEP = 256
# Keys registered per acquisition of the store lock in wait_many, so a long key list cannot hold
# up the engine's finish() for long.
_REGISTER_CHUNK = 256


UNKNOWN_HINT = (
    "no request or value under this key in this process: the embedded store keeps keys in the"
    " memory of the process that issued them (another process cannot see them), and forgets"
    " them after their result's TTL and tombstone time"
)
EXPIRED_HINT = "its result's TTL passed (or the cache evicted it under its bounds)"


class MemoryStore:
    """Where keys live in embedded mode. Thread-safe.

    A key is in at most one place: ``_jobs`` while pending or running, then the MemCache (as a
    Result) until its TTL passes, then a tombstone (``expired``) for ``tombstone_ttl_ms``. A
    caller's key (idempotency key) is remembered from `register` until its result's TTL plus
    ``tombstone_ttl_ms`` has passed, however the cache is pressed; at most
    ``max_idempotency_keys`` at once.

    Waiters for a pending key are kept on its Job, registered and taken under ``_lock``, the
    lock `finish` takes after storing the result: a waiter either sees the job pending and is
    woken by `finish`, or sees it gone and reads the result (or what is left of it) at once.
    """

    #: Calls may wait on a server: AsyncClient makes them off the event loop.
    remote = False
    closing = False  # results land here, in this process: its waits can always be woken

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self.cache = self._new_cache(settings.cache_max_entries, settings.cache_max_bytes)
        # Namespace ("acme~") -> the cache of the keys under it (see partition_cache); empty
        # unless partitioned, and then every key outside them is in ``cache``.
        self._parts: dict[str, MemCache] = {}
        self._separator = ""
        self._tick_from = 0
        # Caller-key jobs pending, by the cache their results go to, and how many idempotency
        # keys each cache may hold (max_idempotency_keys, or a partition's share of it).
        self._caller_jobs_in: dict[MemCache, int] = {}
        self._key_share = settings.max_idempotency_keys
        self._max_ttl_ms = max(settings.result_ttl_ms, settings.max_timeout_ms, 30 * 86_400_000)
        self._max_idempotency_keys = settings.max_idempotency_keys
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        # Wakes that finish keeps back while the engine holds them (see hold_wakes).
        self._holding = False
        self._held: list[tuple[dict[Callable[[Result], object], None], Result]] = []

    def _new_cache(self, max_entries: int, max_bytes: int, shares: int = 1) -> MemCache:
        settings = self._settings
        return MemCache(
            max_entries=max_entries,
            max_bytes=max_bytes,
            default_ttl_ms=settings.result_ttl_ms,
            tombstone_ttl_ms=settings.tombstone_ttl_ms,
            max_tombstone_bytes=max(settings.max_tombstone_bytes // shares, 1),
            clock=self._clock,
        )

    def partition_cache(self, namespaces: list[str]) -> None:
        """Give each namespace (a prefix ending in one separator character, the same for all:
        ``"acme~"``) a cache of its own with an equal share of the store's bounds
        (``cache_max_entries``, ``cache_max_bytes``, ``max_tombstone_bytes``,
        ``max_idempotency_keys``): what is stored under one namespace, values and results, can
        then only ever evict entries of the same namespace, and its idempotency keys fill only
        its own share. Keys under no namespace keep the store's own cache. Called once, before
        anything is stored.

        Raises:
            InvalidValue: no namespaces, mixed separators, or the store already holds entries.
        """
        separators = {ns[-1:] for ns in namespaces}
        if not namespaces or len(separators) != 1 or "" in separators:
            raise InvalidValue("partition_cache takes namespaces that end in one separator")
        if self._parts or self._jobs or self.cache.count():
            raise InvalidValue("partition_cache must come before anything is stored")
        settings = self._settings
        share = len(set(namespaces))
        entries = max(settings.cache_max_entries // share, 1)
        size = max(settings.cache_max_bytes // share, 1)
        self._separator = separators.pop()
        self._parts = {ns: self._new_cache(entries, size, share) for ns in namespaces}
        self._key_share = max(self._max_idempotency_keys // share, 1)

    def _cache_for(self, key: str) -> MemCache:
        parts = self._parts
        if parts:
            namespace, separator, _ = key.partition(self._separator)
            part = parts.get(namespace + separator)
            if part is not None:
                return part
        return self.cache

    def _caches(self) -> list[MemCache]:
        return [self.cache, *self._parts.values()]

    def cache_stats(self) -> tuple[int, int, int]:
        """Live entries, the bytes they are counted for, and evictions so far, over every
        partition (see `partition_cache`)."""
        caches = self._caches()
        return (
            sum(c.count() for c in caches),
            sum(c.bytes_used for c in caches),
            sum(c.evictions for c in caches),
        )

    @property
    def max_ttl_ms(self) -> int:
        """The longest TTL a result or value may be given, in ms."""
        return self._max_ttl_ms

    # -- requests --------------------------------------------------------------------------------

    def register(self, job: Job, caller_key: bool) -> bool:
        """Record ``job`` as pending. Returns False if a caller's key already names the same request
        (nothing must be sent again).

        Raises:
            KeyConflict: the caller's key names a different request, or holds a cache value.
            IdempotencyKeysFull: ``max_idempotency_keys`` keys are already remembered (nothing
                was registered).
        """
        if not caller_key:
            # A fresh random key cannot collide: skip the lock on the hot path.
            self._jobs[job.key] = job
            return True
        with self._lock:
            seen = self._fingerprint_of(job.key)
            if seen is None:
                if job.fingerprint is not None:
                    cache = self._cache_for(job.key)
                    self._check_room_for_a_key(cache)
                    self._caller_jobs_in[cache] = self._caller_jobs_in.get(cache, 0) + 1
                self._jobs[job.key] = job
                return True
        if seen != job.fingerprint:
            raise KeyConflict(
                f"key {job.key!r} already names a different request (or holds a cache value)"
            )
        return False

    def _check_room_for_a_key(self, cache: MemCache) -> None:
        # Refusing is the only safe answer at the bound: forgetting a remembered key early would
        # let its request be sent twice. Pending caller-key jobs count as remembered keys.
        share = self._key_share
        if self._caller_jobs_in.get(cache, 0) + cache.remembered_keys() >= share:
            limit = self._max_idempotency_keys
            whose = f" under this namespace (its share of {limit})" if self._parts else ""
            raise IdempotencyKeysFull(
                f"{share} idempotency keys are remembered already{whose} (max_idempotency_keys);"
                " nothing was sent: retry later, or submit without key="
            )

    def _fingerprint_of(self, key: str) -> str | None:
        existing = self._jobs.get(key)
        if existing is not None:
            return existing.fingerprint or ""
        cache = self._cache_for(key)
        value = cache.get(key, MemCache.MISSING)
        if value is not MemCache.MISSING:
            return value.fingerprint or "" if isinstance(value, Result) else "\0cache value"
        return cache.tombstone(key)

    def job(self, key: str) -> Job | None:
        """The pending or running job under ``key``."""
        return self._jobs.get(key)

    def finish(self, job: Job, result: Result) -> None:
        """Store ``job``'s terminal result and wake its waiters; a later call for the same job
        changes nothing (the first terminal result wins).

        The job leaves ``_jobs`` and its waiters are woken even if storing raised; a waiter
        that raises is logged and cannot stop the others.
        """
        if self._jobs.get(job.key) is not job:
            return  # finished already: the first terminal result wins
        result.fingerprint = job.fingerprint
        cache = self._cache_for(job.key)
        try:
            try:
                cache.set(job.key, result, job.ttl_ms, result.cache_size(), job.fingerprint)
            except Exception:  # a bug (or a TTL past what the clock can add): keep the result
                log.exception("storing the result of %s failed; kept with the default TTL", job.key)
                cache.set(job.key, result, None, result.cache_size(), job.fingerprint)
        finally:
            # After the cache has the result: readers look in _jobs first, so the key is never
            # seen as unknown in between. (acquire / release: cheaper than `with` here.)
            jobs = self._jobs
            lock = self._lock
            lock.acquire()
            try:
                if jobs.get(job.key) is job:
                    del jobs[job.key]
                    if job.fingerprint is not None:
                        self._caller_jobs_in[cache] -= 1
                waiters = job.waiters
                job.waiters = None
                if waiters and self._holding:
                    self._held.append((waiters, result))
                    waiters = None
            finally:
                lock.release()
            if waiters:
                wake_all(waiters, result, "key", job.key)

    def hold_wakes(self) -> None:
        """Keep back the wakes of the results `finish` stores from now until `wake_held`.

        The engine holds them through its rounds while it is busy and wakes them together before
        it waits (or after about a millisecond): a reader that keeps up with the engine, key by
        key, then finds a batch of results each time it wakes instead of one. Every wake costs
        the reader a thread switch and the engine the preemption that comes with it; one per
        result cost a third of W1's throughput. The results themselves are stored at once.
        """
        self._holding = True

    def wake_held(self) -> None:
        """Wake the waiters kept back since `hold_wakes`, and stop keeping them."""
        with self._lock:
            self._holding = False
            held = self._held
            if not held:
                return
            self._held = []
        for waiters, result in held:
            wake_all(waiters, result, "key", result.key)

    def tick(self, limit: int = 2048) -> int:
        """Reclaim expired results, values, tombstones and idempotency keys while idle.

        Bounded: at most ``limit`` per call (2,048 take a few ms when a large cohort expires at
        once, nothing when none is due), in steps that release the cache's lock in between.
        The engine calls it about once a second. Returns how many were reclaimed.
        """
        done = 0
        caches = self._caches()
        if len(caches) > 1:  # partitioned: each tick starts at the next one, so none starves
            self._tick_from = (self._tick_from + 1) % len(caches)
            caches = caches[self._tick_from :] + caches[: self._tick_from]
        for cache in caches:
            while done < limit:
                step = cache.reap(min(_TICK_STEP, limit - done))
                done += step
                if step < _TICK_STEP:
                    break
        return done

    def lookup(self, key: str) -> Result:
        """What is known of ``key`` now, as a Result (state unknown if nothing)."""
        job = self._jobs.get(key)
        if job is not None:
            return Result(key, job.state, submitted_at=job.submitted_at)
        cache = self._cache_for(key)
        value = cache.get(key, MemCache.MISSING)
        if isinstance(value, Result):
            return value
        if value is MemCache.MISSING and cache.tombstone(key) is not None:
            return Result(key, State.EXPIRED, error=EXPIRED_HINT)
        return Result(key, State.UNKNOWN, error=UNKNOWN_HINT)

    # -- waiting ---------------------------------------------------------------------------------

    def watch(
        self, key: str, wake: Callable[[Result], None]
    ) -> tuple[Result, None] | tuple[None, Callable[[], None]]:
        """If ``key`` is settled for waiting purposes (terminal, unknown, expired), return
        ``(result, None)``; else register ``wake(result)`` for its terminal Result (called on the
        thread that stores it) and return ``(None, unwatch)``."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                job.add_waiter(wake)
        if job is None:
            return self.lookup(key), None
        return None, lambda: self._unwatch([job], wake)

    def _unwatch(self, jobs: list[Job], wake: Callable[[Result], object]) -> None:
        for start in range(0, len(jobs), _REGISTER_CHUNK):
            with self._lock:
                for job in jobs[start : start + _REGISTER_CHUNK]:
                    job.remove_waiter(wake)

    def wait(self, key: str, timeout: object) -> Result:
        """Block until ``key`` has a terminal Result or ``timeout`` seconds pass; return what is
        known then (pending or running on timeout).

        Raises:
            InvalidValue: a bad ``timeout`` (see `check_wait_timeout`).
        """
        seconds = check_wait_timeout(timeout)
        if key in self._jobs:
            woken = self._sleep_until_it_ended(key, seconds)
            if woken is not None:
                return woken  # what finish handed over (another reader may have taken it since)
        # A settled key costs this lookup and nothing more (the common case of reading results
        # in order: most have landed by the time they are asked for).
        result = self._cache_for(key).get(key)
        return result if isinstance(result, Result) else self.lookup(key)

    def wait_many(self, keys: list[str], timeout: object) -> list[Result]:
        """`wait` for all ``keys`` at once: one sleep, woken when the last one ends.

        However the wait ends (all ended, timeout, KeyboardInterrupt), no waiter is left behind.

        Raises:
            InvalidValue: ``timeout`` is neither None nor a number of seconds from 0 to 31
                days; raised before anything is registered.
        """
        seconds = check_wait_timeout(timeout)
        jobs = self._jobs
        woken: dict[str, Result] = {}
        if any(k in jobs for k in keys):
            self._sleep_until_ended(keys, seconds, woken)
        if self._parts:
            results = [woken[k] if k in woken else self._cache_for(k).get(k) for k in keys]
        else:
            get = self.cache.get
            results = [woken[k] if k in woken else get(k) for k in keys]
        return [
            r if isinstance(r, Result) else self.lookup(k)
            for k, r in zip(keys, results, strict=True)
        ]

    def _sleep_until_it_ended(self, key: str, seconds: float | None) -> Result | None:
        # One lock per waiter, made only for a key still running; finish releases it and hands
        # over the result (None: not woken, or the key ended before the waiter was registered).
        gate = threading.Lock()
        gate.acquire()
        got: list[Result] = []

        def wake(result: Result) -> None:
            got.append(result)
            gate.release()

        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return None  # ended meanwhile: wait reads its result
            job.add_waiter(wake)
        ended = False
        try:
            ended = gate.acquire(timeout=-1 if seconds is None else seconds)
        finally:
            if not ended:  # a timeout or an interrupt: no waiter is left behind
                self._unwatch([job], wake)
        return got[0] if got else None

    def _sleep_until_ended(
        self, keys: list[str], seconds: float | None, woken: dict[str, Result]
    ) -> None:
        """Sleep until every key of ``keys`` ended; ``woken`` gets each result finish hands
        over (another reader may take it from the cache before this one reads it)."""
        gate = threading.Lock()
        gate.acquire()
        count_lock = threading.Lock()
        left = [1]  # one share for the registration itself, given up once it is complete

        def one_done(result: Result | None) -> None:
            if result is not None:
                woken[result.key] = result
            with count_lock:
                left[0] -= 1
                if left[0] == 0:
                    gate.release()

        jobs = self._jobs
        watched: list[Job] = []
        try:
            for start in range(0, len(keys), _REGISTER_CHUNK):
                with self._lock:
                    added = 0
                    for key in keys[start : start + _REGISTER_CHUNK]:
                        job = jobs.get(key)
                        if job is None:
                            continue  # already ended: wait_many reads its result
                        if job.waiters is None:
                            job.waiters = {one_done: None}
                        elif one_done in job.waiters:
                            continue  # the same key twice in keys: one wake-up for it
                        else:
                            job.waiters[one_done] = None
                        watched.append(job)
                        added += 1
                    # Counted before the store lock is released, so before finish can call them.
                    with count_lock:
                        left[0] += added
            one_done(None)
            if gate.acquire(timeout=-1 if seconds is None else seconds):
                watched.clear()  # every job ended, and finish took its waiters with it
        finally:
            if watched:
                self._unwatch(watched, one_done)

    # -- the general cache -----------------------------------------------------------------------

    def cache_set(self, key: str, value: object, ttl_ms: object) -> None:
        """Store a str or bytes value.

        Raises:
            InvalidValue: value not str / bytes, or ttl_ms not a positive int within 30 days.
            KeyConflict: ``key`` names a request, its result, or a remembered idempotency key.
        """
        if not isinstance(value, str | bytes):
            raise InvalidValue(f"cache values must be str or bytes, not {type(value).__name__}")
        if ttl_ms is not None and (type(ttl_ms) is not int or not 1 <= ttl_ms <= self._max_ttl_ms):
            raise InvalidValue(
                f"ttl_ms must be an int between 1 and {self._max_ttl_ms}, got {ttl_ms!r}"
            )
        cache = self._cache_for(key)
        size = value_size(value) + len(key) + ENTRY_OVERHEAD
        if size > cache.max_bytes:
            # Stored, it would only evict everything else and then itself.
            raise InvalidValue(
                f"the value takes about {size} bytes; the cache it would go to holds at most"
                f" {cache.max_bytes} (cache_max_bytes, shared among namespaces if partitioned)"
            )
        with self._lock:
            if key in self._jobs or isinstance(cache.get(key), Result) or cache.tombstone(key):
                raise KeyConflict(f"key {key!r} names a request; cache_set cannot overwrite it")
            cache.set(key, value, ttl_ms, size - len(key) - ENTRY_OVERHEAD)

    def cache_get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` (a Result for request keys), or ``default``."""
        return self._cache_for(key).get(key, default)

    def cache_exists(self, key: str) -> bool:
        """True if ``key`` holds a live value or result."""
        return self._cache_for(key).exists(key)

    def cache_delete(self, key: str) -> bool:
        """Remove ``key``'s value or result; True if there was one."""
        return self._cache_for(key).delete(key)

    def cache_count(self) -> int:
        """Live entries (values and results)."""
        return sum(c.count() for c in self._caches())

    def cache_clear(self) -> None:
        """Remove every value and result (pending requests are not affected)."""
        for cache in self._caches():
            cache.clear()

    def cache_watch(self, key: str, wake: Callable[[object], None]) -> Any:
        """The value, or `MISSING` after registering ``wake`` (see `Store.cache_watch`)."""
        return self._cache_for(key).add_waiter(key, wake)

    def cache_unwatch(self, key: str, wake: Callable[[object], None]) -> None:
        """Forget ``wake`` (see `Store.cache_unwatch`)."""
        self._cache_for(key).remove_waiter(key, wake)

    def cache_wait(self, key: str, timeout: object, default: Any = None) -> Any:
        """Block until ``key`` holds a value or ``timeout`` seconds pass.

        Raises:
            InvalidValue: a bad ``timeout``.
        """
        return self._cache_for(key).wait(key, timeout, default)

    def release_waiters(self) -> None:
        """Wake every cache waiter with its default (interpreter exit)."""
        for cache in self._caches():
            cache.release_waiters()

    def flush(self, timeout: float) -> bool:
        """Nothing is written in the background here."""
        return True

    def close(self) -> None:
        """Nothing to let go of: the store is this process's memory (results stay readable)."""
