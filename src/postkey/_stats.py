"""Summaries of many results: counts per state, status class and error kind, latency quantiles."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ._result import Result, State


def quantile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values by nearest rank; 0.0 if there are none."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class Summary:
    """Counts and latencies gathered from Results."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.status_classes: Counter[str] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.latencies_ms: list[float] = []

    def add(self, result: Result) -> None:
        """Count one result."""
        self.states[result.state.value] += 1
        if result.state is State.DONE and result.status is not None:
            self.status_classes[f"{result.status // 100}xx"] += 1
        if result.error_kind is not None:
            self.error_kinds[result.error_kind.value] += 1
        if result.elapsed_ms is not None:
            self.latencies_ms.append(result.elapsed_ms)

    def add_all(self, results: Iterable[Result]) -> Summary:
        """Count many results; returns self."""
        for result in results:
            self.add(result)
        return self

    @property
    def total(self) -> int:
        """Results counted."""
        return sum(self.states.values())

    def percentiles(self) -> dict[str, float]:
        """p50, p95 and p99 latency (submission to result) in ms."""
        values = sorted(self.latencies_ms)
        return {f"p{q}": quantile(values, q / 100) for q in (50, 95, 99)}
