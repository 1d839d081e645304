"""Runs ``on_done`` callbacks on their own thread, so user code never stalls the transport.

The backlog is bounded: while ``max_callback_backlog`` results wait for a slow callback, submits
that ask for a callback are refused (`check_room`), so results cannot pile up without end.
"""

from __future__ import annotations

import _thread
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from . import _lifecycle
from ._errors import InvalidRequest, QueueFull
from ._result import Result

log = logging.getLogger(__name__)


def check_on_done(on_done: object) -> None:
    """Refuse what cannot be an ``on_done``: it runs on the callback thread, where an ``async
    def`` function would only make a coroutine that nothing ever runs.

    Raises:
        InvalidRequest: not callable, or a coroutine function (or an object whose ``__call__``
            is one).
    """
    if not callable(on_done):
        raise InvalidRequest(f"on_done must be callable, not {type(on_done).__name__}")
    if inspect.iscoroutinefunction(on_done) or inspect.iscoroutinefunction(
        getattr(on_done, "__call__", None)  # noqa: B004 (an instance's async __call__)
    ):
        raise InvalidRequest(
            "on_done is a coroutine function (async def): it would run on postkey's callback"
            " thread, where nothing awaits it. Give a plain function, or await"
            " client.wait(key) in your event loop instead"
        )


class Inline:
    """A callback of postkey's own that is cheap and never blocks (the gateway's counters): it
    runs where the result lands, on the engine's thread, without the hand-over to the callback
    thread (a lock, a queue and a thread switch: about as much as the counting itself)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[Result], Any]) -> None:
        self._fn = fn

    def __call__(self, result: Result) -> None:
        self._fn(result)


class CallbackRunner:
    """A single daemon thread that calls ``callback(result)`` in completion order."""

    def __init__(self, max_backlog: int, grace_ms: int) -> None:
        self._max_backlog = max_backlog
        self._grace_s = grace_ms / 1000.0
        self._todo: deque[tuple[Callable[[Result], Any], Result]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._skipping = False

    def check_room(self) -> None:
        """Refuse a new callback while ``max_callback_backlog`` results wait for theirs.

        Requests already accepted still get their callbacks, so at most ``max_callback_backlog``
        plus the requests queued and in flight (``max_queue + max_in_flight``) ever wait.

        Raises:
            QueueFull: the backlog is at its bound.
        """
        if len(self._todo) >= self._max_backlog:
            raise QueueFull(
                f"{len(self._todo)} results are waiting for their on_done callback"
                f" (max_callback_backlog={self._max_backlog}); nothing was submitted."
                " A callback is slow or stuck."
            )

    def call(self, callback: Callable[[Result], Any], result: Result) -> None:
        """Schedule ``callback(result)`` (an `Inline` one runs now); what it raises is logged,
        never propagated."""
        if type(callback) is Inline:
            try:
                callback(result)
            except Exception:
                log.exception("postkey's own callback for %s raised", result.key)
            return
        with self._ready:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="postkey-callbacks", daemon=True
                )
                self._thread.start()
                _lifecycle.track_runner(self)
            self._todo.append((callback, result))
            self._ready.notify()

    def close(self) -> None:
        """Run what is queued, waiting up to ``callback_grace_ms`` (less if the interpreter is
        exiting); skip the rest (logged)."""
        self.finish(_lifecycle.time_left_at_exit(self._grace_s))

    def finish(self, timeout: float) -> None:
        """Run what is queued for up to ``timeout`` seconds, then skip the rest (logged)."""
        with self._ready:
            thread = self._thread
            self._stopping = True
            self._ready.notify()
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            with self._ready:
                self._skipping = True
                skipped = len(self._todo)
            log.warning(
                "postkey: an on_done callback is still running after %.1f s; %d queued callbacks"
                " will not run",
                timeout,
                skipped,
            )
        _lifecycle.untrack_runner(self)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._todo and not self._stopping:
                    self._ready.wait()
                if not self._todo or self._skipping:
                    self._todo.clear()
                    return
                callback, result = self._todo.popleft()
            try:
                callback(result)
            except KeyboardInterrupt:
                # Only the main thread can act on it: pass it on, and keep serving callbacks.
                log.exception("on_done callback for %s raised KeyboardInterrupt", result.key)
                _thread.interrupt_main()
            except BaseException:  # SystemExit and the like must not end the callback thread
                log.exception("on_done callback for %s raised", result.key)
