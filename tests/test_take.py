"""Reading a result with ``take=True`` removes it from the store as it is returned, on the
memory store and on Redis, for `get`, `wait` and `wait_many`, sync and async; a pending key is
never taken, and a caller's idempotency key stays remembered (nothing is sent twice)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from postkey import AsyncClient, Client, Result, State
from tests.recording import RecordingServer


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """A store URL: the embedded one, or a Redis of our own (one redis-server)."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("single_redis_url"))


@pytest.fixture
def taking_client(store: str) -> Iterator[Client]:
    with Client(store=store, store_prefix=f"t{uuid.uuid4().hex[:12]}") as client:
        yield client


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def test_wait_with_take_returns_the_result_and_leaves_nothing_behind(
    taking_client: Client, echo: str
) -> None:
    key = taking_client.post_async(echo + "/post", "x" * 1000, None, 5000)
    result = taking_client.wait(key, 10, take=True)
    assert result.state is State.DONE and result.status == 200 and len(result.body) > 1000
    assert taking_client.status(key) is State.UNKNOWN
    assert not taking_client.cache_exists(key)
    assert taking_client.get(key).state is State.UNKNOWN


def test_wait_many_with_take_removes_every_result(taking_client: Client, echo: str) -> None:
    keys = [taking_client.get_async(echo + f"/get?i={i}", timeout_ms=5000) for i in range(20)]
    results = taking_client.wait_many(keys, 10, take=True)
    assert [r.key for r in results] == keys
    assert all(r.state is State.DONE and r.status == 200 for r in results)
    assert all(taking_client.status(k) is State.UNKNOWN for k in keys)


def test_get_with_take_leaves_a_pending_key_alone(taking_client: Client, echo: str) -> None:
    key = taking_client.get_async(echo + "/delay/500", timeout_ms=5000)
    assert taking_client.get(key, take=True).state in (State.PENDING, State.RUNNING)
    assert taking_client.wait(key, 0).state in (State.PENDING, State.RUNNING)  # still there
    assert taking_client.wait(key, 10).state is State.DONE  # ... and it still ends
    assert taking_client.get(key, take=True).state is State.DONE
    assert taking_client.get(key).state is State.UNKNOWN


def test_a_wait_that_times_out_takes_nothing(taking_client: Client, echo: str) -> None:
    key = taking_client.get_async(echo + "/delay/500", timeout_ms=5000)
    assert taking_client.wait(key, 0.01, take=True).state in (State.PENDING, State.RUNNING)
    assert taking_client.wait(key, 10, take=True).state is State.DONE


def test_a_taken_idempotency_key_is_still_remembered_and_not_sent_again(
    taking_client: Client, recorder: RecordingServer
) -> None:
    rid = uuid.uuid4().hex
    url = f"{recorder.url}/rec/{rid}"
    key = taking_client.post_async(url, "{}", None, 5000, key=f"order-{rid}")
    assert taking_client.wait(key, 10, take=True).body == f"{rid} 1".encode()
    again = taking_client.post_async(url, "{}", None, 5000, key=f"order-{rid}")
    assert again == key
    assert recorder.hits[rid] == 1  # the same request under the same key is never sent twice


def test_async_wait_and_wait_many_take_too(store: str, echo: str) -> None:
    async def main() -> None:
        async with AsyncClient(store=store, store_prefix=f"t{uuid.uuid4().hex[:12]}") as client:
            one = await client.get_async(echo + "/get", timeout_ms=5000)
            assert (await client.wait(one, 10, take=True)).status == 200
            client.flush()  # on Redis a take right at the end is queued behind the write
            assert client.status(one) is State.UNKNOWN
            keys = [await client.get_async(echo + f"/get?i={i}", timeout_ms=5000) for i in range(5)]
            results = await client.wait_many(keys, 10, take=True)
            assert all(r.status == 200 for r in results)
            client.flush()
            assert all(client.status(k) is State.UNKNOWN for k in keys)

    asyncio.run(main())


def test_a_take_as_a_result_lands_leaves_nothing_in_redis(single_redis_url: str, echo: str) -> None:
    # get(take=True) polled while results are written behind: a take that sees a result before
    # its write has landed must not delete first and let the write bring the result back.
    p = f"t{uuid.uuid4().hex[:12]}"
    with Client(store=single_redis_url, store_prefix=p) as client:
        keys = [client.get_async(echo + f"/get?i={i}", timeout_ms=5000) for i in range(300)]
        left = set(keys)
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:
            for key in list(left):
                if client.get(key, take=True).state is State.DONE:
                    left.discard(key)
        assert not left
        client.flush()
    with Client(store=single_redis_url, store_prefix=p) as other:
        assert [k for k in keys if other.status(k) is not State.UNKNOWN] == []


@pytest.mark.parametrize("bad", ["no", "yes", 1, 0, None, []], ids=repr)
def test_take_must_be_a_bool_and_a_bad_one_takes_nothing(bad: object, echo: str) -> None:
    from postkey import InvalidValue

    with Client() as client:
        key = client.get_async(echo + "/get", timeout_ms=5000)
        assert client.wait(key, 10).state is State.DONE
        for call in (
            lambda: client.get(key, take=bad),  # type: ignore[arg-type]
            lambda: client.wait(key, 1, take=bad),  # type: ignore[arg-type]
            lambda: client.wait_many([key], 1, take=bad),  # type: ignore[arg-type]
        ):
            with pytest.raises(InvalidValue, match="take must be True or False"):
                call()
        assert client.status(key) is State.DONE  # nothing was taken


def test_an_async_wait_many_with_a_bad_key_takes_nothing(store: str, echo: str) -> None:
    from postkey import InvalidKey

    async def main() -> None:
        async with AsyncClient(store=store, store_prefix=f"t{uuid.uuid4().hex[:12]}") as client:
            key = await client.get_async(echo + "/get", timeout_ms=5000)
            assert (await client.wait(key, 10)).state is State.DONE
            with pytest.raises(InvalidKey):
                await client.wait_many([key, 123], 5, take=True)  # type: ignore[list-item]
            assert client.status(key) is State.DONE  # not taken: the call failed as a whole
            twice = await client.wait_many([key, key], 5, take=True)
            assert [r.state for r in twice] == [State.DONE, State.DONE]
            client.flush()
            assert client.status(key) is State.UNKNOWN

    asyncio.run(main())


def test_plain_waits_get_the_result_even_when_another_reader_takes_it(echo: str) -> None:
    # Woken by the result's arrival, a wait returns that result: another thread's take=True
    # may remove it from the store before this waiter gets to read it.
    import threading

    with Client() as client:
        for _ in range(30):
            key = client.get_async(echo + "/delay/50", timeout_ms=5000)
            got: list[Result] = []

            def read(key: str = key, got: list[Result] = got, take: bool = False) -> None:
                got.append(client.wait(key, 10, take=take))

            plain = [threading.Thread(target=read) for _ in range(4)]
            taker = threading.Thread(target=read, kwargs={"take": True})
            for t in [*plain, taker]:
                t.start()
            for t in [*plain, taker]:
                t.join(15)
            assert [r.state for r in got] == [State.DONE] * 5, [r.state for r in got]
