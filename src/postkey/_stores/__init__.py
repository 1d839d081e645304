"""Stores: where keys, results and cache values live, behind one protocol (`base.Store`).

`memory` is the embedded default (one process); each store is a module of its own here, and a
client gets its store from `open_store`.
"""

from __future__ import annotations

from .._settings import Settings
from .base import MISSING, CacheValue, Store
from .memory import MemoryStore

__all__ = ["MISSING", "CacheValue", "MemoryStore", "Store", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store ``settings`` ask for (today: the in-process memory store)."""
    return MemoryStore(settings)
