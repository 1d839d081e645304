"""Module-level functions: the same verbs as `Client`, on the default client (made on first use)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ._client import Client
from ._headers import HeadersInput
from ._request import Body
from ._result import Result, State
from ._settings import Settings
from ._stores import CacheValue

_default_lock = threading.Lock()
_default: list[Client] = []


def _reinit_lock_in_child() -> None:
    # Another thread may have held it at fork(); in the child nobody would ever release it.
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_lock_in_child)


def existing_default_client() -> Client | None:
    """The default client if it exists and is open, without creating one."""
    return _default[0] if _default and not _default[0].closed else None


def default_client() -> Client:
    """The client the module-level functions and the MyChat names use, created on first use
    (and again after it was closed, or its engine stopped) with the settings of the
    ``POSTKEY_*`` environment variables (`Settings.from_env`), defaults otherwise.

    A ``POSTKEY_`` variable that names no setting is logged as a WARNING and ignored.

    Raises:
        InvalidValue: a POSTKEY_* setting variable is malformed.
    """
    if not _default or _default[0].closed:
        with _default_lock:
            if not _default or _default[0].closed:
                # The one place the library reads POSTKEY_* variables: so that code written
                # against the module functions or the MyChat names (which use this client) can
                # be pointed at a shared store without a change.
                _default[:] = [Client(Settings.from_env(strict=False))]
    return _default[0]


def request_async(
    method: str,
    url: str,
    body: Body = None,
    headers: HeadersInput = None,
    timeout_ms: int | None = None,
    **options: Any,
) -> str:
    """Submit a request on the default client; see `Client.request_async`."""
    return default_client().request_async(method, url, body, headers, timeout_ms, **options)


def post_async(
    url: str,
    body: Body = None,
    headers: HeadersInput = None,
    timeout_ms: int | None = None,
    **options: Any,
) -> str:
    """Submit a POST on the default client; see `Client.post_async`."""
    return default_client().post_async(url, body, headers, timeout_ms, **options)


def get_async(
    url: str, headers: HeadersInput = None, timeout_ms: int | None = None, **options: Any
) -> str:
    """Submit a GET on the default client; see `Client.get_async`."""
    return default_client().get_async(url, headers, timeout_ms, **options)


def submit_many(requests: Iterable[Mapping[str, Any]]) -> list[str]:
    """Submit many requests on the default client; see `Client.submit_many`."""
    return default_client().submit_many(requests)


def exists(key: str) -> bool:
    """True if ``key`` has a terminal result; see `Client.exists`."""
    return default_client().exists(key)


def status(key: str) -> State:
    """The state of ``key``; see `Client.status`."""
    return default_client().status(key)


def get(key: str, *, take: bool = False) -> Result:
    """What is known of ``key`` now; see `Client.get`."""
    return default_client().get(key, take=take)


def wait(key: str, timeout: float | None = None, *, take: bool = False) -> Result:
    """Block until ``key`` ends or ``timeout`` seconds pass; see `Client.wait`."""
    return default_client().wait(key, timeout, take=take)


def wait_many(
    keys: Iterable[str], timeout: float | None = None, *, take: bool = False
) -> list[Result]:
    """`wait` for several keys; see `Client.wait_many`."""
    return default_client().wait_many(keys, timeout, take=take)


def cancel(key: str) -> bool:
    """Cancel a pending or running request; see `Client.cancel`."""
    return default_client().cancel(key)


def cache_set(key: str, value: CacheValue, ttl_ms: int | None = None) -> None:
    """Store a value in the default client's MemCache; see `Client.cache_set`."""
    default_client().cache_set(key, value, ttl_ms)


def cache_get(key: str, default: Any = None) -> Any:
    """Read a value from the default client's MemCache; see `Client.cache_get`."""
    return default_client().cache_get(key, default)


def cache_exists(key: str) -> bool:
    """True if the MemCache holds ``key``; see `Client.cache_exists`."""
    return default_client().cache_exists(key)


def cache_delete(key: str) -> bool:
    """Remove ``key`` from the MemCache; see `Client.cache_delete`."""
    return default_client().cache_delete(key)


def cache_count() -> int:
    """Live entries in the MemCache; see `Client.cache_count`."""
    return default_client().cache_count()


def cache_clear() -> None:
    """Empty the MemCache; see `Client.cache_clear`."""
    default_client().cache_clear()


def cache_wait(key: str, timeout: float | None = None, default: Any = None) -> Any:
    """Block until the MemCache holds ``key``; see `Client.cache_wait`."""
    return default_client().cache_wait(key, timeout, default)


def close(drain: bool = True, timeout: float | None = None) -> None:
    """Close the default client if it was created (a later call creates a new one); see
    `Client.close`."""
    client = existing_default_client()
    if client is not None:
        client.close(drain, timeout)
