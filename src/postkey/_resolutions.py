"""Name resolution through an injected resolver, on threads of its own, inside each deadline.

The resolver is user code: it may block, raise anything or answer nonsense. A lookup whose
request's deadline passes is abandoned (its request ends as ``timeout``) and its thread no longer
counts against the lookup concurrency, so a slow answer holds up only its own request. Threads
are daemons: a lookup that never returns cannot hold interpreter exit.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable

from ._job import Job
from ._result import ErrorKind

log = logging.getLogger(__name__)

Failure = tuple[Job, ErrorKind, str]
Resolver = Callable[[str], Iterable[str]]

#: Lookups running at once within their deadlines (more wait in a FIFO).
MAX_LOOKUPS = 64
#: Lookups still running past their deadline; beyond this, new lookups fail at once (dns), since
#: the resolver is evidently stuck and each one holds a thread.
MAX_ABANDONED = 256
MAX_ADDRESSES = 64
_IDLE_EXIT_S = 10.0  # an idle resolver thread ends after this long


def check_answer(answer: object) -> list[str]:
    """The addresses in a resolver's answer, as text libcurl can pin.

    Raises:
        ValueError: the answer is not an iterable of IP addresses (a str, a single address
            object, a name or a number such as ``2130706433``), is empty, or is too long.
    """
    if isinstance(answer, str | bytes) or not isinstance(answer, Iterable):
        raise ValueError(
            f"resolver must return a list of IP addresses, not a {type(answer).__name__}"
            f" ({answer!r})"
        )
    out: list[str] = []
    for item in answer:
        if len(out) == MAX_ADDRESSES:
            raise ValueError(f"resolver returned more than {MAX_ADDRESSES} addresses")
        if isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
            out.append(str(item))
            continue
        if not isinstance(item, str):
            raise ValueError(f"resolver returned {item!r}, which is not an IP address")
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(
                f"resolver returned {item!r}, which is not an IP address in standard form"
            ) from None
    if not out:
        raise ValueError("resolver returned no address")
    return out


class _Lookup:
    __slots__ = ("abandoned", "job", "started")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.started = False
        self.abandoned = False


class Resolutions:
    """Jobs waiting for their host's addresses. The engine thread calls everything; resolver
    threads only append answers under the lock and wake the engine."""

    def __init__(self, resolver: Resolver, wake: Callable[[], None]) -> None:
        self._resolver = resolver
        self._wake = wake
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._todo: deque[_Lookup] = deque()
        self._landed: deque[tuple[Job, list[str] | str]] = deque()
        self._lookups: dict[Job, _Lookup] = {}
        self._idle = 0
        self._running = 0  # lookups in progress within their deadline
        self._abandoned = 0  # lookups in progress past their deadline
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs waiting for an answer."""
        return len(self._lookups)

    @property
    def has_answers(self) -> bool:
        """True if a lookup finished and `settle` has work."""
        return bool(self._landed)

    def start(self, job: Job) -> Failure | None:
        """Look up ``job``'s host on a resolver thread; a Failure if that cannot be done."""
        with self._lock:
            if self._abandoned >= MAX_ABANDONED:
                return (
                    job,
                    ErrorKind.DNS,
                    f"the resolver has {self._abandoned} lookups stuck past their deadline",
                )
            lookup = _Lookup(job)
            self._lookups[job] = lookup
            self._todo.append(lookup)
            if self._idle:
                self._ready.notify()
            elif self._running < MAX_LOOKUPS:
                self._running += 1  # reserved until the new thread takes its first lookup
                threading.Thread(target=self._work, name="postkey-resolver", daemon=True).start()
        return None

    def settle(self) -> tuple[list[Job], list[Failure]]:
        """Jobs whose addresses arrived (set on ``job.addresses``), and jobs whose lookup failed."""
        ready: list[Job] = []
        failed: list[Failure] = []
        while self._landed:
            job, answer = self._landed.popleft()
            if self._lookups.pop(job, None) is None or job.done:
                continue  # abandoned meanwhile (timed out or cancelled)
            if isinstance(answer, str):
                failed.append((job, ErrorKind.DNS, answer))
            else:
                job.addresses = answer
                ready.append(job)
        return ready, failed

    def abandon(self, job: Job) -> bool:
        """Stop waiting for ``job``'s lookup (its deadline passed, or it was cancelled)."""
        with self._lock:
            lookup = self._lookups.pop(job, None)
            if lookup is None:
                return False
            self._let_go(lookup)
            return True

    def _let_go(self, lookup: _Lookup) -> None:
        # A lookup not yet started is skipped when its turn comes; a running one keeps its
        # thread busy but stops counting against MAX_LOOKUPS.
        lookup.abandoned = True
        if lookup.started:
            self._running -= 1
            self._abandoned += 1

    def close(self) -> list[Job]:
        """Stop taking lookups; return the jobs still waiting (the engine ends them)."""
        with self._lock:
            self._closed = True
            waiting = list(self._lookups)
            for lookup in self._lookups.values():
                self._let_go(lookup)
            self._lookups.clear()
            self._todo.clear()
            self._ready.notify_all()
        return waiting

    # -- resolver threads ------------------------------------------------------------------------

    def _work(self) -> None:
        with self._lock:
            self._running -= 1  # the reservation made in start(); _next counts the real work
        while (lookup := self._next()) is not None:
            self._resolve(lookup)

    def _next(self) -> _Lookup | None:
        with self._lock:
            while True:
                while self._todo:
                    lookup = self._todo.popleft()
                    if not lookup.abandoned:
                        lookup.started = True
                        self._running += 1
                        return lookup
                if self._closed:
                    return None
                self._idle += 1
                woken = self._ready.wait(_IDLE_EXIT_S)
                self._idle -= 1
                if not woken and not self._todo:
                    return None

    def _resolve(self, lookup: _Lookup) -> None:
        job = lookup.job
        answer: list[str] | str
        try:
            raw = self._resolver(job.origin[1])
        except BaseException as exc:  # user code: whatever it raises ends only this request
            answer = f"resolver failed: {type(exc).__name__}: {exc}"
        else:
            try:
                answer = check_answer(raw)
            except Exception as exc:  # iterating the answer runs user code too
                answer = str(exc) if isinstance(exc, ValueError) else f"bad resolver answer: {exc}"
        with self._lock:
            if lookup.abandoned:
                self._abandoned -= 1
            else:
                self._running -= 1
                self._landed.append((job, answer))
        self._wake()
