"""The engine: one thread driving libcurl's multi interface (perform, then select()).

Submissions go into a bounded queue; the engine takes them in, resolves names (with an injected
resolver), lets the scheduler pick what starts under the in-flight and per-host caps, runs the
transfers, and hands every job exactly one terminal Result through ``on_result``. Cancellations,
deadlines and close are carried out on the engine thread too, so a job's result has one writer.
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

from . import _lifecycle
from ._errors import ClientClosed, QueueFull
from ._job import Job
from ._redirects import REDIRECT_STATUSES, RedirectRefusal, next_hop
from ._resolutions import Resolutions
from ._result import ErrorKind, Result, State
from ._scheduler import Scheduler
from ._settings import Settings
from ._transport import FD_SETSIZE, Transport
from ._urls import needs_lookup, origin_of

log = logging.getLogger(__name__)

_HIGH_FD_TICK = 0.002  # seconds between looks when libcurl has sockets select() cannot watch
_HOUSEKEEPING_S = 1.0  # how often the store gets to reclaim expired entries while idle
_MAX_LOOP_FAILURES = 3
_NEVER = float("inf")
_AT_EXIT = "interpreter exit"  # consecutive unexpected errors after which the loop gives up


class Engine:
    """Runs jobs on libcurl and reports each one's Result to ``on_result`` (on the engine thread).

    Raises (from `submit`):
        QueueFull: the queue is at ``settings.max_queue`` for longer than ``queue_wait_ms``.
        ClientClosed: `close` was called, or the engine stopped after an internal error.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        on_result: Callable[[Job, Result], None],
        housekeeping: Callable[[], object] | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._on_result = on_result
        self._housekeeping = housekeeping
        self._check_names = settings.policy.has_name_rules
        self._max_in_flight = settings.max_in_flight
        self._queue: deque[Job] = deque()
        self._cancels: deque[Job] = deque()
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        self._running: set[pycurl.Curl] = set()
        self._scheduler = Scheduler(settings.max_in_flight, settings.max_per_host)
        self._resolutions = (
            Resolutions(settings.resolver, self._wake) if settings.resolver is not None else None
        )
        self._free: list[pycurl.Curl] = []
        self._asleep = False
        self._sleep_until = 0.0  # when the engine wakes by itself at the latest (monotonic)
        self._could_start = True  # False while asleep with every slot busy
        # The earliest deadline among jobs in _queue (kept by submitters under _final_lock):
        # jobs wait there while every slot is busy, and the engine wakes for their deadlines.
        self._queue_soonest = _NEVER
        self._queue_dead = 0  # jobs cancelled while still in _queue
        # With a resolver or name rules, every new job has work for the engine at once.
        self._eager = settings.resolver is not None or self._check_names
        self._accepting = True
        self._finished = False
        self._orphaned = False
        #: Why the loop stopped on its own (an internal error), or None.
        self.failure: str | None = None
        self._final_lock = threading.Lock()
        self._drain_until: float | None = None
        self._closing_reason = "the client was closed before the request finished"
        self._next_housekeeping = time.monotonic() + _HOUSEKEEPING_S
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, settings.max_per_host)
        self._multi.setopt(pycurl.M_MAXCONNECTS, settings.max_in_flight)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Guards the pipe's closing: a wake-up written after close would land in whatever
        # socket reused the descriptor number (seen: a stray NUL byte in another connection).
        self._wake_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="postkey-engine", daemon=True)
        if _lifecycle.exiting():
            # Made after interpreter exit began (say, the default client again, from a thread
            # still running): nobody would bound it, so it takes no work at all.
            self._accepting = False
            self._closing_reason = _AT_EXIT
            self._drain_until = time.monotonic()
        _lifecycle.track(self)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs accepted and not yet on the wire (queued, resolving or waiting for their host)."""
        resolving = self._resolutions.pending if self._resolutions is not None else 0
        return len(self._queue) - self._queue_dead + self._scheduler.waiting + resolving

    @property
    def in_flight(self) -> int:
        """Transfers handed to libcurl and not finished."""
        return len(self._running)

    def submit(self, job: Job) -> None:
        """`check_room`, then `enqueue`."""
        self.check_room()
        self.enqueue(job)

    def check_room(self) -> None:
        """Raise unless the queue has room for one more job (waiting up to ``queue_wait_ms``).

        Called before a key becomes visible, so a refused submit leaves nothing behind.

        Raises:
            QueueFull: no room within ``queue_wait_ms``.
            ClientClosed: the engine is closed or stopped.
        """
        if not self._accepting:
            raise self._closed_error()
        resolving = self._resolutions.pending if self._resolutions is not None else 0
        queued = len(self._queue) - self._queue_dead + self._scheduler.waiting + resolving
        if queued >= self._settings.max_queue and not self._wait_for_room():
            raise QueueFull(
                f"the queue holds {self.queued} requests (max_queue="
                f"{self._settings.max_queue}); nothing was submitted"
            )

    def enqueue(self, job: Job) -> None:
        """Queue ``job`` (room was checked by `check_room`); never blocks on the network.

        Raises:
            ClientClosed: the engine is closed or stopped.
        """
        # The lock makes "still running? then queue it" atomic against the engine's last sweep
        # of the queue: without it, a submit racing close() could queue a job nobody ends.
        with self._final_lock:
            if self._finished:
                raise self._closed_error()
            self._queue.append(job)
            # The engine wakes for this deadline even while busy. (An if, not min(): this is
            # every submit's path, and the call costs more than the comparison.)
            if job.deadline < self._queue_soonest:  # noqa: PLR1730
                self._queue_soonest = job.deadline
        # The engine raises _asleep just before it sleeps. Waking it costs a system call and a
        # trip through its loop, so do it only if it has something to do with this job now:
        # start it, look up its name, refuse it by name, or end it before the engine would
        # wake anyway. Otherwise the engine takes it in when it wakes for its own reasons.
        if self._asleep and (
            job.deadline < self._sleep_until
            or (self._could_start and (self._eager or self._scheduler.has_room(job.origin)))
        ):
            self._asleep = False
            self._wake()

    def cancel(self, job: Job) -> None:
        """Ask the engine to end ``job`` as failed / cancelled (if it has not ended yet)."""
        if self._orphaned:
            return
        self._cancels.append(job)
        self._wake()

    def close(self, drain_ms: int, wait: bool = True, reason: str | None = None) -> None:
        """Stop accepting; let work finish for up to ``drain_ms``, then cancel what is left.

        Several calls keep the earliest end (a later, shorter bound wins). With ``wait`` the
        call returns when the engine thread has ended; ``reason`` goes into the results of the
        requests cancelled.
        """
        if self._orphaned:
            return
        self._accepting = False
        until = time.monotonic() + drain_ms / 1000.0
        if self._drain_until is None or until < self._drain_until:
            if reason is not None:
                self._closing_reason = reason
            self._drain_until = until
        with self._room:
            self._room.notify_all()
        self._wake()
        if wait and threading.current_thread() is not self._thread:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the engine thread to end; True if it has."""
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def closed(self) -> bool:
        """True once the engine stopped taking work (closed, or stopped by an internal error)."""
        return self._finished or not self._thread.is_alive()

    @property
    def exit_grace_ms(self) -> int:
        """How long this engine's requests may go on at interpreter exit."""
        return self._settings.exit_grace_ms

    def orphan(self) -> None:
        """Make this engine inert in a forked child: its thread did not survive the fork, and
        its sockets, pipe and locks belong to the parent, so nothing here may touch them."""
        self._orphaned = True
        self._accepting = False
        self._finished = True

    def _closed_error(self) -> ClientClosed:
        if self._closing_reason.startswith(_AT_EXIT):
            return ClientClosed("the client is closed: the interpreter is exiting")
        if self.failure is not None:
            return ClientClosed(
                f"the client's engine stopped after an internal error ({self.failure});"
                " create a new client"
            )
        return ClientClosed("the client is closed")

    def _wake(self) -> None:
        if self._orphaned:
            return  # the pipe is the parent's
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
                while self.queued >= self._settings.max_queue and self._accepting:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._room.wait(left):
                        break
            finally:
                self._room_waiters -= 1
        if not self._accepting:
            raise self._closed_error()
        return self.queued < self._settings.max_queue

    # -- the loop (engine thread) ----------------------------------------------------------------
    #
    # Shape: take in -> start -> perform -> reap -> sleep in select() on libcurl's sockets plus
    # a wake-up pipe. perform() runs every ready transfer in one C call; the socket_action /
    # epoll shape was measured too and cost ~1.5x more CPU per request.

    def _run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if self._step():
                        break
                    failures = 0
                except BaseException as exc:  # survive what can be survived; see below
                    failures += 1
                    log.exception("postkey engine loop failed (%d in a row)", failures)
                    if failures >= _MAX_LOOP_FAILURES:
                        self.failure = f"{type(exc).__name__}: {exc}"
                        break
        finally:
            self._stop()

    def _step(self) -> bool:
        """One turn of the loop; True when the engine should stop."""
        # While every slot is busy, new jobs wait in the submit queue: taking them in then would
        # only compete with submitters for the GIL. _needs_turn watches their deadlines.
        if self._queue and (
            self._scheduler.running < self._max_in_flight
            or self._eager
            or self._queue_soonest <= time.monotonic()
        ):
            self._take_in()
        if self._cancels:
            self._apply_cancels()
        if self._resolutions is not None and self._resolutions.has_answers:
            self._settle_resolutions()
        now = time.monotonic()
        soonest = self._scheduler.soonest_deadline()
        if soonest is not None and soonest <= now:
            self._expire(now)
        self._start()
        self._perform()
        self._reap()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING_S
            self._keep_house()
        scheduler = self._scheduler
        if scheduler.startable or (self._queue and scheduler.running < self._max_in_flight):
            return False  # reaping made room, or new jobs may start: go again before sleeping
        if self._drain_until is not None and self._drained_or_due():
            return True
        self._sleep()
        return False

    def _stop(self) -> None:
        self._accepting = False
        with self._final_lock:
            self._finished = True
        try:
            if self.failure is not None:
                message = f"the client's engine stopped after an internal error ({self.failure})"
                ended = self._end_everything(ErrorKind.INTERNAL, message)
                log.error("postkey engine stopped: %d requests ended as internal", ended)
            else:
                ended = self._end_everything(ErrorKind.CANCELLED, self._closing_reason)
                if ended:
                    log.log(
                        logging.WARNING
                        if self._closing_reason.startswith(_AT_EXIT)
                        else logging.INFO,
                        "postkey cancelled %d unfinished requests: %s",
                        ended,
                        self._closing_reason,
                    )
        finally:
            try:
                self._multi.close()
            finally:
                with self._wake_lock:
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_w = -1
                with self._room:
                    self._room.notify_all()
                _lifecycle.untrack(self)

    def _perform(self) -> None:
        perform = self._multi.perform
        while perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def _keep_house(self) -> None:
        if self._housekeeping is not None:
            try:
                self._housekeeping()
            except Exception:
                log.exception("postkey store housekeeping failed")

    def _sleep(self) -> None:
        readers, writers, errors = self._multi.fdset()
        curl_ms = self._multi.timeout()
        if curl_ms == 0:
            return
        now = time.monotonic()
        timeout = self._next_housekeeping - now
        if curl_ms > 0:
            timeout = min(timeout, curl_ms / 1000.0)
        if self._running and self._transport.high_descriptors:
            # libcurl's fdset leaves out sockets numbered >= FD_SETSIZE, so they cannot be
            # watched here: look at the transfers every few ms instead (degraded, still correct).
            timeout = min(timeout, _HIGH_FD_TICK)
        if self._drain_until is not None:
            timeout = min(timeout, self._drain_until - now)
        soonest = self._scheduler.soonest_deadline()
        if soonest is not None:
            timeout = min(timeout, soonest - now)
        timeout = max(min(timeout, self._queue_soonest - now), 0.0)
        self._sleep_until = now + timeout
        self._could_start = self._eager or self._scheduler.running < self._max_in_flight
        self._asleep = True
        answers = self._resolutions is not None and self._resolutions.has_answers
        if (
            self._cancels
            or answers
            or (self._queue and self._could_start)
            or self._queue_soonest < self._sleep_until
        ):
            self._asleep = False  # arrived after the loop looked
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

    def _poll(self, readers: list[int], writers: list[int], timeout: float) -> bool:
        """select() cannot take descriptors >= FD_SETSIZE; poll() can (slower to set up)."""
        poller = select.poll()
        events: dict[int, int] = {}
        for fd in readers:
            events[fd] = select.POLLIN
        for fd in writers:
            events[fd] = events.get(fd, 0) | select.POLLOUT
        for fd, mask in events.items():
            poller.register(fd, mask)
        ready = poller.poll(timeout * 1000.0)
        return any(fd == self._wake_r for fd, _ in ready)

    def _take_in(self) -> None:
        """Move submitted jobs to the resolver or the scheduler (or end them at once)."""
        queue = self._queue
        if not queue:
            return
        now = time.monotonic()
        popleft = queue.popleft
        self._queue_dead = 0  # every job cancelled in the queue so far is popped below
        with self._final_lock:
            self._queue_soonest = _NEVER  # every job queued so far is popped below
        while queue:
            job = popleft()
            if not job.done:  # a job cancelled before it was taken in is skipped
                self._take(job, now)
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def _take(self, job: Job, now: float) -> None:
        """Send ``job`` (new, or its next redirect hop) to the resolver or the scheduler, or end
        it at once (refused by name, or out of time)."""
        if self._check_names:
            refusal = self._transport.refusal(job)
            if refusal is not None:
                self._fail(job, ErrorKind.BLOCKED, refusal)
                return
        if job.deadline <= now:
            self._fail(job, ErrorKind.TIMEOUT, "deadline passed while queued; nothing was sent")
            return
        resolutions = self._resolutions
        if resolutions is not None and job.addresses is None and needs_lookup(job.request.url):
            refused = resolutions.start(job)
            if refused is not None:
                self._fail(*refused)
            else:
                self._scheduler.watch(job)
            return
        job.waiting = True
        self._scheduler.push(job)

    def _redirect(self, job: Job, result: Result) -> Result | None:
        """Follow a redirect response: None when the next hop was taken in (the job goes on),
        else the Result to deliver (the response itself, or why the hop is refused)."""
        hop = next_hop(
            job.request,
            result.status or 0,
            result.header("location"),
            job.hops,
            self._settings.max_redirects,
            policy=self._settings.policy,
        )
        if hop is None:
            return result
        if isinstance(hop, RedirectRefusal):
            return _failure(job, hop.kind, hop.message)
        job.request = hop
        job.hops += 1
        job.origin = origin_of(hop.url)
        job.addresses = None  # the resolver is asked again, for this hop's own host
        job.state = State.PENDING
        self._take(job, time.monotonic())
        return None

    def _start(self) -> None:
        """Start every job the scheduler lets start now."""
        scheduler = self._scheduler
        job = scheduler.pop()
        if job is None:
            return
        now = time.monotonic()
        prepare = self._transport.prepare
        add = self._multi.add_handle
        free = self._free
        running = self._running
        while job is not None:
            job.waiting = False
            left_ms = int((job.deadline - now) * 1000.0) + 1
            if left_ms <= 0:
                scheduler.release(job.origin)
                self._fail(job, ErrorKind.TIMEOUT, "deadline passed while queued; nothing was sent")
            else:
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
                    scheduler.release(job.origin)
                    self._fail(job, ErrorKind.INTERNAL, f"could not start the transfer: {exc}")
            job = scheduler.pop()
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def _settle_resolutions(self) -> None:
        assert self._resolutions is not None
        ready, failed = self._resolutions.settle()
        for job in ready:
            job.waiting = True
            self._scheduler.push(job)
        for job, kind, message in failed:
            self._fail(job, kind, message)

    def _expire(self, now: float) -> None:
        for job in self._scheduler.expired(now):
            if job.waiting:
                job.waiting = False
                self._scheduler.discard(job)
                host = f"{job.origin[1]}:{job.origin[2]}"
                self._fail(
                    job,
                    ErrorKind.TIMEOUT,
                    f"deadline passed while queued for a connection to {host}; nothing was sent",
                )
            elif self._resolutions is not None and self._resolutions.abandon(job):
                self._fail(
                    job, ErrorKind.TIMEOUT, "name resolution did not finish within timeout_ms"
                )

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
        self._scheduler.release(job.origin)
        try:
            result = self._transport.result(curl, job, errno, message)
        except Exception as exc:  # a bug in result building: this request ends, nothing else
            log.exception("could not read the result of %s", job.key)
            self._transport.release(curl)
            result = _failure(job, ErrorKind.INTERNAL, f"could not read the result: {exc}")
        if len(self._free) < self._settings.max_in_flight:
            self._free.append(curl)
        else:
            curl.close()
        if job.request.follow_redirects and result.status in REDIRECT_STATUSES:
            try:
                followed = self._redirect(job, result)
            except Exception as exc:  # a bug in hop building: this request ends, nothing else
                log.exception("could not follow the redirect of %s", job.key)
                followed = _failure(job, ErrorKind.INTERNAL, f"could not follow a redirect: {exc}")
            if followed is None:
                return
            result = followed
        self._deliver(job, result)

    def _deliver(self, job: Job, result: Result) -> None:
        if job.done:
            return
        job.done = True
        job.request.body = b""  # the job may linger in a queue or heap; its body need not
        try:
            self._on_result(job, result)
        except BaseException:  # storing runs waiters' code: it must not stop the engine
            log.exception("storing the result of %s failed", job.key)

    def _fail(self, job: Job, kind: ErrorKind, message: str) -> None:
        self._deliver(job, _failure(job, kind, message))

    def _apply_cancels(self) -> None:
        while self._cancels:
            job = self._cancels.popleft()
            if job.done:
                continue
            if job.waiting:
                job.waiting = False
                self._scheduler.discard(job)
            elif job.curl is not None:
                self._abort(job.curl)
            elif self._resolutions is None or not self._resolutions.abandon(job):
                self._queue_dead += 1  # still in the submit queue: its place is free now
            self._fail(job, ErrorKind.CANCELLED, "cancelled by the caller")

    def _abort(self, curl: pycurl.Curl) -> None:
        """Take a running transfer off libcurl and return its handle, emptied, to the pool."""
        job: Job = curl.job
        self._multi.remove_handle(curl)
        self._running.discard(curl)
        self._scheduler.release(job.origin)
        curl.job = None
        job.curl = None
        self._transport.release(curl)
        self._free.append(curl)

    def _drained_or_due(self) -> bool:
        assert self._drain_until is not None
        idle = not self._queue and not self._running and self.queued == 0
        return idle or time.monotonic() >= self._drain_until

    def _end_everything(self, kind: ErrorKind, message: str) -> int:
        """End every job not yet ended (at close, or when the loop died); return how many."""
        ended = 0
        jobs: list[Job] = []
        if self._resolutions is not None:
            jobs += self._resolutions.close()
        jobs += self._scheduler.drain()
        while self._queue:
            jobs.append(self._queue.popleft())
        while self._cancels:
            jobs.append(self._cancels.popleft())
        for curl in list(self._running):
            job = curl.job
            try:
                self._multi.remove_handle(curl)
            except pycurl.error:
                pass
            curl.close()
            if job is not None:
                job.curl = None
                jobs.append(job)
        self._running.clear()
        for curl in self._free:
            curl.close()
        self._free.clear()
        for job in jobs:
            if not job.done:
                ended += 1
                self._fail(job, kind, message)
        return ended


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
