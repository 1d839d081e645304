"""Prometheus metrics (prometheus-client, one registry per gateway): outbound requests by host,
method, status class and error kind, their latency, what is in flight and queued, the cache."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .._result import Result, State
from ._activity import host_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HOSTS = 100  # distinct host labels; later hosts are counted as "other"
#: Methods with a label of their own; any other method token (a client may send any) is counted as
#: "other", so that a caller cannot grow the metrics without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Their "le" labels, as Prometheus writes them ("0.005", "1.0", "+Inf").
_LE = (*(repr(float(bound)) for bound in _LATENCY_BUCKETS), "+Inf")


class Metrics:
    """The gateway's metrics. ``engine_stats`` gives (queued, in flight, cache entries, cache
    bytes, evictions) summed over the gateway's clients, read at each scrape.

    What every submit and every result counts is kept as plain numbers (`_Counts`) and turned
    into Prometheus families when scraped: prometheus-client's own metric objects take a lock
    per update, three per result, ~3 us a submit on the hot path. Rarer counts (refusals,
    long-polls) use prometheus-client directly."""

    def __init__(
        self, engine_stats: Callable[[], tuple[int, int, int | None, int | None, int | None]]
    ):
        self.registry = CollectorRegistry()
        self._hosts: set[str] = set()
        self._hosts_lock = threading.Lock()
        self._counts = _Counts()
        self.long_polls = Gauge(
            "postkey_gateway_long_polls",
            "Long-polls (GET /v1/requests/{key}?wait=) waiting now.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "postkey_gateway_rejected",
            "API calls refused, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(self._counts)
        self.registry.register(_EngineCollector(engine_stats))

    def host_label(self, url: str, host: str | None = None) -> str:
        """``url``'s host (``host`` if the caller has it) as a label, or "other" past
        `MAX_HOSTS` distinct hosts."""
        if host is None:
            host = host_of(url)
        if host in self._hosts:
            return host
        with self._hosts_lock:
            if len(self._hosts) < MAX_HOSTS:
                self._hosts.add(host)
                return host
        return "other"

    def on_submit(self, method: str) -> None:
        """Count an accepted request."""
        self._counts.submitted(method_label(method))

    def on_result(self, method: str, url: str, result: Result, host: str | None = None) -> None:
        """Count a terminal result (of a request to ``url``, whose host the caller may have
        worked out already)."""
        if result.state is State.DONE and result.status is not None:
            status_class, kind = _STATUS_CLASSES[min(max(result.status // 100, 1), 5)], ""
            outcome = status_class
        else:
            status_class = ""
            kind = result.error_kind.value if result.error_kind is not None else "internal"
            outcome = "failed"
        method = method_label(method)
        elapsed = result.elapsed_ms
        self._counts.completed(
            (self.host_label(url, host), method, status_class, kind),
            (method, outcome),
            None if elapsed is None else elapsed / 1000.0,
        )

    def in_flight(self) -> int:
        """Requests submitted through the gateway whose result it has not seen yet."""
        return self._counts.in_flight()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _Counts(Collector):
    """Submits by method; results by (host, method, status class, error kind); their latency
    by (method, outcome) in `_LATENCY_BUCKETS`. Labels are bounded by their callers (hosts,
    methods, status classes, error kinds)."""

    def __init__(self) -> None:
        # Submits are counted on the event loop, results on the engines' threads.
        self._lock = threading.Lock()
        self._submitted: dict[str, int] = {}
        self._completed: dict[tuple[str, str, str, str], int] = {}
        self._ended = 0
        # When each series was first counted: Prometheus's "_created" samples.
        self._created: dict[tuple[str, ...], float] = {}
        # (method, outcome) -> [count per bucket (the last: past every bound), sum of seconds]
        self._latency: dict[tuple[str, str], list[Any]] = {}

    def submitted(self, method: str) -> None:
        with self._lock:
            count = self._submitted.get(method)
            if count is None:
                count = 0
                self._created[("submitted", method)] = time.time()
            self._submitted[method] = count + 1

    def completed(
        self, labels: tuple[str, str, str, str], latency: tuple[str, str], seconds: float | None
    ) -> None:
        with self._lock:
            count = self._completed.get(labels)
            if count is None:
                count = 0
                self._created[labels] = time.time()
            self._completed[labels] = count + 1
            self._ended += 1
            if seconds is not None:
                series = self._latency.get(latency)
                if series is None:
                    series = self._latency[latency] = [[0] * (len(_LATENCY_BUCKETS) + 1), 0.0]
                    self._created[latency] = time.time()
                series[0][bisect_left(_LATENCY_BUCKETS, seconds)] += 1
                series[1] += seconds

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._submitted.values()) - self._ended

    def collect(self) -> Iterable[Any]:
        with self._lock:
            submitted_now = dict(self._submitted)
            completed = dict(self._completed)
            in_flight = sum(self._submitted.values()) - self._ended
            latency = {k: ([*v[0]], v[1]) for k, v in self._latency.items()}
            created = dict(self._created)
        submitted = CounterMetricFamily(
            "postkey_requests_submitted", "Requests accepted by the gateway.", labels=["method"]
        )
        for method, count in sorted(submitted_now.items()):
            submitted.add_metric([method], count, created=created[("submitted", method)])
        yield submitted
        done = CounterMetricFamily(
            "postkey_requests_completed",
            "Requests that ended, by destination host, method, status class (done) and error"
            " kind (failed).",
            labels=["host", "method", "status_class", "error_kind"],
        )
        for names, count in sorted(completed.items()):
            done.add_metric(list(names), count, created=created[names])
        yield done
        histogram = HistogramMetricFamily(
            "postkey_request_duration_seconds",
            "From submit to result, by method and outcome.",
            labels=["method", "outcome"],
        )
        for pair, (counts, total) in sorted(latency.items()):
            cumulative, buckets = 0, []
            for le, count in zip(_LE, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            histogram.add_metric(list(pair), buckets, total)
            labels = {"method": pair[0], "outcome": pair[1]}
            histogram.samples.append(Sample(f"{histogram.name}_created", labels, created[pair]))
        yield histogram
        yield GaugeMetricFamily(
            "postkey_gateway_in_flight",
            "Requests this gateway submitted whose result it has not seen yet.",
            value=in_flight,
        )


def method_label(method: str) -> str:
    """``method`` as a label: one of `METHODS`, or "other"."""
    return method if method in METHODS else "other"


class _EngineCollector(Collector):
    def __init__(
        self, stats: Callable[[], tuple[int, int, int | None, int | None, int | None]]
    ) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Any]:
        queued, in_flight, entries, size, evictions = self._stats()
        yield GaugeMetricFamily(
            "postkey_queue_depth", "Requests waiting in this gateway's engines.", value=queued
        )
        yield GaugeMetricFamily(
            "postkey_transfers_in_flight", "Transfers on the wire in this gateway.", value=in_flight
        )
        if entries is not None:
            yield GaugeMetricFamily(
                "postkey_cache_entries", "Live entries in the memory cache.", value=entries
            )
        if size is not None:
            yield GaugeMetricFamily(
                "postkey_cache_bytes", "Approximate bytes held by the memory cache.", value=size
            )
        if evictions is not None:
            yield CounterMetricFamily(
                "postkey_cache_evictions",
                "Entries evicted from the memory cache under its bounds.",
                value=evictions,
            )
