"""A Redis client made the way every postkey part needs it: bounded in time, never hanging."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .._errors import InvalidValue
from .._settings import Settings


def connect(settings: Settings) -> redis.Redis:
    """A client for ``settings.store``: every call has a socket timeout (store_timeout_ms) and
    one retry after a short backoff, so a Redis that is down fails a call within about twice
    the timeout, never hangs it.

    Raises:
        InvalidValue: a malformed URL.
    """
    timeout_s = settings.store_timeout_ms / 1000.0
    try:
        return redis.Redis.from_url(
            settings.store,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise InvalidValue(f"store URL {settings.store!r}: {exc}") from None


def redacted_url(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
