"""A sparse log-scale latency histogram: buckets about 9 % wide, O(1) to add, quantiles by
walking the few buckets in use."""

from __future__ import annotations

import math

_BASE: float = 2 ** (1 / 8)
_LOG_BASE = math.log(_BASE)
_FLOOR_MS = 0.01  # anything faster lands in the first bucket


def bucket_of(ms: float) -> int:
    """The bucket a latency in milliseconds falls in."""
    if not ms > _FLOOR_MS:  # also NaN
        return 0
    return int(math.log(ms / _FLOOR_MS) / _LOG_BASE) + 1


def value_of(bucket: int) -> float:
    """A bucket's representative latency: its geometric middle, in ms, rounded to 3 digits."""
    if bucket <= 0:
        return _FLOOR_MS
    return round(_FLOOR_MS * float(_BASE ** (bucket - 0.5)), 3)


class Histogram:
    """Counts of latencies by bucket."""

    __slots__ = ("count", "counts")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0

    def add(self, ms: float) -> None:
        """Count one latency."""
        bucket = bucket_of(ms)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1

    def quantiles(self, *qs: float) -> list[float | None]:
        """The latencies at the given quantiles (0..1), None when nothing was counted."""
        if not self.count:
            return [None for _ in qs]
        ordered = sorted(self.counts.items())
        out: list[float | None] = []
        for q in qs:
            rank = max(1, math.ceil(q * self.count))
            seen = 0
            for bucket, n in ordered:
                seen += n
                if seen >= rank:
                    out.append(value_of(bucket))
                    break
        return out
