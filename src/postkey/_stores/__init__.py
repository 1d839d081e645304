"""Stores: where keys, results and cache values live, behind one protocol (`base.Store`).

`memory` is the embedded default (one process); each store is a module of its own here, and a
client gets its store from `open_store`.
"""

from __future__ import annotations

from .._errors import InvalidValue
from .._settings import Settings
from .base import MISSING, STORE_DOWN, CacheValue, QueueingStore, Store
from .memory import MemoryStore

__all__ = [
    "MISSING",
    "STORE_DOWN",
    "CacheValue",
    "MemoryStore",
    "QueueingStore",
    "Store",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The store ``settings.store`` names: the in-process memory store, or Redis.

    Raises:
        InvalidValue: a Redis URL without the redis extra installed, or a malformed URL.
        StoreUnavailable: Redis did not answer.
    """
    if settings.store == "memory://":
        return MemoryStore(settings)
    try:
        from .redis import RedisStore  # noqa: PLC0415  # redis-py is optional: import on use
    except ImportError as exc:  # redis-py is the extra postkey[redis]
        raise InvalidValue(
            f"store {settings.store.partition('://')[0]}:// needs redis-py: pip install"
            f" 'postkey[redis]' ({exc})"
        ) from None
    return RedisStore(settings)
