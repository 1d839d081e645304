"""The store contract: every store passes these tests unchanged (see `_stores/base.Store`).

They talk to a store the way a client and its engine do, with real time (short TTLs) so that a
store in another process (Redis) can run them too. A new store joins by adding itself to the
``store`` fixture's params.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from postkey import InvalidValue, KeyConflict, Result, State
from postkey._job import Job
from postkey._request import build_request
from postkey._result import ErrorKind
from postkey._settings import Settings
from postkey._stores import MISSING, Store, open_store

StoreFactory = Callable[..., Store]


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds stores of one kind with the given settings overrides (for Redis: a server of the
    test session's own, and a prefix of each test's own)."""
    made: list[Store] = []
    base: dict[str, object] = {}
    if request.param != "memory":
        url = request.getfixturevalue(
            f"{'single' if request.param == 'redis' else 'cluster'}_redis_url"
        )
        base = {"store": url, "store_prefix": f"t{uuid.uuid4().hex[:12]}"}

    def make(**overrides: object) -> Store:
        store = open_store(Settings().replace(**{**base, **overrides}))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


def new_job(
    key: str, body: bytes = b"hello", *, caller: bool = False, ttl_ms: int | None = None
) -> Job:
    request = build_request(
        "POST",
        "http://127.0.0.1:9/x",
        body,
        None,
        5000,
        max_timeout_ms=60_000,
        max_body_bytes=1 << 20,
    )
    job = Job(key, request, ttl_ms=ttl_ms)
    if caller:
        job.fingerprint = request.fingerprint()
    return job


def response(job: Job, body: bytes = b"\x00\xffbinary\r\n", status: int = 200) -> Result:
    raw = f"HTTP/1.1 {status} OK\r\nContent-Type: application/octet-stream\r\nX-A: 1\r\nX-A: 2\r\n"
    return Result(
        job.key,
        State.DONE,
        status=status,
        raw_head=raw.encode(),
        body=body,
        timings=(1.0, 2.0, 3.0, 4.0, 5.0),
        submitted_at=time.time() - 0.01,
        finished_at=time.time(),
        attempts=1,
        url=job.request.url,
    )


# -- keys and their states ------------------------------------------------------------------


def test_a_key_is_unknown_then_pending_then_its_result(store: Store) -> None:
    job = new_job("k1")
    unknown = store.lookup("k1")
    assert unknown.state is State.UNKNOWN and unknown.error
    assert store.register(job, caller_key=False)
    assert store.lookup("k1").state is State.PENDING
    assert store.job("k1") is job
    store.finish(job, response(job))
    found = store.lookup("k1")
    assert found.state is State.DONE and store.job("k1") is None
    assert found.body == b"\x00\xffbinary\r\n"  # exact bytes
    assert found.status == 200 and found.headers.get_list("x-a") == ["1", "2"]
    assert found.timings is not None and found.timings.total_ms == 5.0
    assert found.url == "http://127.0.0.1:9/x" and found.attempts == 1
    assert found.elapsed_ms is not None and found.elapsed_ms >= 0
    assert store.cache_exists("k1") and isinstance(store.cache_get("k1"), Result)


def test_a_failure_is_stored_with_its_kind_and_message(store: Store) -> None:
    job = new_job("k-failed")
    store.register(job, caller_key=False)
    store.finish(job, job.failure(ErrorKind.DNS, "could not resolve host example.invalid"))
    found = store.lookup("k-failed")
    assert found.state is State.FAILED and found.error_kind is ErrorKind.DNS
    assert found.error == "could not resolve host example.invalid"


def test_the_first_terminal_result_wins(store: Store) -> None:
    job = new_job("k-once")
    store.register(job, caller_key=False)
    store.finish(job, response(job, b"first"))
    store.finish(job, response(job, b"second"))
    assert store.lookup("k-once").body == b"first"


def test_a_result_expires_to_expired_then_its_ttl_passes(store: Store) -> None:
    job = new_job("k-ttl", ttl_ms=150)
    store.register(job, caller_key=False)
    store.finish(job, response(job))
    assert store.lookup("k-ttl").state is State.DONE
    time.sleep(0.3)
    assert store.lookup("k-ttl").state is State.EXPIRED
    assert not store.cache_exists("k-ttl")


# -- caller keys -----------------------------------------------------------------------------


def test_a_caller_key_is_idempotent_and_refuses_another_request(store: Store) -> None:
    first = new_job("order-1", caller=True)
    assert store.register(first, caller_key=True)
    assert not store.register(new_job("order-1", caller=True), caller_key=True)  # pending
    store.finish(first, response(first))
    assert not store.register(new_job("order-1", caller=True), caller_key=True)  # finished
    with pytest.raises(KeyConflict):
        store.register(new_job("order-1", b"other", caller=True), caller_key=True)
    with pytest.raises(KeyConflict):
        store.cache_set("order-1", "overwrite", None)
    assert store.lookup("order-1").body == b"\x00\xffbinary\r\n"


