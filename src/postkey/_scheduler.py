"""Which job starts next: one FIFO per host, served round-robin under the global and per-host caps.

A job waiting for its host holds no in-flight slot, so a host that never answers can hold at most
``max_per_host`` slots and everyone else keeps the rest. Waiting jobs also sit in one deadline
heap, so a job whose deadline passes while it waits ends then, not when its turn comes.
Engine thread only: nothing here locks.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable

from ._job import Job

Origin = Hashable

# Rebuild a host's queue once this many of its entries are ended jobs (cancelled or timed out
# while waiting) and they are the majority: amortised O(1) per job, and dead entries stay bounded.
_COMPACT_AT = 64


class Scheduler:
    """Jobs waiting for a transfer slot, and the count of transfers running per host."""

    def __init__(self, max_in_flight: int, max_per_host: int) -> None:
        self._max_in_flight = max_in_flight
        self._max_per_host = max_per_host
        self._queues: dict[Origin, deque[Job]] = {}
        self._dead: dict[Origin, int] = {}
        self._active: dict[Origin, int] = {}
        # Hosts that have a waiting job and a free per-host slot, each once, in turn order.
        self._turns: deque[Origin] = deque()
        self._deadlines: list[tuple[float, int, Job]] = []
        self._compact_above = 1024
        self._stale = 0  # heap entries whose job started or ended since the last rebuild
        self._seq = itertools.count()
        #: Jobs waiting here that have not ended.
        self.waiting = 0
        #: Transfers started through `pop` and not yet `release`d.
        self.running = 0

    def push(self, job: Job) -> None:
        """Queue ``job`` behind the others of its host (``job.origin``)."""
        origin = job.origin
        queue = self._queues.get(origin)
        if queue is None:
            queue = self._queues[origin] = deque()
        if not queue and self._active.get(origin, 0) < self._max_per_host:
            self._turns.append(origin)
        queue.append(job)
        self.waiting += 1
        self.watch(job)

    def watch(self, job: Job) -> None:
        """Report ``job`` from `expired` once its deadline passes, unless it started or ended."""
        heapq.heappush(self._deadlines, (job.deadline, next(self._seq), job))
        if len(self._deadlines) > self._compact_above:
            self._compact()

    def _compact(self) -> None:
        # Entries of jobs that started or ended are dropped lazily; rebuilding once the heap
        # doubled since the last rebuild, or once over half of it is known stale, keeps that
        # amortised O(1) per entry. The second rule matters: 20,000 jobs queued at once would
        # otherwise stay reachable (with their requests) for their whole timeout after they
        # ended, for the garbage collector to walk at every full collection.
        live = [e for e in self._deadlines if _waiting(e[2])]
        heapq.heapify(live)
        self._deadlines = live
        self._compact_above = 2 * len(live) + 1024
        self._stale = 0

    def _went_stale(self) -> None:
        # One heap entry's job started or ended.
        self._stale += 1
        if self._stale > 1024 and 2 * self._stale > len(self._deadlines):
            self._compact()

    def pop(self) -> Job | None:
        """The next job to start (counted as running), or None if none may start now."""
        turns = self._turns
        while turns and self.running < self._max_in_flight:
            origin = turns.popleft()
            queue = self._queues[origin]
            job = None
            while queue:
                candidate = queue.popleft()
                if not candidate.done:
                    job = candidate
                    break
                self._dead[origin] = max(self._dead.get(origin, 0) - 1, 0)
            if job is None:
                self._forget_if_idle(origin)
                continue
            self.waiting -= 1
            active = self._active.get(origin, 0) + 1
            self._active[origin] = active
            self.running += 1
            if queue and active < self._max_per_host:
                turns.append(origin)
            self._went_stale()
            return job
        return None

    def has_room(self, origin: Origin) -> bool:
        """True if a new job for ``origin`` could start now (safe to ask from any thread)."""
        return (
            self.running < self._max_in_flight and self._active.get(origin, 0) < self._max_per_host
        )

    @property
    def startable(self) -> bool:
        """True if `pop` may have a job to start now."""
        return bool(self._turns) and self.running < self._max_in_flight

    def release(self, origin: Origin) -> None:
        """A transfer started by `pop` for ``origin`` has ended."""
        self.running -= 1
        active = self._active[origin] - 1
        self._active[origin] = active
        queue = self._queues.get(origin)
        if queue and active == self._max_per_host - 1:
            self._turns.append(origin)  # it was at its cap, so out of turn
        if active == 0:
            self._forget_if_idle(origin)

    def discard(self, job: Job) -> None:
        """``job`` ended while waiting here (cancelled, timed out): stop counting it."""
        self.waiting -= 1
        self._went_stale()
        origin = job.origin
        dead = self._dead.get(origin, 0) + 1
        self._dead[origin] = dead
        queue = self._queues.get(origin)
        if queue is not None and dead >= _COMPACT_AT and 2 * dead > len(queue):
            self._queues[origin] = deque(j for j in queue if not j.done)
            self._dead[origin] = 0

    def expired(self, now: float) -> list[Job]:
        """Watched jobs whose deadline has passed and that neither started nor ended (the caller
        ends them, and `discard`s those still waiting here)."""
        late: list[Job] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            job = heapq.heappop(heap)[2]
            if _waiting(job):
                late.append(job)
        return late

    def soonest_deadline(self) -> float | None:
        """The earliest deadline among waiting jobs. Entries of jobs that started or ended are
        dropped on the way: the engine sleeps until this, and a new job due just after a stale
        one would otherwise wait for it (woken then, the engine is too late to send it)."""
        heap = self._deadlines
        while heap:
            entry = heap[0]
            if _waiting(entry[2]):
                return entry[0]
            heapq.heappop(heap)
            if self._stale:
                self._stale -= 1
        return None

    def drain(self) -> list[Job]:
        """Remove and return every waiting job that has not ended (at close)."""
        jobs = [job for queue in self._queues.values() for job in queue if not job.done]
        self._queues.clear()
        self._dead.clear()
        self._turns.clear()
        self._deadlines.clear()
        self.waiting = 0
        return jobs

    def _forget_if_idle(self, origin: Origin) -> None:
        # Keeps the tables as small as the set of hosts with work, not every host ever seen.
        if not self._queues.get(origin) and not self._active.get(origin):
            self._queues.pop(origin, None)
            self._dead.pop(origin, None)
            self._active.pop(origin, None)


def _waiting(job: Job) -> bool:
    """A deadline heap entry's job neither started nor ended: the entry still counts."""
    return not job.done and job.handle is None
