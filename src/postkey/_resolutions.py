"""Name resolution through an injected resolver, on a small thread pool, inside each deadline.

A slow answer holds up only its own request; the engine ends a job whose deadline passes while
its lookup is still running.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ._job import Job
from ._result import ErrorKind
from ._transport import target_of

Failure = tuple[Job, ErrorKind, str]


class Resolutions:
    """Jobs waiting for their host's addresses. The engine thread calls everything but the
    pool's completion callback, which only appends and wakes the engine."""

    def __init__(self, resolver: Callable[[str], Sequence[str]], wake: Callable[[], None]) -> None:
        self._resolver = resolver
        self._wake = wake
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="postkey-resolver")
        #: Jobs whose lookup is running; they count against the engine's in-flight cap.
        self.pending: dict[Job, None] = {}
        self._landed: deque[tuple[Job, Sequence[str] | BaseException]] = deque()

    @property
    def has_answers(self) -> bool:
        """True if a lookup finished and `settle` has work."""
        return bool(self._landed)

    def start(self, job: Job) -> None:
        """Look up ``job``'s host on the pool."""
        self.pending[job] = None
        future = self._pool.submit(self._resolver, target_of(job.request.url)[0])

        def landed(done: Future[Sequence[str]]) -> None:
            if done.cancelled():
                return  # shutting down; the job was already ended
            error = done.exception()
            self._landed.append((job, error if error is not None else done.result()))
            self._wake()

        future.add_done_callback(landed)

    def settle(self, now: float) -> tuple[list[Job], list[Failure]]:
        """Jobs whose addresses arrived (set on ``job.addresses``), and jobs that failed: the
        resolver raised or answered nothing (dns), or the deadline passed first (timeout)."""
        ready: list[Job] = []
        failed: list[Failure] = []
        while self._landed:
            job, answer = self._landed.popleft()
            waiting = job in self.pending
            self.pending.pop(job, None)
            if not waiting or job.done:
                continue  # not waiting any more: timed out or cancelled meanwhile
            if isinstance(answer, BaseException):
                failed.append((job, ErrorKind.DNS, f"resolver failed: {answer}"))
            elif not answer:
                failed.append((job, ErrorKind.DNS, "resolver returned no address"))
            else:
                job.addresses = [str(a) for a in answer]
                ready.append(job)
        for job in [j for j in self.pending if j.deadline <= now]:
            del self.pending[job]
            failed.append(
                (job, ErrorKind.TIMEOUT, "name resolution did not finish within timeout_ms")
            )
        return ready, failed

    def soonest_deadline(self) -> float | None:
        """The earliest deadline among pending lookups."""
        return min((job.deadline for job in self.pending), default=None)

    def close(self) -> list[Job]:
        """Stop the pool; return the jobs still waiting (the engine ends them)."""
        waiting = list(self.pending)
        self.pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        return waiting
