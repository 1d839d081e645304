"""Prometheus metrics (prometheus-client, one registry per gateway): outbound requests by host,
method, status class and error kind, their latency, what is in flight and queued, the cache."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .._result import Result, State
from ._activity import host_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HOSTS = 100  # distinct host labels; later hosts are counted as "other"
#: Methods with a label of their own; any other method token (a client may send any) is counted as
#: "other", so that a caller cannot grow the metrics without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's metrics. ``engine_stats`` gives (queued, in flight, cache entries, cache
    bytes, evictions) summed over the gateway's clients, read at each scrape."""

    def __init__(
        self, engine_stats: Callable[[], tuple[int, int, int | None, int | None, int | None]]
    ):
        self.registry = CollectorRegistry()
        self._hosts: set[str] = set()
        self._hosts_lock = threading.Lock()
        self.submitted = Counter(
            "postkey_requests_submitted",
            "Requests accepted by the gateway.",
            ["method"],
            registry=self.registry,
        )
        self.completed = Counter(
            "postkey_requests_completed",
            "Requests that ended, by destination host, method, status class (done) and error"
            " kind (failed).",
            ["host", "method", "status_class", "error_kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "postkey_request_duration_seconds",
            "From submit to result, by method and outcome.",
            ["method", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "postkey_gateway_in_flight",
            "Requests this gateway submitted whose result it has not seen yet.",
            registry=self.registry,
        )
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
        self.registry.register(_EngineCollector(engine_stats))
        self._submitted_by_method: dict[str, Any] = {}
        self._completed_children: dict[tuple[str, str, str, str], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}

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
        counter = self._submitted_by_method.get(method)
        if counter is None:  # labels() costs a few us: its few children are kept, by method
            counter = self.submitted.labels(method_label(method))
            if len(self._submitted_by_method) < 64:
                self._submitted_by_method[method] = counter
        counter.inc()
        self.in_flight.inc()

    def on_result(self, method: str, url: str, result: Result, host: str | None = None) -> None:
        """Count a terminal result (of a request to ``url``, whose host the caller may have
        worked out already)."""
        self.in_flight.dec()
        if result.state is State.DONE and result.status is not None:
            status_class, kind = _STATUS_CLASSES[min(max(result.status // 100, 1), 5)], ""
            outcome = status_class
        else:
            status_class = ""
            kind = result.error_kind.value if result.error_kind is not None else "internal"
            outcome = "failed"
        method = method_label(method)
        # labels() costs a few microseconds per call: the children are kept (they are bounded as
        # the labels are: hosts, methods, status classes, error kinds).
        names = (self.host_label(url, host), method, status_class, kind)
        counter = self._completed_children.get(names)
        if counter is None:
            counter = self._completed_children[names] = self.completed.labels(*names)
        counter.inc()
        if result.elapsed_ms is not None:
            latency = self._latency_children.get((method, outcome))
            if latency is None:
                latency = self.latency.labels(method, outcome)
                self._latency_children[(method, outcome)] = latency
            latency.observe(result.elapsed_ms / 1000.0)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


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
