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
import time
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
#: Names whose answers are kept for reuse (the oldest answer goes first past it).
MAX_CACHED_NAMES = 10_000
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
            address = item
        elif isinstance(item, str):
            try:
                address = ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(
                    f"resolver returned {item!r}, which is not an IP address in standard form"
                ) from None
        else:
            raise ValueError(f"resolver returned {item!r}, which is not an IP address")
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(
                f"resolver returned {item!r}: addresses with a zone id cannot be pinned"
            )
        out.append(str(address))
    if not out:
        raise ValueError("resolver returned no address")
    return out


class _Lookup:
    """One call of the resolver for one name, shared by every job waiting for that name."""

    __slots__ = ("abandoned", "finished", "jobs", "name", "started")

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: dict[Job, None] = {}
        self.started = False
        self.finished = False
        self.abandoned = False


class Resolutions:
    """Jobs waiting for their host's addresses. The engine thread calls everything; resolver
    threads only hand in answers under the lock and wake the engine.

    Jobs waiting for the same name share one lookup, so a burst to one host costs one call.
    """

    def __init__(self, resolver: Resolver, wake: Callable[[], None], cache_ms: int = 0) -> None:
        self._resolver = resolver
        self._cache_s = cache_ms / 1000.0
        # name -> (monotonic time it is good until, addresses); engine thread only, in the
        # order answers arrived, so the oldest is first to go.
        self._answers: dict[str, tuple[float, list[str]]] = {}
        self._wake = wake
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._todo: deque[_Lookup] = deque()
        self._landed: deque[tuple[_Lookup, list[str] | str]] = deque()
        self._by_name: dict[str, _Lookup] = {}  # lookups not yet landed, by name
        self._of_job: dict[Job, _Lookup] = {}
        self._threads = 0  # resolver threads alive
        self._working = 0  # of them, inside a call to the resolver
        self._abandoned = 0  # of those, on a lookup nobody waits for any more
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs waiting for an answer."""
        return len(self._of_job)

    @property
    def has_answers(self) -> bool:
        """True if a lookup finished and `settle` has work."""
        return bool(self._landed)

    def start(self, job: Job) -> Failure | None:
        """Look up ``job``'s host on a resolver thread; a Failure if that cannot be done."""
        name = job.origin[1]
        cached = self._answers.get(name)
        if cached is not None:
            if cached[0] > time.monotonic():
                # Settled on the engine's next turn, like an answer that just arrived.
                known = _Lookup(name)
                known.jobs[job] = None
                self._of_job[job] = known
                with self._lock:
                    self._landed.append((known, cached[1]))
                return None
            del self._answers[name]
        lookup = self._by_name.get(name)  # only the engine thread adds or removes names
        if lookup is not None and not lookup.abandoned:
            lookup.jobs[job] = None
            self._of_job[job] = lookup
            return None
        with self._lock:
            if self._abandoned >= MAX_ABANDONED:
                return (
                    job,
                    ErrorKind.DNS,
                    f"the resolver has {self._abandoned} lookups stuck past their deadline",
                )
            lookup = _Lookup(name)
            lookup.jobs[job] = None
            self._by_name[name] = lookup
            self._of_job[job] = lookup
            self._todo.append(lookup)
            free = self._threads - self._working
            if len(self._todo) > free and self._threads - self._abandoned < MAX_LOOKUPS:
                self._threads += 1
                threading.Thread(target=self._work, name="postkey-resolver", daemon=True).start()
            else:
                self._ready.notify()
        return None

    def settle(self) -> tuple[list[Job], list[Failure]]:
        """Jobs whose addresses arrived (set on ``job.addresses``), and jobs whose lookup failed."""
        ready: list[Job] = []
        failed: list[Failure] = []
        while self._landed:
            lookup, answer = self._landed.popleft()
            if self._by_name.get(lookup.name) is lookup:
                del self._by_name[lookup.name]
                if self._cache_s > 0 and not isinstance(answer, str):
                    self._remember(lookup.name, answer)
            for job in lookup.jobs:
                del self._of_job[job]
                if job.done:
                    continue
                if isinstance(answer, str):
                    failed.append((job, ErrorKind.DNS, answer))
                else:
                    job.addresses = answer
                    ready.append(job)
            lookup.jobs.clear()
        return ready, failed

    def _remember(self, name: str, addresses: list[str]) -> None:
        answers = self._answers
        answers.pop(name, None)  # re-inserted last: the order stays oldest first
        if len(answers) >= MAX_CACHED_NAMES:
            del answers[next(iter(answers))]
        answers[name] = (time.monotonic() + self._cache_s, addresses)

    def abandon(self, job: Job) -> bool:
        """Stop waiting for ``job``'s lookup (its deadline passed, or it was cancelled)."""
        lookup = self._of_job.pop(job, None)
        if lookup is None:
            return False
        del lookup.jobs[job]
        if not lookup.jobs:  # nobody waits for this name any more
            if self._by_name.get(lookup.name) is lookup:
                del self._by_name[lookup.name]
            with self._lock:
                self._let_go(lookup)
        return True

    def _let_go(self, lookup: _Lookup) -> None:
        # A lookup not yet started is skipped when its turn comes; a running one keeps its
        # thread busy but stops counting against MAX_LOOKUPS.
        if lookup.abandoned:
            return
        lookup.abandoned = True
        if lookup.started and not lookup.finished:
            self._abandoned += 1

    def close(self) -> list[Job]:
        """Stop taking lookups; return the jobs still waiting (the engine ends them)."""
        with self._lock:
            self._closed = True
            waiting = list(self._of_job)
            for lookup in self._by_name.values():
                self._let_go(lookup)
            self._by_name.clear()
            self._of_job.clear()
            self._todo.clear()
            self._ready.notify_all()
        return waiting

    # -- resolver threads ------------------------------------------------------------------------

    def _work(self) -> None:
        lookup = self._next()
        while lookup is not None:
            answer = self._ask(lookup.name)  # never raises
            with self._lock:
                self._working -= 1
                lookup.finished = True
                if lookup.abandoned:
                    self._abandoned -= 1
                else:
                    self._landed.append((lookup, answer))
            self._wake()
            lookup = self._next()

    def _next(self) -> _Lookup | None:
        """The next lookup to run, or None when this thread should end (it is then no longer
        counted: the count and the decision change under one lock hold, so `start` never
        relies on a thread that is leaving)."""
        with self._lock:
            while True:
                while self._todo:
                    lookup = self._todo.popleft()
                    if not lookup.abandoned:
                        lookup.started = True
                        self._working += 1
                        return lookup
                if self._closed or (not self._ready.wait(_IDLE_EXIT_S) and not self._todo):
                    self._threads -= 1
                    return None

    def _ask(self, name: str) -> list[str] | str:
        """The resolver's answer for ``name``: addresses, or a message saying what went wrong.
        Whatever the user's resolver raises or returns ends only the requests for ``name``."""
        try:
            raw = self._resolver(name)
        except BaseException as exc:
            return f"resolver failed: {type(exc).__name__}: {exc}"
        try:
            return check_answer(raw)
        except ValueError as exc:
            return str(exc)
        except BaseException as exc:  # reading the answer runs user code too (a generator)
            return f"bad resolver answer: {type(exc).__name__}: {exc}"
