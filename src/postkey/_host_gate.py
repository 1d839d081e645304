"""`HostGate`: whether a worker may send a request to its host now, across every worker.

A worker asks before handing a job to its engine. Three things can hold a job back, each shared
by every worker through Redis (`_stores.redis_limits`): the host is paused (a 429 / 503 with
Retry-After, clamped to ``max_pause_ms``), the host already has ``host_concurrency`` requests on
the wire (a lease semaphore: a killed worker's permits lapse), or the host's rate
(``host_rate_per_s``, GCRA) says wait. A job held back waits in the worker (its queue entry
renewed like any other) and is asked about again shortly; its deadline still runs.

Pauses are read at most every `_PAUSE_RECHECK_S` per host, so a worker with no limits set pays
one Redis read per host and period, not one per request.
"""

from __future__ import annotations

import threading
import time

from ._job import Job
from ._result import Result
from ._settings import Settings
from ._stores.redis_limits import HostLimits, parse_retry_after

_PAUSE_RECHECK_S = 0.2
#: Statuses whose Retry-After pauses the host for every worker.
PAUSING_STATUSES = frozenset({429, 503})


def host_of(job: Job) -> str:
    """The unit of the per-host limits: scheme, host name and port."""
    scheme, host, port = job.origin
    return f"{scheme}://{host}:{port}"


class HostGate:
    """Admission of jobs to their hosts for one worker. Thread-safe."""

    def __init__(self, limits: HostLimits, settings: Settings, holder_prefix: str) -> None:
        self._limits = limits
        self._concurrency = settings.host_concurrency
        self._rate = settings.host_rate_per_s
        self._max_pause_s = settings.max_pause_ms / 1000.0
        self._lease_ms = settings.claim_idle_ms
        self._holder_prefix = holder_prefix
        self._lock = threading.Lock()
        self._paused_until: dict[str, tuple[float, float]] = {}  # host -> (until, checked at)
        self._permits: dict[str, set[str]] = {}  # host -> holders of this worker's permits

    def admit(self, job: Job) -> float:
        """0.0 if ``job`` may be sent now (a permit is taken for it if limits are on); else the
        seconds to wait before asking again."""
        host = host_of(job)
        wait = self._paused_for(host)
        if wait > 0:
            return wait
        if self._rate:
            wait_ms = self._limits.rate(host, self._rate, 1)
            if wait_ms:
                return wait_ms / 1000.0
        if self._concurrency:
            holder = self._holder(job)
            if not self._limits.acquire(host, holder, self._concurrency, self._lease_ms):
                return 0.02  # a permit frees when a request ends: ask again soon
            with self._lock:
                self._permits.setdefault(host, set()).add(holder)
        return 0.0

    def done(self, job: Job, result: Result) -> None:
        """Give ``job``'s permit back; pause its host if the answer asked for it."""
        if not self._concurrency and result.status not in PAUSING_STATUSES:
            return  # nothing to give back or to pause (the usual case)
        host = host_of(job)
        if self._concurrency:
            holder = self._holder(job)
            with self._lock:
                held = self._permits.get(host)
                if held is not None:
                    held.discard(holder)
                    if not held:
                        del self._permits[host]
            self._limits.release(host, holder)
        if result.status in PAUSING_STATUSES:
            seconds = parse_retry_after(result.headers.get("retry-after"))
            if seconds:
                applied = self._limits.pause(host, seconds, self._max_pause_s)
                with self._lock:
                    self._paused_until[host] = (time.monotonic() + applied, time.monotonic())

    def renew(self) -> None:
        """Keep this worker's permits alive (with the renewals of its queue entries)."""
        with self._lock:
            permits = {host: list(holders) for host, holders in self._permits.items()}
        for host, holders in permits.items():
            self._limits.renew(host, holders, self._lease_ms)

    def _paused_for(self, host: str) -> float:
        now = time.monotonic()
        # Read without the lock (every admit passes here): a dict read is atomic, and a value
        # is only ever replaced whole.
        until, checked = self._paused_until.get(host, (0.0, -1.0))
        if until > now:
            return until - now
        if now - checked < _PAUSE_RECHECK_S:
            return 0.0
        left = self._limits.paused_ms(host) / 1000.0
        with self._lock:
            self._paused_until[host] = (now + left, now)
            if len(self._paused_until) > 10_000:  # many hosts: forget the oldest
                del self._paused_until[next(iter(self._paused_until))]
        return left

    def _holder(self, job: Job) -> str:
        return f"{self._holder_prefix}:{job.key}"
