"""The engine: one thread driving libcurl's multi interface (socket_action on epoll).

Submissions go into a bounded queue; the engine admits them under the in-flight cap, runs them,
and hands every job exactly one terminal Result through ``on_result``. Cancellations and close
are carried out on the engine thread too, so a job's result has a single writer.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

import pycurl

from ._errors import ClientClosed, QueueFull
from ._job import Job
from ._result import ErrorKind, Result, State
from ._settings import Settings
from ._transport import Transport

log = logging.getLogger(__name__)

_EPOLL_MASKS = {
    pycurl.POLL_IN: select.EPOLLIN,
    pycurl.POLL_OUT: select.EPOLLOUT,
    pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT,
}
_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLRDHUP


class Engine:
    """Runs jobs on libcurl and reports each one's Result to ``on_result`` (on the engine thread).

    Raises (from `submit`):
        QueueFull: the queue is at ``settings.max_queue`` for longer than ``queue_wait_ms``.
        ClientClosed: `close` was called.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        on_result: Callable[[Job, Result], None],
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._on_result = on_result
        self._max_in_flight = settings.max_in_flight
        self._queue: deque[Job] = deque()
        self._cancels: deque[Job] = deque()
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        self._running: set[pycurl.Curl] = set()
        self._free: list[pycurl.Curl] = []
        self._fds: dict[int, int] = {}
        self._timer_at: float | None = None
        self._asleep = False
        self._accepting = True
        self._drain_until: float | None = None
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, settings.max_per_host)
        self._multi.setopt(pycurl.M_MAXCONNECTS, settings.max_in_flight)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="postkey-engine", daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting for a transfer slot."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Transfers handed to libcurl and not finished."""
        return len(self._running)

    def submit(self, job: Job) -> None:
        """Queue ``job``; never blocks on the network (see the class docstring for what raises)."""
        if not self._accepting:
            raise ClientClosed("the client is closed")
        if len(self._queue) >= self._settings.max_queue and not self._wait_for_room():
            raise QueueFull(
                f"the queue holds {len(self._queue)} requests (max_queue="
                f"{self._settings.max_queue}); nothing was submitted"
            )
        self._queue.append(job)
        # The engine raises _asleep only when it could admit more work; checking it here saves a
        # system call per submit while the engine is busy anyway.
        if self._asleep:
            self._asleep = False
            self._wake()

    def cancel(self, job: Job) -> None:
        """Ask the engine to end ``job`` as failed / cancelled (if it has not ended yet)."""
        self._cancels.append(job)
        self._wake()

    def close(self, drain_ms: int, wait: bool = True) -> None:
        """Stop accepting; let work finish for up to ``drain_ms``, then cancel what is left.

        With ``wait`` the call returns when the engine thread has ended.
        """
        self._accepting = False
        if self._drain_until is None:
            self._drain_until = time.monotonic() + drain_ms / 1000.0
        with self._room:
            self._room.notify_all()
        self._wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def closed(self) -> bool:
        """True once the engine thread has ended."""
        return not self._thread.is_alive()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already
        except OSError:
            pass  # closed: the engine has stopped

    def _wait_for_room(self) -> bool:
        wait_s = self._settings.queue_wait_ms / 1000.0
        if wait_s <= 0:
            return False
        deadline = time.monotonic() + wait_s
        with self._room:
            self._room_waiters += 1
            try:
                while len(self._queue) >= self._settings.max_queue and self._accepting:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._room.wait(left):
                        break
            finally:
                self._room_waiters -= 1
        if not self._accepting:
            raise ClientClosed("the client is closed")
        return len(self._queue) < self._settings.max_queue

    # -- libcurl callbacks (engine thread) -------------------------------------------------------

    def _on_socket(self, what: int, fd: int, multi: object, data: object) -> None:
        if what == pycurl.POLL_REMOVE:
            if self._fds.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # already closed, which removes it from epoll
            return
        mask = _EPOLL_MASKS[what]
        old = self._fds.get(fd)
        if old == mask:
            return
        if old is None:
            self._epoll.register(fd, mask)
        else:
            self._epoll.modify(fd, mask)
        self._fds[fd] = mask

    def _on_timer(self, timeout_ms: int) -> None:
        self._timer_at = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0

    # -- the loop (engine thread) ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                if self._cancels:
                    self._apply_cancels()
                self._admit()
                if self._drain_until is not None and self._drained_or_due():
                    break
                events = self._epoll.poll(self._poll_timeout())
                self._asleep = False
                self._dispatch(events)
                self._reap()
        except Exception:  # pragma: no cover - a bug; results must still be written
            log.exception("postkey engine loop failed; cancelling outstanding requests")
        finally:
            self._accepting = False
            self._cancel_everything("the client was closed before the request finished")
            self._multi.close()
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        timeout = -1.0 if self._timer_at is None else max(self._timer_at - now, 0.0)
        if self._drain_until is not None:
            left = max(self._drain_until - now, 0.0)
            timeout = left if timeout < 0 else min(timeout, left)
        if len(self._running) < self._max_in_flight:
            self._asleep = True
            if self._queue or self._cancels:  # arrived after _admit looked
                self._asleep = False
                return 0.0
        elif self._cancels:
            return 0.0
        return timeout

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        socket_action = self._multi.socket_action
        wake_r = self._wake_r
        for fd, ev in events:
            if fd == wake_r:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            flags = 0
            if ev & _IN:
                flags |= pycurl.CSELECT_IN
            if ev & select.EPOLLOUT:
                flags |= pycurl.CSELECT_OUT
            if ev & select.EPOLLERR:
                flags |= pycurl.CSELECT_ERR
            socket_action(fd, flags)
        if self._timer_at is not None and self._timer_at <= time.monotonic():
            self._timer_at = None
            socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _admit(self) -> None:
        queue = self._queue
        running = self._running
        cap = self._max_in_flight
        if not queue or len(running) >= cap:
            return
        now = time.monotonic()
        prepare = self._transport.prepare
        add = self._multi.add_handle
        free = self._free
        while queue and len(running) < cap:
            job = queue.popleft()
            if job.done:
                continue  # cancelled while queued
            left_ms = math.ceil((job.deadline - now) * 1000.0)
            if left_ms <= 0:
                self._fail(job, ErrorKind.TIMEOUT, "deadline passed while queued; nothing was sent")
                continue
            curl = free.pop() if free else self._transport.new_handle()
            try:
                prepare(curl, job, left_ms)
                curl.job = job
                job.curl = curl
                job.state = State.RUNNING
                add(curl)
                running.add(curl)
            except Exception as exc:
                log.exception("could not start request %s", job.key)
                job.curl = None
                curl.close()
                self._fail(job, ErrorKind.INTERNAL, f"could not start the transfer: {exc}")
                continue
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def _reap(self) -> None:
        info_read = self._multi.info_read
        while True:
            remaining, ok, failed = info_read()
            for curl in ok:
                self._finish(curl, 0, "")
            for curl, errno, message in failed:
                self._finish(curl, errno, message)
            if not remaining:
                return

    def _finish(self, curl: pycurl.Curl, errno: int, message: str) -> None:
        self._multi.remove_handle(curl)
        self._running.discard(curl)
        job: Job = curl.job
        curl.job = None
        job.curl = None
        try:
            result = self._transport.result(curl, job, errno, message)
        except Exception as exc:  # pragma: no cover - a bug in result building
            log.exception("could not read the result of %s", job.key)
            result = _failure(job, ErrorKind.INTERNAL, f"could not read the result: {exc}")
        if len(self._free) < self._max_in_flight:
            self._free.append(curl)
        else:
            curl.close()
        self._deliver(job, result)

    def _deliver(self, job: Job, result: Result) -> None:
        if job.done:
            return
        job.done = True
        try:
            self._on_result(job, result)
        except Exception:
            log.exception("storing the result of %s failed", job.key)

    def _fail(self, job: Job, kind: ErrorKind, message: str) -> None:
        self._deliver(job, _failure(job, kind, message))

    def _apply_cancels(self) -> None:
        while self._cancels:
            job = self._cancels.popleft()
            if job.done:
                continue
            if job.curl is not None:
                self._multi.remove_handle(job.curl)
                self._running.discard(job.curl)
                job.curl.job = None
                self._free.append(job.curl)
                job.curl = None
            self._fail(job, ErrorKind.CANCELLED, "cancelled by the caller")

    def _drained_or_due(self) -> bool:
        assert self._drain_until is not None
        idle = not self._queue and not self._running
        return idle or time.monotonic() >= self._drain_until

    def _cancel_everything(self, message: str) -> None:
        while self._queue:
            job = self._queue.popleft()
            if not job.done:
                self._fail(job, ErrorKind.CANCELLED, message)
        for curl in list(self._free):
            curl.close()
        self._free.clear()
        self._apply_cancels()
        for curl in list(self._running):
            job = curl.job
            try:
                self._multi.remove_handle(curl)
            except pycurl.error:
                pass
            curl.close()
            if job is not None:
                self._fail(job, ErrorKind.CANCELLED, message)
        self._running.clear()


def _failure(job: Job, kind: ErrorKind, message: str) -> Result:
    return Result(
        job.key,
        State.FAILED,
        error_kind=kind,
        error=message,
        submitted_at=job.submitted_at,
        finished_at=time.time(),
        attempts=0 if kind is not ErrorKind.INTERNAL else 1,
    )
