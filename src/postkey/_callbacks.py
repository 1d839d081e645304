"""Runs ``on_done`` callbacks on their own thread, so user code never stalls the transport."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ._result import Result

log = logging.getLogger(__name__)
_STOP: Any = object()


class CallbackRunner:
    """A single daemon thread that calls ``callback(result)`` in submission order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Result], Any], Result]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, callback: Callable[[Result], Any], result: Result) -> None:
        """Schedule ``callback(result)``; exceptions it raises are logged, not propagated."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="postkey-callbacks", daemon=True
                    )
                    self._thread.start()
        self._queue.put((callback, result))

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the thread (waits up to ``timeout`` seconds)."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self._queue.put((_STOP, _STOP))
        if thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            callback, result = self._queue.get()
            if callback is _STOP:
                return
            try:
                callback(result)
            except Exception:
                log.exception("on_done callback for %s raised", result.key)
