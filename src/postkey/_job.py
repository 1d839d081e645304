"""A job: one accepted request on its way through the engine, under its key."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._result import ErrorKind, Result, State
from ._urls import origin_of

if TYPE_CHECKING:
    from ._request import Request


class Job:
    """The engine's record of an accepted request; it lives until its Result is stored."""

    __slots__ = (
        "addresses",
        "deadline",
        "done",
        "fingerprint",
        "handle",
        "hops",
        "key",
        "on_done",
        "origin",
        "queued",
        "request",
        "state",
        "submitted_at",
        "ttl_ms",
        "waiters",
        "waiting",
    )

    def __init__(
        self,
        key: str,
        request: Request,
        *,
        on_done: Callable[[Result], Any] | None = None,
        ttl_ms: int | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.key = key
        self.request = request
        self.on_done = on_done
        self.ttl_ms = ttl_ms
        self.fingerprint = fingerprint
        self.state = State.PENDING
        self.done = False
        self.submitted_at = time.time()
        # The deadline counts from submission: time spent queued is part of timeout_ms.
        self.deadline = time.monotonic() + request.timeout_ms / 1000.0
        self.handle: Any = None  # its transfer's Handle while on the wire
        # Set when an injected resolver has answered for this job's host.
        self.addresses: list[str] | None = None
        #: (scheme, host, port) of the current hop: the unit of the per-host caps.
        self.origin: tuple[str, str, int] = origin_of(request.url)
        #: True while the job sits in the scheduler, waiting for a transfer slot.
        self.waiting = False
        #: True while the job sits in the submit queue (set by Intake.put).
        self.queued = False
        #: Redirects followed so far (the engine follows them itself, one transfer per hop).
        self.hops = 0
        #: Who waits for this job's result, each called with the Result when it is stored (a
        #: dict: O(1) removal when a wait times out); guarded by the store's lock (None: nobody).
        self.waiters: dict[Callable[[Result], object], None] | None = None

    def add_waiter(self, wake: Callable[[Result], object]) -> None:
        """Register ``wake`` for this job's Result (the caller holds the store's lock)."""
        if self.waiters is None:
            self.waiters = {wake: None}
        else:
            self.waiters[wake] = None

    def remove_waiter(self, wake: Callable[[Result], object]) -> None:
        """Undo `add_waiter` (the caller holds the store's lock); nothing if it is not there."""
        if self.waiters:
            self.waiters.pop(wake, None)

    def failure(self, kind: ErrorKind, message: str) -> Result:
        """This job's end as a ``failed`` Result (nothing, or nothing more, will be sent)."""
        return Result(
            self.key,
            State.FAILED,
            error_kind=kind,
            error=message,
            submitted_at=self.submitted_at,
            finished_at=time.time(),
            attempts=0 if kind is not ErrorKind.INTERNAL else 1,
        )

    def __repr__(self) -> str:
        req = self.request
        return f"<Job key={self.key} state={self.state.value} {req.method} {req.url}>"
