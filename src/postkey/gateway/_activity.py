"""What this gateway has submitted and seen finish, per tenant, in bounded memory: counters, a
per-second series of the last two minutes, the slowest hosts and the latest requests. The
dashboard reads it through `Activity.snapshot`."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .._result import Result, State
from .._urls import origin_of, redacted
from ._histogram import Histogram

SERIES_S = 120  # seconds in the series
RECENT = 50  # latest requests kept per tenant
HOSTS = 256  # hosts followed per tenant (least recently seen dropped)
SLOWEST = 10
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_of(url: str) -> str:
    """``host`` or ``host:port`` (when not the scheme's default) of a validated URL, an IPv6
    address in brackets as in the URL (``[::1]:8080``)."""
    scheme, host, port = origin_of(url)
    if ":" in host:  # only an IPv6 address has one
        host = f"[{host}]"
    return host if _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"


# A path segment's parameters (``;jsessionid=...``): up to the next segment, query or fragment.
_PATH_PARAMETERS = re.compile(r";[^/?#]*")


def shown_url(url: str) -> str:
    """``url`` as the dashboard shows it: no user info, ``?…`` for the query and ``;…`` for
    each path segment's parameters (session ids and tokens live there too)."""
    shown = redacted(url)  # scheme://host/path?…: no ';' before the path
    start = shown.find("/", shown.find("//") + 2)
    if start < 0 or ";" not in shown:
        return shown
    return shown[:start] + _PATH_PARAMETERS.sub(";…", shown[start:])


class _Second:
    __slots__ = ("completed", "latency", "quantiles", "submitted")

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.latency = Histogram()
        self.quantiles: list[float | None] | None = None  # once the second is over


class _Host:
    __slots__ = ("count", "errors", "latency", "quantiles")

    def __init__(self) -> None:
        self.latency = Histogram()
        self.count = 0
        self.errors = 0
        self.quantiles: list[float | None] | None = None  # None: to compute again


class _Tenant:
    """One tenant's figures. Guarded by the Activity's lock."""

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.done = dict.fromkeys(STATUS_CLASSES, 0)
        self.failed: dict[str, int] = {}
        self.cancelled = 0
        self.seconds: dict[int, _Second] = {}
        self.hosts: OrderedDict[str, _Host] = OrderedDict()
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Outcomes that arrived before their submit was recorded (a request that ends at once,
        # on the callback thread, while the submitting coroutine is still on its way back).
        self.early: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def second(self, t: int) -> _Second:
        entry = self.seconds.get(t)
        if entry is None:
            entry = self.seconds[t] = _Second()
            if len(self.seconds) > SERIES_S + 2:
                for old in [s for s in self.seconds if s <= t - SERIES_S - 1]:
                    del self.seconds[old]
        return entry


_SHOWN_URLS = 1024  # redacted URLs kept; past this the cache starts over


class Activity:
    """Records submits and results (from any thread) and answers `snapshot` for a tenant."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        # URL -> as the dashboard shows it (a cache: each get and set is atomic on its own).
        self._shown_urls: dict[str, str] = {}

    def _tenant(self, name: str) -> _Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = _Tenant()
        return tenant

    def submitted(self, tenant: str, key: str, method: str, url: str) -> None:
        """Count a submit of ``key`` (the tenant's own form of it)."""
        now = self._clock()
        shown = self._shown_urls.get(url)
        if shown is None:  # most submits repeat a few URLs: each is redacted once
            if len(self._shown_urls) >= _SHOWN_URLS:
                self._shown_urls.clear()
            shown = self._shown_urls[url] = shown_url(url)
        entry = {
            "key": key,
            "method": method,
            "url": shown,
            "state": State.PENDING.value,
            "status": None,
            "error_kind": None,
            "elapsed_ms": None,
            "submitted_at": now,
        }
        with self._lock:
            t = self._tenant(tenant)
            t.submitted += 1
            t.second(int(now)).submitted += 1
            outcome = t.early.pop(key, None)
            if outcome is not None:
                entry.update(outcome)
            t.recent[key] = entry
            t.recent.move_to_end(key)
            if len(t.recent) > RECENT:
                t.recent.popitem(last=False)

    def finished(
        self, tenant: str, key: str, url: str, result: Result, host: str | None = None
    ) -> None:
        """Count the terminal result of ``key`` (a request to ``url``, whose host the caller
        may have worked out already)."""
        now = self._clock()
        elapsed = result.elapsed_ms
        kind = result.error_kind.value if result.error_kind is not None else None
        if host is None:
            host = host_of(url)
        with self._lock:
            t = self._tenant(tenant)
            t.completed += 1
            if result.state is State.DONE and result.status is not None:
                t.done[STATUS_CLASSES[min(max(result.status // 100, 1), 5) - 1]] += 1
            elif kind == "cancelled":
                t.cancelled += 1
            else:
                name = kind or "internal"
                t.failed[name] = t.failed.get(name, 0) + 1
            second = t.second(int(now))
            second.completed += 1
            stats = t.hosts.get(host)
            if stats is None:
                stats = t.hosts[host] = _Host()
                if len(t.hosts) > HOSTS:
                    t.hosts.popitem(last=False)
            else:
                t.hosts.move_to_end(host)
            stats.count += 1
            if result.state is not State.DONE:
                stats.errors += 1
            if elapsed is not None:
                second.latency.add(elapsed)
                stats.latency.add(elapsed)
                stats.quantiles = None
            outcome = {
                "state": result.state.value,
                "status": result.status if result.state is State.DONE else None,
                "error_kind": kind,
                "elapsed_ms": round(elapsed, 3) if elapsed is not None else None,
            }
            entry = t.recent.get(key)
            if entry is not None:
                entry.update(outcome)
            else:
                t.early[key] = outcome
                if len(t.early) > RECENT:
                    t.early.popitem(last=False)

    def snapshot(self, tenant: str) -> dict[str, Any]:
        """The tenant's figures in the dashboard's JSON shape (docs/GATEWAY.md)."""
        now = self._clock()
        current = int(now)
        with self._lock:
            t = self._tenants.get(tenant) or _Tenant()
            series = []
            for second_t in range(current - SERIES_S + 1, current + 1):
                s = t.seconds.get(second_t)
                if s is None:
                    series.append(_point(second_t, 0, 0, [None, None]))
                    continue
                quantiles = s.quantiles
                if quantiles is None:
                    quantiles = s.latency.quantiles(0.5, 0.99)
                    if second_t < current:  # a second that is over does not change again
                        s.quantiles = quantiles
                series.append(_point(second_t, s.submitted, s.completed, quantiles))
            hosts: list[dict[str, Any]] = []
            for name, h in t.hosts.items():
                if h.quantiles is None:
                    h.quantiles = h.latency.quantiles(0.5, 0.99)
                p50, p99 = h.quantiles
                hosts.append(
                    {
                        "host": name,
                        "count": h.count,
                        "p50_ms": p50 or 0.0,
                        "p99_ms": p99 or 0.0,
                        "errors": h.errors,
                    }
                )
            hosts.sort(key=lambda h: h["p99_ms"], reverse=True)
            return {
                "now": now,
                "uptime_s": round(now - self._started, 3),
                "counters": {
                    "submitted": t.submitted,
                    "in_flight": max(0, t.submitted - t.completed),
                    "done": dict(t.done),
                    "failed": dict(t.failed),
                    "cancelled": t.cancelled,
                },
                "series": series,
                "slowest_hosts": hosts[:SLOWEST],
                "recent": [dict(e) for e in reversed(t.recent.values())],
            }


def _point(t: int, submitted: int, completed: int, quantiles: list[float | None]) -> dict[str, Any]:
    return {
        "t": t,
        "submitted": submitted,
        "completed": completed,
        "p50_ms": quantiles[0],
        "p99_ms": quantiles[1],
    }
