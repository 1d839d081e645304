"""A plain redis-py client on a store URL, for tests that look inside Redis (one or a Cluster)."""

from __future__ import annotations

from typing import Any

import redis


def spy_client(url: str) -> Any:
    """``redis.Redis`` for a ``redis://`` URL, ``redis.RedisCluster`` for ``redis+cluster://``."""
    scheme, sep, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        return redis.RedisCluster.from_url(scheme.removesuffix("+cluster") + sep + rest)
    return redis.Redis.from_url(url)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].endswith("+cluster")
