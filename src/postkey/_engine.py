"""The engine: one thread driving libcurl's multi interface (perform, then select()).

Submissions go into a bounded queue; the engine takes them in, resolves names (with an injected
resolver), lets the scheduler pick what starts under the in-flight and per-host caps, runs the
transfers, and hands every job exactly one terminal Result through ``on_result``. Cancellations,
deadlines and close are carried out on the engine thread too, so a job's result has one writer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from . import _lifecycle
from ._errors import ClientClosed
from ._intake import Intake
from ._job import Job
from ._redirects import REDIRECT_STATUSES, RedirectRefusal, next_hop
from ._resolutions import Resolutions
from ._result import ErrorKind, Result, State
from ._scheduler import Scheduler
from ._settings import Settings
from ._transfers import Transfers
from ._transport import Transport
from ._urls import needs_lookup, origin_of, redacted
from ._wakeup import Wakeup

log = logging.getLogger(__name__)

_HIGH_FD_TICK = 0.002  # seconds between looks when libcurl has sockets select() cannot watch
_HOUSEKEEPING_S = 1.0  # how often the store gets to reclaim expired entries while idle
_MAX_LOOP_FAILURES = 3  # consecutive unexpected errors after which the loop gives up
_AT_EXIT = "interpreter exit"  # how the closing reason given at exit starts
_LATE_IN_QUEUE = "deadline passed while queued; nothing was sent"
# How long a busy engine may keep back the wakes of results it stored (see MemoryStore.hold_wakes).
_WAKE_HOLD_S = 0.001


class Engine:
    """Runs jobs on libcurl and reports each one's Result to ``on_result`` (on the engine thread).

    Raises (from `check_room` and `enqueue`):
        QueueFull: the queue is at ``settings.max_queue`` for longer than ``queue_wait_ms``.
        ClientClosed: `close` was called, or the engine stopped after an internal error.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        on_result: Callable[[Job, Result], None],
        housekeeping: Callable[[], object] | None = None,
        wakes: tuple[Callable[[], None], Callable[[], None]] | None = None,
    ) -> None:
        """``wakes``: the store's (hold_wakes, wake_held), if it can keep wakes back while the
        engine is busy: the engine then wakes a round's waiters together before it waits."""
        self._settings = settings
        self._transport = transport
        self._on_result = on_result
        self._housekeeping = housekeeping
        self._wakes = wakes
        self._holding = False
        self._held_since = 0.0
        self._check_names = settings.policy.has_name_rules
        self._max_in_flight = settings.max_in_flight
        self._max_queue = settings.max_queue
        self._intake = Intake(settings.max_queue, settings.queue_wait_ms)
        self._cancels: deque[Job] = deque()
        self._transfers = Transfers(settings, transport)
        self._running = self._transfers.running  # read by other threads for counts only
        self._scheduler = Scheduler(settings.max_in_flight, settings.max_per_host)
        self._resolutions = (
            Resolutions(settings.resolver, self._wake, settings.resolver_cache_ms)
            if settings.resolver is not None
            else None
        )
        self._asleep = False
        self._sleep_until = 0.0  # when the engine wakes by itself at the latest (monotonic)
        self._could_start = True  # False while asleep with every slot busy
        # With a resolver or name rules, every new job has work for the engine at once.
        self._eager = settings.resolver is not None or self._check_names
        self._finished = False
        self._orphaned = False
        #: Why the loop stopped on its own (an internal error), or None.
        self.failure: str | None = None
        self._drain_until: float | None = None
        self._closing_reason = "the client was closed before the request finished"
        self._next_housekeeping = time.monotonic() + _HOUSEKEEPING_S
        self._wakeup = Wakeup()
        self._runner = threading.Thread(target=self._run, name="postkey-engine", daemon=True)
        if _lifecycle.exiting():
            # Made after interpreter exit began (say, the default client again, from a thread
            # still running): nobody would bound it, so it takes no work at all.
            self._intake.accepting = False
            self._closing_reason = _AT_EXIT
            self._drain_until = time.monotonic()
        _lifecycle.track(self)
        self._runner.start()

    # -- any thread ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs accepted and not yet on the wire (queued, resolving or waiting for their host)."""
        resolving = self._resolutions.pending if self._resolutions is not None else 0
        return len(self._intake) - self._intake.dead + self._scheduler.waiting + resolving

    @property
    def in_flight(self) -> int:
        """Transfers handed to libcurl and not finished."""
        return len(self._running)

    def check_room(self, wait: bool = True) -> None:
        """Raise unless the queue has room for one more job (waiting up to ``queue_wait_ms``,
        if ``wait``).

        Called before a key becomes visible, so a refused submit leaves nothing behind.

        Raises:
            QueueFull: no room within ``queue_wait_ms``.
            ClientClosed: the engine is closed or stopped.
        """
        intake = self._intake
        # The common case inline (every submit passes here); the rest in Intake.check_room.
        if (
            intake.accepting
            and self._resolutions is None
            and len(intake) - intake.dead + self._scheduler.waiting < self._max_queue
        ):
            return
        intake.check_room(self._backlog, self._closed_error, wait)

    def has_room(self) -> bool:
        """True if the queue has room for one more job now (or the engine refuses: then a
        submit raises ClientClosed at once rather than waiting)."""
        return not self._intake.accepting or self._backlog() < self._max_queue

    def add_room_callback(self, callback: Callable[[None], object]) -> None:
        """Call ``callback(None)`` on the engine's thread whenever room may have been made (or
        the engine stops), until `remove_room_callback` (for `AsyncClient`'s submits)."""
        self._intake.add_room_callback(callback)

    def remove_room_callback(self, callback: Callable[[None], object]) -> None:
        """Stop calling ``callback``."""
        self._intake.remove_room_callback(callback)

    def _backlog(self) -> int:
        return self.queued

    def enqueue(self, job: Job, wake: bool = True) -> None:
        """Queue ``job`` (room was checked by `check_room`); never blocks on the network.

        With ``wake=False`` the caller wakes the engine itself, soon, with `wake_for_new_jobs`
        (an event loop does it once for the later submits of one of its turns); the engine is
        still woken at once if ``job`` is due before it would wake by itself.

        Raises:
            ClientClosed: the engine is closed or stopped.
        """
        self._intake.put(job, self._closed_error)
        # The engine raises _asleep just before it sleeps. Waking it costs a system call and a
        # trip through its loop, so do it only if it has something to do with this job now:
        # start it, look up its name, refuse it by name, or see to it before half of its time
        # is gone (woken by itself only near the job's deadline, it would be too late to send
        # it). Otherwise the engine takes it in when it wakes for its own reasons.
        if self._asleep and (
            _too_late(self._sleep_until, job.deadline)
            or (
                wake and self._could_start and (self._eager or self._scheduler.has_room(job.origin))
            )
        ):
            self._asleep = False
            self._wake()

    def wake_for_new_jobs(self) -> None:
        """Wake the engine if it sleeps while jobs queued with ``enqueue(job, wake=False)`` could
        start now, or are due before it would wake by itself."""
        if (
            self._asleep
            and self._intake
            and (self._could_start or _too_late(self._sleep_until, self._intake.soonest))
        ):
            self._asleep = False
            self._wake()

    def cancel(self, job: Job) -> None:
        """Ask the engine to end ``job`` as failed / cancelled (if it has not ended yet)."""
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
        self._intake.stop_accepting()
        until = time.monotonic() + drain_ms / 1000.0
        if self._drain_until is None or until < self._drain_until:
            if reason is not None:
                self._closing_reason = reason
            self._drain_until = until
        self._wake()
        if wait and threading.current_thread() is not self._runner:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the engine thread to end; True if it has."""
        if threading.current_thread() is not self._runner:
            self._runner.join(timeout)
        return not self._runner.is_alive()

    @property
    def closed(self) -> bool:
        """True once the engine stopped taking work (closed, or stopped by an internal error)."""
        return self._finished or not self._runner.is_alive()

    @property
    def exit_grace_ms(self) -> int:
        """How long this engine's requests may go on at interpreter exit."""
        return self._settings.exit_grace_ms

    def orphan(self) -> None:
        """Make this engine inert in a forked child: its thread did not survive the fork, and
        its sockets, pipe and locks belong to the parent, so nothing here may touch them."""
        self._orphaned = True
        self._intake.accepting = False
        self._finished = True
        self._wakeup.orphan()

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
        self._wakeup.poke()  # a no-op once closed, or orphaned in a forked child

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
        # only compete with submitters for the GIL. Intake.soonest brings the engine back for
        # their deadlines.
        if self._intake and (
            self._scheduler.running < self._max_in_flight
            or self._eager
            or self._intake.soonest <= time.monotonic()
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
        self._transfers.perform()
        if not self._holding and self._wakes is not None:
            self._wakes[0]()
            self._holding = True
            self._held_since = now
        self._transfers.reap(self._finish)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING_S
            self._keep_house()
        if self._holding and now - self._held_since >= _WAKE_HOLD_S:
            self._wake_held()
        scheduler = self._scheduler
        if scheduler.startable or (self._intake and scheduler.running < self._max_in_flight):
            return False  # reaping made room, or new jobs may start: go again before sleeping
        if self._drain_until is not None and self._drained_or_due():
            return True
        self._sleep()
        return False

    def _wake_held(self) -> None:
        self._holding = False
        if self._wakes is not None:
            try:
                self._wakes[1]()
            except Exception:  # wake_all keeps waiters' errors; this would be a bug of ours
                log.exception("postkey could not wake the waiters of finished requests")

    def _stop(self) -> None:
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
                self._transfers.close()
            finally:
                self._wake_held()
                self._wakeup.close()
                _lifecycle.untrack(self)

    def _keep_house(self) -> None:
        if self._housekeeping is not None:
            try:
                self._housekeeping()
            except Exception:
                log.exception("postkey store housekeeping failed")

    def _sleep(self) -> None:
        readers, writers, errors, curl_ms = self._transfers.sockets()
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
        timeout = max(min(timeout, self._intake.soonest - now), 0.0)
        self._sleep_until = now + timeout
        self._could_start = self._eager or self._scheduler.running < self._max_in_flight
        self._asleep = True
        answers = self._resolutions is not None and self._resolutions.has_answers
        if (
            self._cancels
            or answers
            or (self._intake and self._could_start)
            or self._intake.soonest < self._sleep_until
        ):
            self._asleep = False  # arrived after the loop looked
            return
        if self._holding:
            self._wake_held()  # the waiters run while the engine waits
        self._wakeup.sleep(readers, writers, errors, timeout)
        self._asleep = False

    def _take_in(self) -> None:
        """Move submitted jobs to the resolver or the scheduler (or end them at once)."""
        now = time.monotonic()
        for job in self._intake.take_all():
            job.queued = False
            if not job.done:  # a job cancelled before it was taken in is skipped
                self._take(job, now)
        self._intake.room_made()

    def _take(self, job: Job, now: float) -> None:
        """Send ``job`` (new, or its next redirect hop) to the resolver or the scheduler, or end
        it at once (refused by name, or out of time)."""
        if self._check_names:
            refusal = self._transport.refusal(job)
            if refusal is not None:
                self._fail(job, ErrorKind.BLOCKED, refusal)
                return
        if job.deadline <= now:
            self._fail(job, ErrorKind.TIMEOUT, _LATE_IN_QUEUE)
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
            result.headers.get("location"),
            job.hops,
            self._settings.max_redirects,
            policy=self._settings.policy,
        )
        if hop is None:
            return result
        if isinstance(hop, RedirectRefusal):
            return job.failure(hop.kind, hop.message)
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
        start = self._transfers.start
        debug = log.isEnabledFor(logging.DEBUG)
        while job is not None:
            job.waiting = False
            left_ms = int((job.deadline - now) * 1000.0) + 1
            if left_ms <= 0:
                scheduler.release(job.origin)
                self._fail(job, ErrorKind.TIMEOUT, _LATE_IN_QUEUE)
            else:
                if debug:
                    request = job.request
                    log.debug("start %s %s %s", job.key, request.method, redacted(request.url))
                try:
                    start(job, left_ms)
                except Exception as exc:
                    log.exception("could not start request %s", job.key)
                    scheduler.release(job.origin)
                    self._fail(job, ErrorKind.INTERNAL, f"could not start the transfer: {exc}")
            job = scheduler.pop()
        self._intake.room_made()

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

    def _finish(self, job: Job, result: Result) -> None:
        """A transfer ended: deliver its result, or take in its next redirect hop."""
        self._scheduler.release(job.origin)
        if job.request.follow_redirects and result.status in REDIRECT_STATUSES:
            try:
                followed = self._redirect(job, result)
            except Exception as exc:  # a bug in hop building: this request ends, nothing else
                log.exception("could not follow the redirect of %s", job.key)
                followed = job.failure(ErrorKind.INTERNAL, f"could not follow a redirect: {exc}")
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
        self._deliver(job, job.failure(kind, message))

    def _apply_cancels(self) -> None:
        while self._cancels:
            job = self._cancels.popleft()
            if job.done:
                continue
            if job.waiting:
                job.waiting = False
                self._scheduler.discard(job)
            elif job.handle is not None:
                self._transfers.abort(job)
                self._scheduler.release(job.origin)
            elif self._resolutions is not None and self._resolutions.abandon(job):
                pass
            elif job.queued:
                self._intake.dead += 1  # still in the submit queue: its place is free now
            self._fail(job, ErrorKind.CANCELLED, "cancelled by the caller")

    def _drained_or_due(self) -> bool:
        assert self._drain_until is not None
        idle = not self._intake and not self._running and self.queued <= 0
        return idle or time.monotonic() >= self._drain_until

    def _end_everything(self, kind: ErrorKind, message: str) -> int:
        """End every job not yet ended (at close, or when the loop died); return how many."""
        ended = 0
        jobs: list[Job] = []
        if self._resolutions is not None:
            jobs += self._resolutions.close()
        jobs += self._scheduler.drain()
        jobs += self._intake.seal()
        while self._cancels:
            jobs.append(self._cancels.popleft())
        jobs += self._transfers.close()
        for job in jobs:
            if not job.done:
                ended += 1
                self._fail(job, kind, message)
        return ended


def _too_late(wake_at: float, deadline: float) -> bool:
    """True if an engine that wakes by itself at ``wake_at`` would find less than half of the
    time to ``deadline`` left (or none)."""
    now = time.monotonic()
    return wake_at - now > (deadline - now) / 2
