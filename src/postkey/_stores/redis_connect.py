"""A Redis client made the way every postkey part needs it: bounded in time, never hanging.

One Redis (``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster (``redis+cluster://``,
``rediss+cluster://`` and the address of any of its nodes). The few calls whose form differs on a
Cluster (reads of keys in many slots, script calls in a pipeline) are made here, so the rest of
the store never asks which it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

from .._errors import InvalidValue, StoreUnavailable
from .._settings import Settings

CLUSTER_SUFFIX = "+cluster"

#: What a call raises when the store, or on a Cluster the node holding a key, does not answer.
#: redis-py raises its bare RedisClusterException when no node of a Cluster answers (its other
#: uses, such as keys of several slots in one command, are mistakes postkey does not make:
#: every command's keys share a slot, which the Cluster tests check).
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    # What answered is not a Redis (an HTTP server on that port, say), or the stream broke.
    redis.exceptions.InvalidResponse,
    redis.TimeoutError,
    ClusterDownError,
    SlotNotCoveredError,
    RedisClusterException,
)
#: A Redis that answers but will not write: full under noeviction (OOM), a read-only replica.
REFUSED_WRITE: tuple[type[Exception], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)
#: Everything talking to the store may raise (redis-py's Cluster errors are not RedisErrors).
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://``."""
    return url.partition("://")[0].endswith(CLUSTER_SUFFIX)


def connect(settings: Settings) -> Any:
    """A client for ``settings.store``: every call has a socket timeout (store_timeout_ms) and
    one retry after a short backoff, so a Redis that is down fails a call within about twice
    the timeout, never hangs it. For a Cluster, a `redis.RedisCluster`, which asks the node
    named in the URL for the others (and so talks to the network at once).

    Raises:
        InvalidValue: a malformed URL.
        StoreUnavailable: a Cluster whose nodes did not answer.
    """
    timeout_s = settings.store_timeout_ms / 1000.0
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        # RESP2: redis-py 8 speaks RESP3 by default, where each pub/sub message goes through
        # its push-handler path (a logger looked up per message): 20-26 us of CPU a message
        # against 10-16 us in RESP2, measured. postkey needs nothing RESP3 adds.
        "protocol": 2,
    }
    url = settings.store
    _check_url(url)
    try:
        if not is_cluster_url(url):
            return redis.Redis.from_url(
                url,
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                health_check_interval=30,
                **common,
            )
        scheme, sep, rest = url.partition("://")
        return redis.RedisCluster.from_url(
            scheme.removesuffix(CLUSTER_SUFFIX) + sep + rest,
            **common,
        )
    except ValueError as exc:
        raise InvalidValue(f"store URL {redacted_url(url)!r}: {exc}") from None
    except UNAVAILABLE as exc:
        if "cluster mode is not enabled" in str(exc).lower():
            raise InvalidValue(
                f"store URL {redacted_url(url)!r}: this Redis is not a Cluster: use {_plain(url)!r}"
            ) from None
        raise StoreUnavailable(f"the store {redacted_url(url)} did not answer: {exc}") from None


#: Options a store URL may carry, for redis-py (``?name=value``). Not those postkey sets itself
#: (timeouts, retries, health checks, the protocol: see `connect`), which would undo its bounds.
URL_OPTIONS = frozenset(
    {
        "db",
        "max_connections",
        "socket_keepalive",
        "socket_read_size",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_password",
    }
)


def _check_url(url: str) -> None:
    """What redis-py would take silently or fail on later, refused now with what is wrong.

    Raises:
        InvalidValue: an option that is not one of `URL_OPTIONS`, or a database that is not a
            number.
    """
    scheme, sep, rest = url.partition("://")
    try:
        parts = urlsplit(scheme.removesuffix(CLUSTER_SUFFIX) + sep + rest)
        options = parse_qs(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidValue(f"store URL {redacted_url(url)!r}: {exc}") from None
    unknown = sorted(set(options) - URL_OPTIONS)
    if unknown:
        raise InvalidValue(
            f"store URL {redacted_url(url)!r}: unknown or reserved option {unknown[0]!r}"
            f" (a store URL may set {', '.join(sorted(URL_OPTIONS))}; timeouts are"
            " store_timeout_ms)"
        )
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if database and not (database.isascii() and database.isdigit()):
        raise InvalidValue(
            f"store URL {redacted_url(url)!r}: the database must be a number, not {database!r}"
        )


def check_not_a_cluster_node(client: Any, url: str) -> None:
    """For a single-Redis URL: refuse a node of a Redis Cluster, which holds only some of the
    slots (every other key would answer MOVED), naming the URL to use instead.

    Raises:
        InvalidValue: ``url`` names a Cluster node.
        redis.ConnectionError, redis.TimeoutError: the store did not answer.
    """
    if is_cluster(client):
        return
    try:
        info = client.info("cluster")
    except redis.ResponseError:  # INFO not allowed (an ACL): nothing to tell
        return
    if info.get("cluster_enabled"):
        scheme, sep, rest = redacted_url(url).partition("://")
        raise InvalidValue(
            f"store URL {redacted_url(url)!r} names a node of a Redis Cluster: use"
            f" {scheme + CLUSTER_SUFFIX + sep + rest!r}"
        )


def _plain(url: str) -> str:
    scheme, sep, rest = redacted_url(url).partition("://")
    return scheme.removesuffix(CLUSTER_SUFFIX) + sep + rest


def is_cluster(client: Any) -> bool:
    """True if ``client`` talks to a Redis Cluster."""
    return isinstance(client, redis.RedisCluster)


def mget(client: Any, keys: list[str]) -> list[Any]:
    """GET of many keys in one round trip per node (on a Cluster, keys of many slots)."""
    if is_cluster(client):
        return list(client.mget_nonatomic(keys))
    return list(client.mget(keys))


def evalsha(pipe: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue a script call on ``pipe`` (redis-py's cluster pipeline refuses its ``evalsha``
    method, but routes the command itself by the script's first key)."""
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def disconnect(client: Any) -> None:
    """Close ``client``'s connections. A later call opens new ones, as a closed ``redis.Redis``
    does (a client's results stay readable after it closed); a closed ``RedisCluster`` would
    forget its nodes instead, so its pools are only disconnected."""
    if is_cluster(client):
        client.disconnect_connection_pools()
    else:
        # Not the connections in use: a wait that close() just woke may be reading on one
        # (closed under it, redis-py raised a TypeError from deep in its parser). Those are
        # closed when the pool is collected.
        client.connection_pool.disconnect(inuse_connections=False)


def redacted_url(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
