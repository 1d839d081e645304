"""The engine: one thread driving libcurl's multi interface (perform, then select()).

Submissions go into a bounded queue; the engine admits them under the in-flight cap, runs them,
and hands every job exactly one terminal Result through ``on_result``. Cancellations and close
are carried out on the engine thread too, so a job's result has a single writer.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

import pycurl

from ._errors import ClientClosed, QueueFull
from ._job import Job
from ._resolutions import Resolutions
from ._result import ErrorKind, Result, State
from ._settings import Settings
from ._transport import FD_SETSIZE, Transport, needs_lookup

log = logging.getLogger(__name__)

_HIGH_FD_TICK = 0.002  # seconds between looks when libcurl has sockets select() cannot watch


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
        self._check_names = settings.policy.has_name_rules
        self._queue: deque[Job] = deque()
        self._cancels: deque[Job] = deque()
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        self._running: set[pycurl.Curl] = set()
        # With an injected resolver, jobs first wait for their host's addresses (on a pool, so
        # a slow answer stalls nothing else); they count against the in-flight cap meanwhile.
        self._resolutions = (
            Resolutions(settings.resolver, self._wake) if settings.resolver is not None else None
        )
        self._resolving: dict[Job, None] = (
            self._resolutions.pending if self._resolutions is not None else {}
        )
        self._free: list[pycurl.Curl] = []
        self._asleep = False
        self._accepting = True
        self._finished = False
        self._final_lock = threading.Lock()
        self._drain_until: float | None = None
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, settings.max_per_host)
        self._multi.setopt(pycurl.M_MAXCONNECTS, settings.max_in_flight)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Guards the pipe's closing: a wake-up written after close would land in whatever
        # socket reused the descriptor number (seen: a stray NUL byte in another connection).
        self._wake_lock = threading.Lock()
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
        # The lock makes "still running? then queue it" atomic against the engine's last sweep
        # of the queue: without it, a submit racing close() could queue a job nobody ends.
        with self._final_lock:
            if self._finished:
                raise ClientClosed("the client is closed")
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
        with self._wake_lock:
            if self._wake_w < 0:
                return  # the engine has stopped and closed its pipe
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

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

    # -- the loop (engine thread) ----------------------------------------------------------------
    #
    # Shape: admit -> perform -> reap -> sleep in select() on libcurl's sockets plus a wake-up
    # pipe. perform() runs every ready transfer in one C call; the socket_action / epoll shape
    # was measured too and cost ~1.5x more CPU per request (two socket and two timer callbacks
    # into Python per request, and one socket_action call per ready socket).

    def _run(self) -> None:
        try:
            while True:
                if self._cancels:
                    self._apply_cancels()
                if self._resolutions is not None:
                    self._settle_resolutions()
                self._admit()
                self._perform()
                self._reap()
                if self._queue and self._busy() < self._max_in_flight:
                    continue  # reaping made room: start more before sleeping
                if self._drain_until is not None and self._drained_or_due():
                    break
                self._sleep()
        except Exception:  # pragma: no cover - a bug; results must still be written
            log.exception("postkey engine loop failed; cancelling outstanding requests")
        finally:
            self._accepting = False
            with self._final_lock:
                self._finished = True
            self._cancel_everything("the client was closed before the request finished")
            self._multi.close()
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1

    def _perform(self) -> None:
        perform = self._multi.perform
        while perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def _sleep(self) -> None:
        readers, writers, errors = self._multi.fdset()
        curl_ms = self._multi.timeout()
        if curl_ms == 0:
            return
        timeout = None if curl_ms < 0 else curl_ms / 1000.0
        if curl_ms < 0 and self._running:
            timeout = 1.0  # libcurl has no timer yet; look again soon
        if self._running and self._transport.high_descriptors:
            # libcurl's fdset leaves out sockets numbered >= FD_SETSIZE, so they cannot be
            # watched here: look at the transfers every few ms instead (degraded, still correct).
            timeout = _HIGH_FD_TICK if timeout is None else min(timeout, _HIGH_FD_TICK)
        if self._drain_until is not None:
            left = max(self._drain_until - time.monotonic(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        soonest = self._resolutions.soonest_deadline() if self._resolutions else None
        if soonest is not None:
            left = max(soonest - time.monotonic(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        answers = self._resolutions is not None and self._resolutions.has_answers
        if self._busy() < self._max_in_flight:
            self._asleep = True
            if self._queue or self._cancels or answers:  # arrived after _admit looked
                self._asleep = False
                return
        elif self._cancels or answers:
            return
        readers.append(self._wake_r)
        if max(readers + writers + errors) < FD_SETSIZE:
            ready = select.select(readers, writers, errors, timeout)[0]
            woken = self._wake_r in ready
        else:
            woken = self._poll(readers, writers, timeout)
        self._asleep = False
        if woken:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _poll(self, readers: list[int], writers: list[int], timeout: float | None) -> bool:
        """select() cannot take descriptors >= FD_SETSIZE; poll() can (slower to set up)."""
        poller = select.poll()
        events: dict[int, int] = {}
        for fd in readers:
            events[fd] = select.POLLIN
        for fd in writers:
            events[fd] = events.get(fd, 0) | select.POLLOUT
        for fd, mask in events.items():
            poller.register(fd, mask)
        ready = poller.poll(None if timeout is None else timeout * 1000.0)
        return any(fd == self._wake_r for fd, _ in ready)

    def _admit(self) -> None:
        queue = self._queue
        running = self._running
        resolving = self._resolving
        cap = self._max_in_flight
        if not queue or len(running) + len(resolving) >= cap:
            return
        now = time.monotonic()
        prepare = self._transport.prepare
        add = self._multi.add_handle
        free = self._free
        check_names = self._check_names
        while queue and len(running) + len(resolving) < cap:
            job = queue.popleft()
            if job.done:
                continue  # cancelled while queued
            left_ms = int((job.deadline - now) * 1000.0) + 1
            if check_names:
                refusal = self._transport.refusal(job)
                if refusal is not None:
                    self._fail(job, ErrorKind.BLOCKED, refusal)
                    continue
            if left_ms <= 0:
                self._fail(job, ErrorKind.TIMEOUT, "deadline passed while queued; nothing was sent")
                continue
            resolutions = self._resolutions
            if resolutions is not None and job.addresses is None and needs_lookup(job.request.url):
                resolutions.start(job)
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

    def _busy(self) -> int:
        return len(self._running) + len(self._resolving)

    def _settle_resolutions(self) -> None:
        assert self._resolutions is not None
        ready, failed = self._resolutions.settle(time.monotonic())
        self._queue.extendleft(ready)
        for job, kind, message in failed:
            self._fail(job, kind, message)

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
            self._resolving.pop(job, None)
            if job.curl is not None:
                self._multi.remove_handle(job.curl)
                self._running.discard(job.curl)
                job.curl.job = None
                self._free.append(job.curl)
                job.curl = None
            self._fail(job, ErrorKind.CANCELLED, "cancelled by the caller")

    def _drained_or_due(self) -> bool:
        assert self._drain_until is not None
        idle = not self._queue and not self._running and not self._resolving
        return idle or time.monotonic() >= self._drain_until

    def _cancel_everything(self, message: str) -> None:
        if self._resolutions is not None:
            for job in self._resolutions.close():
                self._fail(job, ErrorKind.CANCELLED, message)
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
