"""The in-process store: pending jobs in a dict, results and cache values in a MemCache."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._cache import MemCache
from ._errors import InvalidValue, KeyConflict
from ._job import Job
from ._result import Result, State
from ._settings import Settings

CacheValue = str | bytes


class MemoryStore:
    """Where keys live in embedded mode. Thread-safe.

    A key is in at most one place: ``_jobs`` while pending or running, then the MemCache (as a
    Result) until its TTL passes, then a tombstone (``expired``) for ``tombstone_ttl_ms``.
    """

    def __init__(self, settings: Settings) -> None:
        self.cache = MemCache(
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            default_ttl_ms=settings.result_ttl_ms,
            tombstone_ttl_ms=settings.tombstone_ttl_ms,
        )
        self._max_ttl_ms = max(settings.result_ttl_ms, settings.max_timeout_ms, 30 * 86_400_000)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # -- requests --------------------------------------------------------------------------------

    def register(self, job: Job, caller_key: bool) -> bool:
        """Record ``job`` as pending. Returns False if a caller's key already names the same request
        (nothing must be sent again).

        Raises:
            KeyConflict: the caller's key names a different request, or holds a cache value.
        """
        if not caller_key:
            # A fresh random key cannot collide: skip the lock on the hot path.
            self._jobs[job.key] = job
            return True
        with self._lock:
            seen = self._fingerprint_of(job.key)
            if seen is None:
                self._jobs[job.key] = job
                return True
        if seen != job.fingerprint:
            raise KeyConflict(
                f"key {job.key!r} already names a different request (or holds a cache value)"
            )
        return False

    def _fingerprint_of(self, key: str) -> str | None:
        existing = self._jobs.get(key)
        if existing is not None:
            return existing.fingerprint or ""
        value = self.cache.get(key, MemCache.MISSING)
        if value is not MemCache.MISSING:
            return value.fingerprint or "" if isinstance(value, Result) else "\0cache value"
        return self.cache.tombstone(key)

    def forget(self, job: Job) -> None:
        """Undo `register` for a job the engine refused."""
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]

    def job(self, key: str) -> Job | None:
        """The pending or running job under ``key``."""
        return self._jobs.get(key)

    def finish(self, job: Job, result: Result) -> None:
        """Store ``job``'s terminal result and wake its waiters (called once per job)."""
        result.fingerprint = job.fingerprint
        self.cache.set(job.key, result, job.ttl_ms, result.cache_size())
        # Readers look in _jobs before the cache, so the key is never seen as unknown in between.
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]

    def lookup(self, key: str) -> Result:
        """What is known of ``key`` now, as a Result (state unknown if nothing)."""
        job = self._jobs.get(key)
        if job is not None:
            return Result(key, job.state, submitted_at=job.submitted_at)
        value = self.cache.get(key, MemCache.MISSING)
        if isinstance(value, Result):
            return value
        if value is MemCache.MISSING and self.cache.tombstone(key) is not None:
            return Result(key, State.EXPIRED)
        return Result(key, State.UNKNOWN)

    def watch(
        self, key: str, wake: Callable[[Result], None]
    ) -> tuple[Result, None] | tuple[None, Callable[[], None]]:
        """If ``key`` is settled for waiting purposes (terminal, unknown, expired), return
        ``(result, None)``; else register ``wake(result)`` for its terminal Result (called on the
        thread that stores it) and return ``(None, unwatch)``."""
        current = self.lookup(key)
        if current.state is not State.PENDING and current.state is not State.RUNNING:
            return current, None

        def on_value(value: object) -> None:
            if isinstance(value, Result):
                wake(value)

        found = self.cache.add_waiter(key, on_value)
        if isinstance(found, Result):
            return found, None
        return None, lambda: self.cache.remove_waiter(key, on_value)

    def wait(self, key: str, timeout: float | None) -> Result:
        """Block until ``key`` has a terminal Result or ``timeout`` seconds pass; return what is
        known then (pending or running on timeout)."""
        return self.wait_many([key], timeout)[0]

    def wait_many(self, keys: list[str], timeout: float | None) -> list[Result]:
        """`wait` for all ``keys`` at once: one sleep, woken when the last one ends."""
        jobs = self._jobs
        outstanding = [k for k in keys if k in jobs]  # pending or running
        if outstanding:
            gate = threading.Lock()
            gate.acquire()
            count_lock = threading.Lock()
            left = [len(outstanding)]

            def one_done(value: object) -> None:
                with count_lock:
                    left[0] -= 1
                    if left[0] == 0:
                        gate.release()

            registered = []
            for key in outstanding:
                found = self.cache.add_waiter(key, one_done)
                if found is MemCache.MISSING:
                    registered.append(key)
                else:
                    one_done(found)
            gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
            for key in registered:
                self.cache.remove_waiter(key, one_done)
        get = self.cache.get
        results = [get(k) for k in keys]
        return [
            r if isinstance(r, Result) else self.lookup(k)
            for k, r in zip(keys, results, strict=True)
        ]

    # -- the general cache -----------------------------------------------------------------------

    def cache_set(self, key: str, value: CacheValue, ttl_ms: int | None) -> None:
        """Store a str or bytes value.

        Raises:
            InvalidValue: value not str / bytes, or ttl_ms not a positive int within 30 days.
            KeyConflict: ``key`` names a request or its result.
        """
        if not isinstance(value, str | bytes):
            raise InvalidValue(f"cache values must be str or bytes, not {type(value).__name__}")
        if ttl_ms is not None and (type(ttl_ms) is not int or not 1 <= ttl_ms <= self._max_ttl_ms):
            raise InvalidValue(
                f"ttl_ms must be an int between 1 and {self._max_ttl_ms}, got {ttl_ms!r}"
            )
        with self._lock:
            if key in self._jobs or isinstance(self.cache.get(key), Result):
                raise KeyConflict(f"key {key!r} names a request; cache_set cannot overwrite it")
            self.cache.set(key, value, ttl_ms)

    def cache_get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` (a Result for request keys), or ``default``."""
        return self.cache.get(key, default)