def test_a_cache_value_and_a_request_cannot_share_a_key(store: Store) -> None:
    store.cache_set("taken", "value", None)
    with pytest.raises(KeyConflict):
        store.register(new_job("taken", caller=True), caller_key=True)
    pending = new_job("busy")
    store.register(pending, caller_key=False)
    with pytest.raises(KeyConflict):
        store.cache_set("busy", "value", None)
    store.finish(pending, response(pending))


# -- waiting ---------------------------------------------------------------------------------


def test_a_waiter_is_woken_by_finish(store: Store) -> None:
    job = new_job("k-wait")
    store.register(job, caller_key=False)
    got: list[Result] = []
    waiter = threading.Thread(target=lambda: got.append(store.wait("k-wait", 10)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    store.finish(job, response(job))
    waiter.join(5)
    assert got and got[0].state is State.DONE
    assert time.monotonic() - started < 1.0


def test_waits_return_what_is_known_at_their_timeout(store: Store) -> None:
    job = new_job("k-slow")
    store.register(job, caller_key=False)
    started = time.monotonic()
    assert store.wait("k-slow", 0.1).state is State.PENDING
    assert 0.09 <= time.monotonic() - started < 1.0
    assert store.wait("never", None).state is State.UNKNOWN  # at once, not forever
    store.finish(job, response(job))


def test_wait_many_keeps_the_keys_order_and_takes_duplicates(store: Store) -> None:
    jobs = [new_job(f"m{i}") for i in range(5)]
    for job in jobs:
        store.register(job, caller_key=False)
    threading.Timer(
        0.05, lambda: [store.finish(j, response(j, j.key.encode())) for j in jobs]
    ).start()
    keys = ["m3", "m0", "nope", "m3", "m4", "m1", "m2"]
    results = store.wait_many(keys, 5)
    assert [r.key for r in results] == keys
    assert [r.body for r in results if r.state is State.DONE] == [
        b"m3",
        b"m0",
        b"m3",
        b"m4",
        b"m1",
        b"m2",
    ]
    with pytest.raises(InvalidValue):
        store.wait_many(["m0"], -1)


def test_watch_wakes_once_and_unwatch_leaves_nothing(store: Store) -> None:
    a, b = new_job("w-a"), new_job("w-b")
    store.register(a, caller_key=False)
    store.register(b, caller_key=False)
    woken: list[str] = []

    def boom(_result: Result) -> None:
        raise RuntimeError("a waiter that raises")

    found, unwatch_boom = store.watch("w-a", boom)
    assert found is None and unwatch_boom is not None
    found, unwatch_a = store.watch("w-a", lambda r: woken.append(r.key))
    assert found is None and unwatch_a is not None
    found, unwatch_b = store.watch("w-b", lambda r: woken.append(r.key))
    assert unwatch_b is not None
    unwatch_b()
    store.finish(a, response(a))
    store.finish(b, response(b))
    deadline = time.monotonic() + 2
    while not woken and time.monotonic() < deadline:
        time.sleep(0.01)
    assert woken == ["w-a"]  # the raising waiter did not stop it; the unwatched one stayed quiet
    settled, none = store.watch("w-a", lambda r: woken.append("again"))
    assert none is None and settled is not None and settled.state is State.DONE


# -- the general cache -----------------------------------------------------------------------


def test_cache_values_round_trip_and_expire(store: Store) -> None:
    store.cache_set("text", "héllo", None)
    store.cache_set("raw", b"\x00\xff", 150)
    assert store.cache_get("text") == "héllo" and store.cache_get("raw") == b"\x00\xff"
    assert store.cache_get("none", "dflt") == "dflt"
    assert store.cache_count() == 2 and store.cache_exists("raw")
    time.sleep(0.3)
    assert not store.cache_exists("raw") and store.cache_get("raw") is None
    assert store.cache_delete("text") and not store.cache_delete("text")
    store.cache_set("again", "x", None)
    store.cache_clear()
    assert store.cache_count() == 0


@pytest.mark.parametrize("value", [5, None, ["x"]])
def test_cache_values_must_be_text_or_bytes(store: Store, value: object) -> None:
    with pytest.raises(InvalidValue):
        store.cache_set("v", value, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True, 10**15])
def test_cache_ttls_are_checked(store: Store, ttl: object) -> None:
    with pytest.raises(InvalidValue):
        store.cache_set("v", "x", ttl)  # type: ignore[arg-type]


def test_cache_wait_and_watch(store: Store) -> None:
    threading.Timer(0.05, store.cache_set, ("soon", "here", None)).start()
    assert store.cache_wait("soon", 5) == "here"
    assert store.cache_wait("never", 0.05, "dflt") == "dflt"
    seen: list[object] = []
    assert store.cache_watch("later", seen.append) is MISSING
    store.cache_unwatch("later", seen.append)
    store.cache_set("later", "v", None)
    assert seen == []
    assert store.cache_watch("later", seen.append) == "v"
