"""Races between waiting and finishing on the memory store, driven hard with real jobs."""

from __future__ import annotations

import sys
import threading
import time

from postkey import Result, State
from postkey._job import Job
from postkey._request import build_request
from postkey._settings import Settings
from postkey._stores.memory import MemoryStore

ENDED = (State.DONE, State.FAILED, State.EXPIRED, State.UNKNOWN)


def test_no_waiter_hangs_when_a_result_is_stored_and_gone_before_the_waiter_registers() -> None:
    # A result larger than the cache's byte bound is evicted by the very write that stores it,
    # and its tombstone lives 1 ms: the key ends and vanishes in one step, the widest window for
    # a waiter that saw it pending to register for a value that will never come.
    store = MemoryStore(
        Settings(cache_max_entries=1, cache_max_bytes=1, result_ttl_ms=1, tombstone_ttl_ms=1)
    )
    request = build_request(
        "GET", "http://127.0.0.1:9/", None, None, 5000, max_timeout_ms=60_000, max_body_bytes=1024
    )
    current = [""]
    stop = threading.Event()
    hung: list[str] = []
    wrong: list[Result] = []
    waits = [0]

    def waiter() -> None:
        while not stop.is_set():
            key = current[0]
            started = time.monotonic()
            result = store.wait(key, 2.0)
            waits[0] += 1
            if time.monotonic() - started > 1.5:
                hung.append(key)  # every key ends within microseconds: a wake-up was lost
                return
            if result.state not in ENDED:
                wrong.append(result)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=waiter) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 3.0
        for i in range(5000):
            job = Job(f"r{i}", request)
            store.register(job, caller_key=False)
            current[0] = job.key
            for _ in range(i % 4):
                time.sleep(0)  # let the waiters in at varying points
            store.finish(job, Result(job.key, State.DONE, status=200))
            if hung or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        sys.setswitchinterval(previous)
    assert not hung, f"a waiter missed the end of {hung}"
    assert not wrong
    assert waits[0] > 1000  # the race was really exercised
    assert store.cache._waiters == {} and not store._jobs
