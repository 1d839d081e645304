"""Per-tenant rate limits: a token bucket for each tenant, in this gateway process."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ._errors import ApiError
from ._tenants import Tenant


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Takes tokens from a tenant's bucket (``rate_per_s`` refilled, ``burst`` at most), or says
    how long until there are enough. Used from the event loop's thread only: no lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant: Tenant, count: int = 1) -> None:
        """Take ``count`` tokens for ``tenant`` (nothing to take when it has no limit).

        Raises:
            ApiError: 429 with Retry-After (whole seconds) when the bucket has too few; 422 when
                ``count`` is more than the bucket ever holds.
        """
        rate = tenant.rate_per_s
        if rate <= 0:
            return
        burst = max(tenant.burst, 1)
        if count > burst:
            raise ApiError(
                422, f"{count} requests at once is more than this API key's burst of {burst}"
            )
        now = self._clock()
        bucket = self._buckets.get(tenant.name)
        if bucket is None:
            bucket = self._buckets[tenant.name] = _Bucket(float(burst), now)
        else:
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
        if bucket.tokens >= count:
            bucket.tokens -= count
            return
        wait = (count - bucket.tokens) / rate
        raise ApiError(
            429,
            f"rate limit of {rate:g} requests/s for this API key reached; retry in {wait:.2f} s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
