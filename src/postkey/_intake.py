"""The submit queue: the bounded hand-off from submitting threads to the engine thread.

Submitters check for room and append; the engine takes everything at once. Jobs may wait here
while every transfer slot is busy, so the queue keeps the earliest deadline among them (the
engine wakes for it) and counts the jobs cancelled while here (their places are free at once).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ._errors import ClientClosed, QueueFull
from ._job import Job
from ._waits import wake_all

NEVER = float("inf")


class Intake:
    """Jobs submitted and not yet taken in by the engine."""

    def __init__(self, max_queue: int, queue_wait_ms: int) -> None:
        self._max_queue = max_queue
        self._wait_s = queue_wait_ms / 1000.0
        self._jobs: deque[Job] = deque()
        # Makes "still open? then queue it" atomic against the engine's last sweep: without it,
        # a submit racing close() could queue a job nobody ends.
        self._lock = threading.Lock()
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        # Callbacks of asyncio submits waiting for room: they must not hold a thread each.
        self._room_callbacks: dict[Callable[[None], object], None] = {}
        #: The earliest deadline among the jobs here (NEVER if none); kept under the lock.
        self.soonest = NEVER
        #: Jobs here that were cancelled (engine thread): their places are free already.
        self.dead = 0
        self.accepting = True
        self._sealed = False

    def __len__(self) -> int:
        """Jobs here, cancelled ones included."""
        return len(self._jobs)

    def check_room(
        self, backlog: Callable[[], int], refused: Callable[[], ClientClosed], wait: bool = True
    ) -> None:
        """Raise unless ``backlog()`` (every job accepted and not yet on the wire) leaves room
        for one more, waiting up to ``queue_wait_ms`` for it if ``wait``.

        Raises:
            QueueFull: no room within ``queue_wait_ms``.
            ClientClosed: (from ``refused``) the engine is closed or stopped.
        """
        if not self.accepting:
            raise refused()
        if backlog() < self._max_queue:
            return
        if wait and self._wait_s > 0:
            self.wait_for_room(backlog, self._wait_s)
            if not self.accepting:
                raise refused()
        queued = backlog()
        if queued >= self._max_queue:
            raise QueueFull(
                f"the queue holds {queued} requests (max_queue={self._max_queue});"
                " nothing was submitted"
            )

    def wait_for_room(self, backlog: Callable[[], int], timeout_s: float) -> None:
        """Block up to ``timeout_s`` until ``backlog()`` leaves room or submits are refused."""
        deadline = time.monotonic() + timeout_s
        with self._room:
            self._room_waiters += 1
            try:
                while backlog() >= self._max_queue and self.accepting:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._room.wait(left):
                        break
            finally:
                self._room_waiters -= 1

    def put(self, job: Job, refused: Callable[[], ClientClosed]) -> None:
        """Append ``job`` (room was checked by `check_room`).

        Raises:
            ClientClosed: (from ``refused``) the engine has made its last sweep.
        """
        with self._lock:
            if self._sealed:
                raise refused()
            self._jobs.append(job)
            job.queued = True  # after the append: an interrupt in between errs on the safe side
            # An if, not min(): this is every submit's path, and the call costs more.
            if job.deadline < self.soonest:  # noqa: PLR1730
                self.soonest = job.deadline

    def take_all(self) -> deque[Job]:
        """Everything here, for the engine (which skips cancelled jobs); empties the queue."""
        with self._lock:
            self.soonest = NEVER
            self.dead = 0
            jobs, self._jobs = self._jobs, deque()
        return jobs

    def room_made(self) -> None:
        """Wake submitters waiting for room (the backlog shrank, or the engine is stopping)."""
        if self._room_waiters or not self.accepting:
            with self._room:
                self._room.notify_all()
        if self._room_callbacks:
            wake_all(list(self._room_callbacks), None, "queue room")

    def add_room_callback(self, callback: Callable[[None], object]) -> None:
        """Call ``callback(None)`` (on the engine's thread) whenever room may have been made,
        until `remove_room_callback`; it must be quick and must not block."""
        self._room_callbacks[callback] = None

    def remove_room_callback(self, callback: Callable[[None], object]) -> None:
        """Stop calling ``callback`` (no error if it is not registered)."""
        self._room_callbacks.pop(callback, None)

    def stop_accepting(self) -> None:
        """Refuse new submits from now on (jobs already here are still taken in)."""
        self.accepting = False
        self.room_made()

    def seal(self) -> deque[Job]:
        """Refuse every further `put` and return what is left (the engine's last sweep)."""
        self.accepting = False
        with self._lock:
            self._sealed = True
        self.room_made()
        return self.take_all()
