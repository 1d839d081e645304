"""Waiting on the memory store: bad waiters cannot stop delivery, bad timeouts are refused up
front, and an interrupted wait leaves nothing registered."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from postkey import AsyncClient, Client, ErrorKind, InvalidValue, Result, State
from postkey._job import Job
from postkey._request import build_request
from postkey._settings import Settings
from postkey._stores.memory import MemoryStore

BAD_TIMEOUTS = [
    math.inf,
    -math.inf,
    math.nan,
    -1,
    -0.001,
    31 * 86_400 + 1,
    10**10,
    "1",
    b"1",
    True,
    False,
    [1],
]


def pending_job(store: MemoryStore, key: str) -> Job:
    request = build_request(
        "GET", "http://127.0.0.1:9/", None, None, 5000, max_timeout_ms=60_000, max_body_bytes=1024
    )
    job = Job(key, request)
    assert store.register(job, caller_key=False)
    return job


def no_waiters(store: MemoryStore, *jobs: Job) -> bool:
    return store.cache._waiters == {} and not any(getattr(j, "waiters", None) for j in jobs)


# -- a waiter that cannot be woken ---------------------------------------------------------------


def test_a_waiter_on_a_closed_event_loop_does_not_stop_delivery(hostile: str) -> None:
    finished: list[Result] = []
    ended = threading.Event()

    def on_done(result: Result) -> None:
        finished.append(result)
        ended.set()

    dead = asyncio.new_event_loop()
    dead.close()
    with Client() as client:
        key = client.get_async(hostile + "/hold", timeout_ms=5000, on_done=on_done)

        def wake(result: Result) -> None:
            dead.call_soon_threadsafe(print, result)  # raises: the loop is closed

        found, _unwatch = client._store.watch(key, wake)
        assert found is None  # registered first, so it is woken first
        result = client.wait(key, 5)
        assert result.state is State.DONE and result.status == 200
        assert client.status(key) is State.DONE
        assert ended.wait(5)
        assert [r.key for r in finished] == [key]
        # The engine is unharmed: the next request goes through.
        assert client.wait(client.get_async(hostile + "/hold", timeout_ms=5000), 5).status == 200


def test_an_async_wait_on_a_closed_loop_is_dropped_quietly(
    hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def start_waiting(client: AsyncClient, key: str) -> asyncio.Task[Result]:
        task = asyncio.get_running_loop().create_task(client.wait(key))
        await asyncio.sleep(0.01)  # the task is now parked in the store
        return task

    client = AsyncClient()
    try:
        key = asyncio.run(client.get_async(hostile + "/hold", timeout_ms=5000))
        dead = asyncio.new_event_loop()
        task = dead.run_until_complete(start_waiting(client, key))
        dead.close()  # with the wait still pending on it
        with caplog.at_level(logging.ERROR, logger="postkey"):
            result = asyncio.run(client.wait(key, 5))
        assert result.state is State.DONE and client.status(key) is State.DONE
        assert not [r for r in caplog.records if r.name.startswith("postkey")]
        assert not task.done()
        task._log_destroy_pending = False  # left pending on purpose: no warning when collected
    finally:
        asyncio.run(client.aclose(drain=False))


# -- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_a_bad_wait_timeout_is_refused_before_any_waiter_is_registered(timeout: object) -> None:
    store = MemoryStore(Settings())
    job = pending_job(store, "k")
    with pytest.raises(InvalidValue, match="timeout"):
        store.wait_many(["k", "other"], timeout)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="timeout"):
        store.wait("k", timeout)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="timeout"):
        store.cache.wait("k", timeout)  # type: ignore[arg-type]
    assert no_waiters(store, job)


def test_good_wait_timeouts_are_accepted() -> None:
    store = MemoryStore(Settings())
    job = pending_job(store, "k")
    for timeout in (0, 0.0, 0.01, 0.05):
        assert store.wait("k", timeout).state is State.PENDING
        assert store.cache.wait("k", timeout, "d") == "d"
    assert store.wait("unknown", None).state is State.UNKNOWN
    assert no_waiters(store, job)


def test_client_waits_refuse_a_bad_timeout() -> None:
    with Client() as client:
        for timeout in (math.inf, math.nan, -1, "1", True):
            with pytest.raises(InvalidValue, match="timeout"):
                client.wait("unknown", timeout)  # type: ignore[arg-type]
            with pytest.raises(InvalidValue, match="timeout"):
                client.wait_many(["a", "b"], timeout)  # type: ignore[arg-type]
            with pytest.raises(InvalidValue, match="timeout"):
                client.cache_wait("a", timeout)  # type: ignore[arg-type]


def test_async_waits_refuse_a_bad_timeout_before_registering() -> None:
    async def main() -> None:
        async with AsyncClient() as client:
            for timeout in (-1, math.inf, math.nan, "1", True, 10**10):
                with pytest.raises(InvalidValue, match="timeout"):
                    await client.wait("unknown", timeout)  # type: ignore[arg-type]
                with pytest.raises(InvalidValue, match="timeout"):
                    await client.wait_many(["a", "b"], timeout)  # type: ignore[arg-type]
                with pytest.raises(InvalidValue, match="timeout"):
                    await client.cache_wait("a", timeout)  # type: ignore[arg-type]
            assert client._store.cache._waiters == {}

    asyncio.run(main())


# -- Ctrl-C --------------------------------------------------------------------------------------


@pytest.fixture
def sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread for the test's duration."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ctrl_c_in(seconds: float) -> threading.Timer:
    timer = threading.Timer(
        seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    timer.start()
    return timer


@pytest.mark.usefixtures("sigint")
def test_ctrl_c_during_a_blocking_wait_many_leaves_no_waiter_behind() -> None:
    store = MemoryStore(Settings())
    jobs = [pending_job(store, f"k{i}") for i in range(3)]
    timer = ctrl_c_in(0.2)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        store.wait_many([j.key for j in jobs] + ["unknown"], None)
    timer.join()
    assert time.monotonic() - started < 2.0
    assert no_waiters(store, *jobs)


@pytest.mark.usefixtures("sigint")
def test_ctrl_c_during_a_blocking_wait_leaves_no_waiter_behind() -> None:
    store = MemoryStore(Settings())
    job = pending_job(store, "k")
    timer = ctrl_c_in(0.2)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        store.wait("k", None)
    timer.join()
    assert time.monotonic() - started < 2.0
    assert no_waiters(store, job)


@pytest.mark.usefixtures("sigint")
def test_ctrl_c_during_a_blocking_cache_wait_leaves_no_waiter_behind() -> None:
    store = MemoryStore(Settings())
    timer = ctrl_c_in(0.2)
    with pytest.raises(KeyboardInterrupt):
        store.cache.wait("never", None)
    timer.join()
    assert no_waiters(store)
    store.cache_set("never", "now", None)  # nobody left to wake, nothing raised


# -- wakes held while the engine is busy ---------------------------------------------------------


def test_held_wakes_store_the_result_at_once_and_wake_every_waiter_on_release() -> None:
    store = MemoryStore(Settings())
    jobs = [pending_job(store, f"k{i}") for i in range(3)]
    woken: list[Result] = []
    seen: dict[str, Result] = {}

    def wait_for(key: str) -> None:
        seen[key] = store.wait(key, 10)

    waiters = [threading.Thread(target=wait_for, args=(j.key,)) for j in jobs]
    for thread in waiters:
        thread.start()
    many = threading.Thread(target=lambda: woken.extend(store.wait_many(["k0", "k2"], 10)))
    many.start()
    deadline = time.monotonic() + 5
    while sum(len(j.waiters or ()) for j in jobs) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.hold_wakes()
    for job in jobs:
        store.finish(job, job.failure(ErrorKind.CANCELLED, "ended while held"))
        # Stored at once: a reader that comes now reads it without waiting.
        assert store.lookup(job.key).state is State.FAILED
        assert store.wait(job.key, 0).state is State.FAILED
    time.sleep(0.2)
    assert not seen and not woken, "a held wake ran before wake_held"
    store.wake_held()
    for thread in [*waiters, many]:
        thread.join(5)
    assert sorted(seen) == ["k0", "k1", "k2"]
    assert all(r.state is State.FAILED for r in [*seen.values(), *woken])
    assert no_waiters(store, *jobs)


def test_a_wait_that_times_out_while_its_wake_is_held_leaves_nothing_behind() -> None:
    store = MemoryStore(Settings())
    job = pending_job(store, "slow")
    store.hold_wakes()
    got: list[Result] = []
    waiter = threading.Thread(target=lambda: got.append(store.wait("slow", 0.3)))
    waiter.start()
    time.sleep(0.1)
    store.finish(job, job.failure(ErrorKind.CANCELLED, "ended while held"))
    waiter.join(5)
    # Timed out (the wake was held), yet it reads what is there by then: never a lost result.
    assert got[0].state is State.FAILED
    store.wake_held()  # the late wake finds nobody, and harms nothing
    assert no_waiters(store, job)
    assert store.wait("slow", 0).state is State.FAILED


def test_once_released_finish_wakes_at_once_again() -> None:
    store = MemoryStore(Settings())
    job = pending_job(store, "k")
    store.hold_wakes()
    store.wake_held()
    got: list[Result] = []
    waiter = threading.Thread(target=lambda: got.append(store.wait("k", 10)))
    waiter.start()
    deadline = time.monotonic() + 5
    while not job.waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    store.finish(job, job.failure(ErrorKind.CANCELLED, "ended"))
    waiter.join(5)
    assert got and got[0].state is State.FAILED
