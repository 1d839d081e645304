"""`Store`: what a client and its engine ask of the place where keys live.

Every store (the in-process memory store today; Redis for many processes next) implements this
protocol and passes the same contract tests (tests/test_store_contract.py). Clients call only
these methods; nothing reaches into a store's insides.

The guarantees each implementation keeps:

- A key is in exactly one of: pending (registered, not finished), terminal (a Result whose TTL
  has not passed), expired (a tombstone), unknown. `lookup` never says pending for a key that
  ended, and never unknown for a key between `register` and `finish`.
- `finish` is called once per registered job and the first terminal result wins; it wakes every
  waiter of the key, and a waiter that raises cannot stop the others or the store.
- However a wait ends (woken, timed out, interrupted), it leaves nothing registered.
- A caller's key (``key=``) is idempotent: the same request under it is not registered twice,
  a different one raises `KeyConflict`, for as long as the store remembers the key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

from .._job import Job
from .._result import ErrorKind, Result

CacheValue = str | bytes


class _Missing:
    """The one marker for "no value" in cache reads and waits (None is a valid default)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class _StoreDown:
    """What a shared store wakes its waiters with when it stopped answering (a wait then raises
    StoreUnavailable rather than sleep on, or reconnect, for ever)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STORE_DOWN"


STORE_DOWN: Final = _StoreDown()


def outlives_outages(wake: object) -> bool:
    """True for a watch that is not a wait (an ``on_done`` waiting for its key): an outage does
    not release it; it hears its key once the store answers again."""
    return getattr(wake, "outlives_outages", False) is True


class Store(Protocol):
    """Where keys, results and cache values live. Thread-safe."""

    #: True if calls may wait on a server (AsyncClient then makes them off the event loop).
    remote: bool

    @property
    def closing(self) -> bool:
        """True once close() began: nothing will wake a wait any more (a store whose results
        come from elsewhere), so a wait begun from then on returns what is known at once."""

    @property
    def max_ttl_ms(self) -> int:
        """The longest TTL a result or cache value may be given, in ms."""

    # -- requests ----------------------------------------------------------------------------

    def register(self, job: Job, caller_key: bool) -> bool:
        """Make ``job``'s key visible as pending; False if ``caller_key`` and the key already
        names the same request (nothing must be sent).

        Raises:
            KeyConflict: the key names a different request or holds a cache value.
            IdempotencyKeysFull: the store remembers as many caller keys as it may.
        """

    def job(self, key: str) -> Job | None:
        """The pending job under ``key`` that this process's engine runs, if any."""

    def finish(self, job: Job, result: Result) -> None:
        """Store ``job``'s terminal result and wake the key's waiters (once per job)."""

    def lookup(self, key: str) -> Result:
        """What is known of ``key`` now (a Result whose state says where it is)."""

    # -- waiting -----------------------------------------------------------------------------

    def watch(
        self, key: str, wake: Callable[[Result], None]
    ) -> tuple[Result, None] | tuple[None, Callable[[], None]]:
        """``(result, None)`` if ``key`` will not change (terminal, unknown, expired); else
        register ``wake(result)`` for its terminal Result (called on the storing thread) and
        return ``(None, unwatch)``."""

    def wait(self, key: str, timeout: float | None) -> Result:
        """Block until ``key`` ends or ``timeout`` seconds pass; what is known then.

        Raises:
            InvalidValue: a bad ``timeout``.
        """

    def wait_many(self, keys: list[str], timeout: float | None) -> list[Result]:
        """`wait` for every key under one ``timeout``; Results in the keys' order.

        Raises:
            InvalidValue: a bad ``timeout``, before anything is registered.
        """

    # -- the general cache -------------------------------------------------------------------

    def cache_set(self, key: str, value: CacheValue, ttl_ms: int | None) -> None:
        """Store a str or bytes value (``ttl_ms`` None: the default result TTL).

        Raises:
            InvalidValue: not str / bytes, or a bad TTL.
            KeyConflict: ``key`` names a request, its result or a remembered caller key.
        """

    def cache_get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` (a Result for request keys), or ``default``."""

    def cache_exists(self, key: str) -> bool:
        """True if ``key`` holds a live value or result."""

    def cache_delete(self, key: str) -> bool:
        """Remove ``key``'s value or result; True if there was one."""

    def cache_count(self) -> int:
        """Live entries (values and results)."""

    def cache_clear(self) -> None:
        """Remove every value and result (pending requests are not affected)."""

    def cache_watch(self, key: str, wake: Callable[[object], None]) -> Any:
        """The value under ``key`` if there is one (``wake`` not registered); else `MISSING`
        after registering ``wake(value)``, called when a value is stored (or with `MISSING`
        when waiters are released at exit). Undo with `cache_unwatch`."""

    def cache_unwatch(self, key: str, wake: Callable[[object], None]) -> None:
        """Forget a ``wake`` registered by `cache_watch` (no error if it already ran)."""

    def cache_wait(self, key: str, timeout: float | None, default: Any = None) -> Any:
        """Block until ``key`` holds a value or ``timeout`` seconds pass.

        Raises:
            InvalidValue: a bad ``timeout``.
        """

    # -- upkeep ------------------------------------------------------------------------------

    def tick(self) -> int:
        """Housekeeping the engine runs about once a second; returns entries reclaimed."""

    def release_waiters(self) -> None:
        """Wake every cache waiter with its default (interpreter exit)."""

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for writes the store makes in the background (new
        keys, results); True if nothing is left to write."""

    def close(self) -> None:
        """Let go of what the store holds (connections, threads); after the engine closed."""


@runtime_checkable
class QueueingStore(Store, Protocol):
    """A shared store that also holds the request queue workers read (Redis)."""

    #: Called with each job of this process whose key another process ended (cancelled).
    on_ended_elsewhere: Callable[[Job], None] | None

    def enqueue(self, job: Job, caller_key: bool, delivery: str) -> bool:
        """Queue ``job`` for the workers and make its key visible as pending, in one step;
        False if ``caller_key`` and the key already names the same request.

        Raises:
            KeyConflict: the key names a different request or holds a cache value.
            StoreUnavailable: the store did not answer.
        """

    def end_pending(self, key: str, kind: ErrorKind, message: str, owner: str = "*") -> bool:
        """End a pending key as failed / ``kind`` whoever sends it; True if this call did."""
