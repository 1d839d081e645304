"""Idempotency keys: remembered for their whole documented time, whatever the cache pressure, and
bounded by refusing new ones rather than forgetting old ones."""

from __future__ import annotations

import pytest

from postkey import IdempotencyKeysFull, KeyConflict, Result, State
from postkey._job import Job
from postkey._request import build_request
from postkey._settings import Settings
from postkey._stores.memory import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job_for(key: str, body: bytes = b"pay 10", *, caller_key: bool = True) -> Job:
    request = build_request(
        "POST",
        "http://127.0.0.1:9/pay",
        body,
        None,
        5000,
        max_timeout_ms=60_000,
        max_body_bytes=1024,
    )
    job = Job(key, request)
    if caller_key:
        job.fingerprint = request.fingerprint()
    return job


def done(job: Job) -> Result:
    return Result(job.key, State.DONE, status=200, body=b"paid")


def test_an_idempotency_key_outlives_cache_and_tombstone_pressure_for_its_whole_time() -> None:
    clock = FakeClock()
    settings = Settings(
        result_ttl_ms=10_000,
        tombstone_ttl_ms=20_000,
        cache_max_entries=5,
        cache_max_bytes=64 * 1024,
        max_tombstone_bytes=16 * 1024,
    )
    store = MemoryStore(settings, clock=clock)
    first = job_for("order-42")
    assert store.register(first, caller_key=True)
    store.finish(first, done(first))
    remembered_until = clock.now + 10 + 20  # result TTL + tombstone TTL
    # Cache pressure evicts the result at once; thousands of plain tombstones follow it.
    for i in range(5000):
        store.cache_set(f"filler-{i}", "x" * 200, ttl_ms=1)
    assert store.cache_get("order-42") is None
    round_ = 0
    while clock.now < remembered_until - 0.5:
        # The same request under the same key: nothing is sent again.
        assert store.register(job_for("order-42"), caller_key=True) is False
        with pytest.raises(KeyConflict):
            store.register(job_for("order-42", b"pay 20"), caller_key=True)
        assert store.lookup("order-42").state is State.EXPIRED
        for i in range(500):
            store.cache_set(f"more-{round_}-{i}", "x" * 200, ttl_ms=1)
        store.tick()
        clock.now += 1.0
        round_ += 1
    clock.now = remembered_until + 0.001
    store.tick()
    assert store.lookup("order-42").state is State.UNKNOWN
    assert store.register(job_for("order-42"), caller_key=True) is True  # forgotten, as documented


def test_cache_set_cannot_overwrite_a_remembered_idempotency_key() -> None:
    clock = FakeClock()
    store = MemoryStore(Settings(result_ttl_ms=1000), clock=clock)
    job = job_for("order-7")
    store.register(job, caller_key=True)
    store.finish(job, done(job))
    clock.now += 1.5  # the result expired; the key is still remembered
    with pytest.raises(KeyConflict):
        store.cache_set("order-7", "value", None)
    assert store.register(job_for("order-7"), caller_key=True) is False


def test_submits_are_refused_rather_than_forgetting_keys_past_max_idempotency_keys() -> None:
    clock = FakeClock()
    settings = Settings(max_idempotency_keys=3, result_ttl_ms=1000, tombstone_ttl_ms=1000)
    store = MemoryStore(settings, clock=clock)
    jobs = [job_for(f"k{i}") for i in range(3)]
    for job in jobs:
        assert store.register(job, caller_key=True)
    store.finish(jobs[0], done(jobs[0]))  # pending or finished, a key counts until forgotten
    with pytest.raises(IdempotencyKeysFull, match="max_idempotency_keys"):
        store.register(job_for("k3"), caller_key=True)
    assert store.lookup("k3").state is State.UNKNOWN  # nothing half-registered
    assert store.register(job_for("random", caller_key=False), caller_key=False)  # not counted
    assert store.register(job_for("k0"), caller_key=True) is False  # a remembered key answers
    clock.now += 2.001  # k0's result TTL and tombstone TTL have passed
    store.tick()
    assert store.register(job_for("k3"), caller_key=True)
