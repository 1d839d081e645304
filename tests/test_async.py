"""AsyncClient: the same verbs, with awaitable waits woken through the event loop."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

import postkey
from postkey import AsyncClient, State


def test_async_wait_and_wait_many(echo: str) -> None:
    async def main() -> None:
        async with AsyncClient() as client:
            key = await client.post_async(echo, "hello", None, 5000)
            result = await client.wait(key, 10)
            assert result.state == State.DONE and result.json()["data"] == "hello"
            keys = [await client.get_async(echo + f"/{i}", timeout_ms=5000) for i in range(50)]
            results = await client.wait_many(keys, 10)
            assert [r.key for r in results] == keys
            assert all(r.status == 200 for r in results)
            assert (await client.wait("never-issued", 1)).state == State.UNKNOWN

    asyncio.run(main())


def test_async_wait_times_out_with_the_current_state(hostile: str) -> None:
    async def main() -> None:
        async with AsyncClient() as client:
            key = await client.get_async(hostile + "/silent", timeout_ms=5000)
            started = time.monotonic()
            result = await client.wait(key, 0.2)
            assert result.state == State.RUNNING
            assert time.monotonic() - started < 1.0
            assert client.cancel(key)

    asyncio.run(main())


def test_async_wait_does_not_block_the_loop(hostile: str) -> None:
    async def main() -> None:
        async with AsyncClient() as client:
            key = await client.get_async(hostile + "/hold", timeout_ms=5000)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            result = await client.wait(key, 5)
            task.cancel()
            assert result.status == 200
            assert ticks >= 10  # the loop ran while we waited ~300 ms

    asyncio.run(main())


def test_async_cache_wait(echo: str) -> None:
    async def main() -> None:
        async with AsyncClient() as client:
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, client.cache_set, "soon", "here")
            assert await client.cache_wait("soon", 5) == "here"
            assert await client.cache_wait("never", 0.1, default="none") == "none"

    asyncio.run(main())


def test_async_client_shares_the_core_verbs() -> None:
    sync_verbs = {"exists", "status", "get", "cancel", "cache_set", "cache_get", "cache_delete"}
    sync_verbs |= {"cache_count"}
    for verb in sync_verbs:
        assert getattr(postkey.AsyncClient, verb) is getattr(postkey.Client, verb)
    awaited = ("request_async", "post_async", "get_async", "submit_many")
    for verb in (*awaited, "wait", "wait_many", "cache_wait"):
        assert asyncio.iscoroutinefunction(getattr(postkey.AsyncClient, verb))


def test_async_submits_wake_the_engine_once_per_loop_turn_and_never_late(echo: str) -> None:
    # The submits of one turn share one engine wake-up, made once the turn's callbacks are done;
    # a missing one would leave each request queued until the engine's own 1 s tick.
    async def main() -> None:
        async with AsyncClient() as client:
            keys = await asyncio.gather(
                *(client.get_async(echo + f"/{i}", timeout_ms=5000) for i in range(300))
            )
            results = await client.wait_many(list(keys), 10)
            assert all(r.status == 200 for r in results)
            started = time.monotonic()
            for i in range(20):  # one at a time: each needs its own wake-up
                result = await client.wait(await client.get_async(echo + f"/one/{i}"), 10)
                assert result.status == 200
            assert time.monotonic() - started < 5.0  # ~20 ms here; ~10 s if wakes were lost

    asyncio.run(main())


def test_an_async_submit_whose_loop_stops_at_once_is_still_sent(echo: str) -> None:
    client = AsyncClient()
    try:
        first = asyncio.new_event_loop()

        async def submit_and_stop() -> str:
            key = await client.get_async(echo + "/orphan", timeout_ms=5000)
            first.stop()  # the loop ends this turn: the wake-up it scheduled never runs
            return key

        task = first.create_task(submit_and_stop())
        first.run_forever()
        key = task.result()
        first.close()

        async def later() -> None:
            result = await client.wait(key, 5)
            assert result.status == 200  # the engine's own tick takes it in (<= 1 s)
            started = time.monotonic()
            for i in range(10):  # and the next loop's submits wake it at once
                assert (await client.wait(await client.get_async(echo + f"/{i}"), 5)).ok
            assert time.monotonic() - started < 3.0

        asyncio.run(later())
    finally:
        asyncio.run(client.aclose())


def test_an_async_submit_is_on_its_way_even_if_the_loop_then_blocks(echo: str) -> None:
    # Code that blocks its loop after submitting (a sync call in an async handler): the requests
    # still leave at once, the first of a turn and the later ones; none ends unsent.
    async def main() -> None:
        async with AsyncClient() as client:
            assert (await client.wait(await client.get_async(echo + "/warm"), 5)).ok
            await asyncio.sleep(0.3)  # the engine is asleep now, for up to its 1 s tick
            keys = [await client.get_async(echo + f"/{i}", timeout_ms=500) for i in range(3)]
            time.sleep(1.0)  # the loop is blocked: no turn ends until the deadlines are past
            results = await client.wait_many(keys, 5)
            assert [r.status for r in results] == [200, 200, 200], results

    asyncio.run(main())


def test_a_later_submit_of_a_turn_leaves_even_if_the_engine_sleeps_until_a_near_deadline(
    echo: str,
) -> None:
    # In one turn of a loop that then blocks: A wakes the engine, is sent and ends; the engine
    # sleeps until A's deadline (its entry lingers), and B, due 0.5 ms after that, must not
    # wait for it: woken then, the engine would be too late to send B.
    async def main() -> None:
        async with AsyncClient() as client:
            assert (await client.wait(await client.get_async(echo + "/warm"), 5)).ok
            first = await client.get_async(echo + "/first", timeout_ms=600)
            time.sleep(0.1005)  # A is sent and ends meanwhile; the loop stays in this turn
            second = await client.get_async(echo + "/second", timeout_ms=500)
            time.sleep(1.0)  # still blocked: the end-of-turn wake-up cannot run
            results = await client.wait_many([first, second], 5)
            assert [r.status for r in results] == [200, 200], results

    asyncio.run(main())


def test_an_async_submit_without_a_running_loop_returns_its_key(echo: str) -> None:
    # A coroutine driven by hand (a trio shim, a test harness): the submit never suspends when
    # the queue has room, and must not fail after its request was queued.
    client = AsyncClient()
    try:
        coro = client.get_async(echo + "/by-hand", timeout_ms=5000)
        try:
            coro.send(None)
            raise AssertionError("the submit suspended")
        except StopIteration as stop:
            key = stop.value
        assert isinstance(key, str)
        result = asyncio.run(client.wait(key, 5))
        assert result.status == 200
    finally:
        asyncio.run(client.aclose())


def test_an_async_on_done_is_refused_rather_than_never_run(echo: str) -> None:
    # The callback thread would call it, get a coroutine back and drop it unrun.
    async def on_done(result: postkey.Result) -> None:
        pass

    class Awaiting:
        async def __call__(self, result: postkey.Result) -> None:
            pass

    async def main() -> None:
        async with AsyncClient() as ac:
            for callback in (on_done, Awaiting(), functools.partial(on_done)):
                with pytest.raises(postkey.InvalidRequest, match="on_done is a coroutine"):
                    await ac.get_async(echo + "/get", on_done=callback)

    asyncio.run(main())
    with postkey.Client() as c, pytest.raises(postkey.InvalidRequest, match="coroutine"):
        c.get_async(echo + "/get", on_done=on_done)
