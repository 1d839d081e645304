"""Process life for every engine in this process: interpreter exit and fork().

Engines are held here strongly until their thread ends, so a client nobody kept a reference to
still sends what it accepted. At exit all of them get their ``exit_grace_ms`` at once, before
Python waits for non-daemon threads (which may be blocked closing a client). In a forked child
the parent's engines are left untouched for good: their threads did not survive the fork, and
closing their sockets could send a TLS close_notify on a connection the parent still uses.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger(__name__)

_CALLBACK_EXTRA_S = 0.25  # at exit, callbacks may run this long past the engines' grace


class _Finisher(Protocol):
    def finish(self, timeout: float) -> None: ...


class _Releasable(Protocol):
    def release_waiters(self) -> None: ...

    def flush(self, timeout: float) -> bool: ...


_lock = threading.Lock()
_engines: dict[Engine, None] = {}
_runners: dict[_Finisher, None] = {}
# Objects inherited from the parent across fork(): referenced for good, never finalised here.
_inherited: list[object] = []
# Caches whose waiters are released at exit (a wait for a value nobody will set must not hold it).
# Held until their client goes (untrack_cache), not by weak reference: a store compiled by mypyc
# cannot be weakly referenced.
_caches: dict[_Releasable, None] = {}

#: Incremented in a child process after fork(); clients compare it to rebuild themselves.
generation = 0
#: When interpreter exit began (monotonic deadline of the grace given then), else None. Waits
#: that postkey makes on behalf of other threads are cut to it.
exit_deadline: float | None = None


def exiting() -> bool:
    """True once interpreter exit has begun."""
    return exit_deadline is not None


def time_left_at_exit(wanted: float) -> float:
    """``wanted`` seconds, or less if interpreter exit has begun and its deadline comes first."""
    if exit_deadline is None:
        return wanted
    return max(min(wanted, exit_deadline + _CALLBACK_EXTRA_S - time.monotonic()), 0.0)


def track(engine: Engine) -> None:
    """Hold ``engine`` until `untrack` (called when its thread ends)."""
    with _lock:
        _engines[engine] = None
        run_exit_hook_first()


def untrack(engine: Engine) -> None:
    """Forget an engine whose thread has ended."""
    with _lock:
        _engines.pop(engine, None)


def track_cache(cache: _Releasable) -> None:
    """Release ``cache``'s waiters at interpreter exit (until `untrack_cache`)."""
    with _lock:
        _caches[cache] = None


def untrack_cache(cache: _Releasable) -> None:
    """Forget a cache whose client is gone.

    Without the lock (one dict operation, atomic under the GIL): it runs from a finalizer, which
    the garbage collector may call on a thread inside `_at_exit` while that holds the lock.
    """
    _caches.pop(cache, None)


def track_runner(runner: _Finisher) -> None:
    """Give ``runner`` (a callback thread) its share of the exit grace."""
    with _lock:
        _runners[runner] = None


def untrack_runner(runner: _Finisher) -> None:
    """Forget a callback runner that has stopped."""
    with _lock:
        _runners.pop(runner, None)


def _at_exit() -> None:
    global exit_deadline
    with _lock:
        engines = list(_engines)
    now = time.monotonic()
    deadline = now + max((e.exit_grace_ms for e in engines), default=0) / 1000.0
    if exit_deadline is None:
        exit_deadline = deadline
    for engine in engines:
        grace_ms = engine.exit_grace_ms
        engine.close(
            grace_ms, wait=False, reason=f"interpreter exit (exit_grace_ms={grace_ms} passed)"
        )
    for engine in engines:
        # The engine cancels what is left at its deadline; the small extra covers that work.
        engine.join(max(deadline - time.monotonic(), 0.0) + 0.5)
    # Only now: a request that ends during the grace starts its client's callback thread
    # then, and a list taken before the engines ended would miss it (the callback cut short).
    with _lock:
        runners = list(_runners)
    for runner in runners:
        runner.finish(max(deadline - time.monotonic(), 0.0) + _CALLBACK_EXTRA_S)
    with _lock:
        caches = list(_caches)
    for cache in caches:
        # Results a store writes in the background land before the process ends.
        cache.flush(max(deadline - time.monotonic(), 0.0) + 0.5)
        cache.release_waiters()


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, generation
    _lock = threading.Lock()
    generation += 1
    # The parent's stores are the parent's: their locks may be held for good here, so exit must
    # not touch them (the child's clients make and track stores of their own).
    _caches.clear()
    if not _engines and not _runners:
        return
    for engine in _engines:
        engine.orphan()
        # An extra reference that is never dropped: the engine (its multi handle, connections
        # and TLS sessions) is never deallocated in this process, not even at exit.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))
        _inherited.append(engine)
    _engines.clear()
    _runners.clear()


# threading's exit hooks run before Python joins non-daemon threads; atexit runs after, which
# would let a thread blocked in close() hold exit for its whole drain. They run last-registered
# first, and concurrent.futures registers one (joining its workers, which may be blocked in a
# postkey wait) on its first use, after ours: so ours is moved to the end again whenever an
# engine starts. Private API, present since Python 3.9; atexit is the fallback.
_hooks: list[object] | None = getattr(threading, "_threading_atexits", None)


def run_exit_hook_first() -> None:
    """Make postkey's exit hook the next to run (call before blocking on behalf of a thread that
    concurrent.futures may join at exit)."""
    if _hooks is not None and (not _hooks or _hooks[-1] is not _at_exit):
        while _at_exit in _hooks:
            _hooks.remove(_at_exit)
        _hooks.append(_at_exit)


if _hooks is None:  # pragma: no cover - every supported Python has it
    import atexit

    atexit.register(_at_exit)
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
