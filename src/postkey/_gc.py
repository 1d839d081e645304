"""Garbage collection in the processes postkey owns (``postkey serve``, ``postkey worker``).

A library leaves the collector alone: it belongs to the application. A server process that
postkey starts is its own application, and there the default collector costs a lot: every
request allocates a few hundred objects, so with Python's default young threshold of 700 a
collection ran every few requests and took ~15% of the gateway's event loop (in process, 12.2k
submits/s went to 14.7-15.0k with the threshold at 5,000; the same with collection off).
"""

from __future__ import annotations

import gc

#: Allocations between young collections in postkey's own server processes (Python: 700).
YOUNG_THRESHOLD = 5_000


def tune_for_serving() -> None:
    """Collect young objects less often and keep what start-up made out of every collection.

    Call once, after start-up (the app built, the modules imported): `gc.freeze` moves those
    objects to a generation the collector never scans. Cycles are still collected, in batches
    a few times larger than by default; the older generations keep their thresholds.
    """
    gc.collect()
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
