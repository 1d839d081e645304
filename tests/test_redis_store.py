"""The shared store on a real redis-server: keys readable and waitable from other processes, a
dead sender's keys end as worker_lost, a Redis that is not there gives a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import exceptions as redis_errors

import postkey
from postkey import Client, State
from postkey._stores import codec
from postkey._stores.names import Names
from postkey._stores.redis_replies import Replies
from postkey.testing import LocalRedis

from .spy import clients, kill_pubsub_clients, spy_client


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def run_python(
    code: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def test_a_key_sent_here_is_read_in_another_process(redis_url: str, echo: str) -> None:
    p = prefix()
    with Client(store=redis_url, store_prefix=p) as client:
        key = client.post_async(echo + "/post", b"\x00\xffexact", timeout_ms=5000)
        assert client.wait(key, 10).status == 200
        other = run_python(
            f"""
            import postkey
            with postkey.Client(store={redis_url!r}, store_prefix={p!r}) as c:
                r = c.get({key!r})
                print(r.state, r.status, r.json()["data"] == "\\x00\\ufffdexact", r.url)
            """
        )
    assert other.returncode == 0, other.stderr
    assert other.stdout.split() == ["done", "200", "True", echo + "/post"]


def test_another_process_waits_push_based_for_a_key_sent_here(redis_url: str, echo: str) -> None:
    p = prefix()
    # The waiter is up (imports done, store open) before the request is sent, and the request
    # takes a second: the wait must be woken by the push, not found by a first read.
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time, postkey
                with postkey.Client(store={redis_url!r}, store_prefix={p!r}) as c:
                    print("ready", flush=True)
                    key = sys.stdin.readline().strip()
                    r = c.wait(key, 10)
                    print(r.state, r.status, time.time(), flush=True)
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert waiter.stdout is not None and waiter.stdin is not None
    assert waiter.stdout.readline().strip() == "ready"
    with Client(store=redis_url, store_prefix=p) as client:
        key = client.get_async(echo + "/delay/1000", timeout_ms=5000)
        client.flush()  # visible everywhere before it is handed over
        waiter.stdin.write(key + "\n")
        waiter.stdin.flush()
        result = client.wait(key, 10)
        out, _ = waiter.communicate(timeout=30)
    state, status, woke_at = out.split()
    assert (state, status) == ("done", "200") and result.status == 200
    assert result.finished_at is not None
    assert float(woke_at) - result.finished_at < 1.0  # pushed, not found by the slow re-check


def test_the_mychat_names_work_across_two_processes(redis_url: str, echo: str) -> None:
    # The MyChat code is unchanged: the default client takes its store from the environment.
    env = {**os.environ, "POSTKEY_STORE": redis_url, "POSTKEY_STORE_PREFIX": prefix()}
    sent = run_python(
        f"""
        from postkey.mychat import HTTPSendPostMessageAsync
        print(HTTPSendPostMessageAsync({echo + "/post"!r}, '{{"a": 1}}', "", 5000))
        """,
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    key = sent.stdout.strip().splitlines()[-1]
    read = run_python(
        f"""
        import postkey
        from postkey.mychat import MemCacheExists, MemCacheGet
        postkey.wait({key!r}, 10)
        print(MemCacheExists({key!r}))
        print(MemCacheGet({key!r}))
        """,
        env=env,
    )
    assert read.returncode == 0, read.stderr
    exists, text = read.stdout.strip().splitlines()
    assert exists == "True" and '"data": "{\\"a\\": 1}"' in text


def test_a_dead_senders_keys_end_as_worker_lost_when_its_lease_lapses(
    redis_url: str, hostile: str
) -> None:
    p = prefix()
    sender = run_python(
        f"""
        import os, postkey
        c = postkey.Client(store={redis_url!r}, store_prefix={p!r}, lease_ms=2500)
        print(c.get_async({hostile + "/silent"!r}, timeout_ms=60000), flush=True)
        c.flush()  # the key is visible everywhere
        os._exit(0)  # dies with the request on the wire: no close, no result
        """
    )
    key = sender.stdout.strip()
    # The same lease_ms as the sender's: a reader ends a key whose sender has no lease only
    # once its record is older than a lease (its own lease_ms: a deployment-wide setting).
    with Client(store=redis_url, store_prefix=p, lease_ms=2500) as client:
        # The lease has not lapsed yet (2.5 s: 0.6 s was not enough on a loaded machine to
        # start the sender and this client between its last renewal and this read).
        assert client.status(key) is State.PENDING
        started = time.monotonic()
        result = client.wait(key, 15)
    assert result.state is State.FAILED and result.error_kind == "worker_lost"
    assert "lease" in (result.error or "")
    assert time.monotonic() - started < 8


def test_subscriptions_return_to_zero(redis_url: str, hostile: str) -> None:
    with Client(store=redis_url, store_prefix=prefix()) as client:
        keys = [client.get_async(hostile + "/hold", timeout_ms=5000) for _ in range(20)]
        store = client._store
        waits = [threading.Thread(target=client.wait, args=(k, 10)) for k in keys]
        for t in waits:
            t.start()
        timed_out = client.wait(client.get_async(hostile + "/silent", timeout_ms=5000), 0.2)
        assert timed_out.state in (State.PENDING, State.RUNNING)
        for t in waits:
            t.join(10)
        deadline = time.monotonic() + 2
        while store.subscriptions() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.02)
        assert store.subscriptions() == 0  # type: ignore[attr-defined]


def test_a_store_that_is_not_there_is_a_clear_error_within_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(postkey.StoreUnavailable, match="did not answer"):
        Client(store="redis://127.0.0.1:1/0", store_timeout_ms=300)
    assert time.monotonic() - started < 3


def test_a_bad_store_setting_is_refused() -> None:
    for bad in ("mysql://x", "redis", 5):
        with pytest.raises(postkey.InvalidValue, match="store must be"):
            Client(store=bad)  # type: ignore[arg-type]
    with pytest.raises(postkey.InvalidValue, match="store_prefix"):
        Client(store="redis://127.0.0.1:1/0", store_prefix="a b")


@pytest.mark.parametrize(
    ("tail", "says"),
    [
        ("/abc", "database must be a number"),
        ("/0?foo=1", "unknown or reserved option 'foo'"),
        ("/0?socket_timeout=5", "unknown or reserved option 'socket_timeout'"),
        ("/0?protocol=3", "unknown or reserved option 'protocol'"),
        ("/99", "Redis refused it: DB index is out of range"),
    ],
)
def test_a_store_url_redis_would_misread_is_refused(
    single_redis_url: str, tail: str, says: str
) -> None:
    # redis-py ignores a database that is not a number, passes unknown options on to fail
    # later with a TypeError, and lets the URL undo postkey's timeouts; Redis refuses a
    # database it does not have at the first command. Each is a clear error at once.
    url = single_redis_url.rsplit("/", 1)[0] + tail
    with pytest.raises(postkey.InvalidValue, match=says):
        Client(store=url)


def test_a_store_url_may_carry_the_options_postkey_leaves_to_it(single_redis_url: str) -> None:
    url = single_redis_url.rsplit("/", 1)[0] + "/1?max_connections=50&socket_keepalive=true"
    with Client(store=url, store_prefix=prefix()) as client:
        client.cache_set("k", "v")
        assert client.cache_get("k") == "v"


def test_closing_an_async_client_checks_its_timeout() -> None:
    async def main(timeout: object) -> None:
        client = postkey.AsyncClient()
        try:
            with pytest.raises(postkey.InvalidValue, match="timeout"):
                await client.aclose(timeout=timeout)  # type: ignore[arg-type]
        finally:
            await client.aclose(timeout=1)

    for bad in (float("nan"), "x", -1, True):
        asyncio.run(main(bad))


def test_ten_thousand_async_waiters_share_one_connection(redis_url: str, echo: str) -> None:

    p = prefix()
    spy = spy_client(redis_url)

    # Sent by another client: its own keys' waits need no pub/sub (woken as results land). Its
    # response would take a minute; the test ends it (cancel) once every wait is registered, so
    # no amount of load on the machine can make the result land before the waits are in.
    sender = Client(store=redis_url, store_prefix=p)
    key = sender.get_async(echo + "/delay/60000", timeout_ms=90_000)
    sender.flush()

    def pubsubs() -> set[str]:
        return {c["id"] for c in clients(spy) if int(c.get("ssub", 0) or 0) > 0}

    # The sender's own: its reply channels (per node of a Cluster), subscribed at its submit.
    deadline = time.monotonic() + 10
    while not pubsubs() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    senders = pubsubs()

    async def main() -> list[postkey.Result]:
        async with postkey.AsyncClient(store=redis_url, store_prefix=p) as client:
            waits = [asyncio.ensure_future(client.wait(key, 90)) for _ in range(10_000)]
            deadline = time.monotonic() + 45
            while True:  # until the waits reach the hub (through the executor, under load)
                await asyncio.sleep(0.05)
                theirs = pubsubs() - senders
                if theirs or time.monotonic() > deadline:
                    break
            assert len(theirs) == 1, theirs  # one sharded pub/sub connection for them all
            assert not any(w.done() for w in waits)
            assert await asyncio.to_thread(sender.cancel, key)
            results = await asyncio.gather(*waits)
            assert client._store.subscriptions() == 0  # type: ignore[attr-defined]
            return results

    results = asyncio.run(main())
    sender.close()
    assert len(results) == 10_000
    assert {(r.state, r.error_kind) for r in results} == {(State.FAILED, "cancelled")}
    spy.close()


def test_waits_survive_a_redis_restart(echo: str) -> None:
    server = LocalRedis()
    url = server.start().url
    try:
        p = prefix()
        with Client(store=url, store_prefix=p, lease_ms=1_500) as client:
            key = client.get_async(echo + "/delay/2500", timeout_ms=10_000)
            got: list[postkey.Result] = []
            waiter = threading.Thread(target=lambda: got.append(client.wait(key, 15)))
            waiter.start()
            time.sleep(0.3)
            server.kill()  # no persistence: the pending record is gone with it
            time.sleep(0.3)
            server.start()
            time.sleep(1.0)  # the lease renewal finds its lease gone and restores the record
            with Client(store=url, store_prefix=p) as other:
                assert other.status(key) is State.PENDING
            waiter.join(20)
            # The sender writes its result even though the record was lost, and the waiter,
            # resubscribed after the reconnect, is woken by it.
            assert got and got[0].state is State.DONE and got[0].status == 200
    finally:
        server.stop()


def test_a_key_submitted_right_after_a_redis_restart_is_pending_not_lost(echo: str) -> None:
    # Redis restarted empty: the sender's lease is gone until its next renewal (a third of
    # lease_ms), and a key it submits meanwhile was ended as worker_lost by the first reader
    # (then the sender's own result was dropped: the request ran, and everyone read it lost).
    server = LocalRedis()
    url = server.start().url
    try:
        p = prefix()
        with Client(store=url, store_prefix=p, lease_ms=6_000) as sender:
            assert sender.wait(sender.get_async(echo + "/get"), 10).status == 200
            server.kill()
            server.start()
            key = None
            deadline = time.monotonic() + 10
            while key is None:  # the first submits may meet the restart
                try:
                    key = sender.get_async(echo + "/delay/1000", timeout_ms=10_000)
                except postkey.StoreUnavailable:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            sender.flush()
            with Client(store=url, store_prefix=p, lease_ms=6_000) as reader:
                assert reader.status(key) is State.PENDING
                assert reader.wait(key, 10).status == 200
            assert sender.wait(key, 1).status == 200
    finally:
        server.stop()


def test_no_waiter_misses_a_result_that_lands_as_it_subscribes(redis_url: str) -> None:

    from postkey._job import Job
    from postkey._request import build_request
    from postkey._settings import Settings
    from postkey._stores import open_store

    settings = Settings(store=redis_url, store_prefix=prefix())
    store = open_store(settings)
    # Waits from another store, as another process would: its own keys need no pub/sub.
    reader = open_store(settings)
    killer = spy_client(redis_url)
    request = build_request(
        "GET", "http://127.0.0.1:9/", None, None, 5000, max_timeout_ms=60_000, max_body_bytes=0
    )
    try:
        slow = 0
        rounds = 10_000 if os.environ.get("POSTKEY_LONG_TESTS") == "1" else 300
        for i in range(rounds):
            job = Job(f"race-{i}", request)
            store.register(job, caller_key=False)
            store.flush(5)  # the key is visible everywhere
            got: list[postkey.Result] = []
            waiter = threading.Thread(
                target=lambda k=job.key, out=got: out.append(reader.wait(k, 10))
            )
            waiter.start()
            if i % 50 == 0:
                kill_pubsub_clients(killer)
            time.sleep((i % 5) / 1000)  # finish before, during and after the subscription
            store.finish(job, job.failure(postkey.ErrorKind.CANCELLED, "race"))
            started = time.monotonic()
            waiter.join(10)
            assert got and got[0].state is State.FAILED, f"round {i} hung"
            slow += time.monotonic() - started > 0.1
        # Only rounds that met a killed connection (one in 50) wait for the re-read.
        assert slow <= rounds // 25
    finally:
        store.close()
        reader.close()
        killer.close()


def test_every_key_written_goes_away_with_its_ttl(redis_url: str, echo: str) -> None:

    p = prefix()
    spy = spy_client(redis_url)
    with Client(store=redis_url, store_prefix=p, result_ttl_ms=300, tombstone_ttl_ms=300) as c:
        keys = [c.get_async(echo + "/get", timeout_ms=5000) for _ in range(200)]
        c.wait_many(keys, 10)
        c.cache_set("value", "v", ttl_ms=300)
        assert len(list(spy.scan_iter(match=f"{p}:*"))) > 200
        time.sleep(1.0)
        assert list(spy.scan_iter(match=f"{p}:{{*")) == []  # records and tombstones: gone
    assert list(spy.scan_iter(match=f"{p}:*")) == []  # and the lease, at close
    spy.close()


def test_an_async_client_on_a_slow_redis_never_stalls_its_event_loop(echo: str) -> None:
    import redis as redis_py

    server = LocalRedis("--enable-debug-command", "yes")
    url = server.start().url
    stall = redis_py.Redis.from_url(url)

    async def main() -> tuple[int, list[float]]:
        async with postkey.AsyncClient(store=url, store_prefix=prefix()) as client:
            ticks: list[float] = []

            async def ticker() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            # Redis answers nobody for 0.6 s; meanwhile a submit and a wait go to it.
            sleeper = threading.Thread(target=stall.execute_command, args=("DEBUG", "SLEEP", "0.6"))
            sleeper.start()
            await asyncio.sleep(0.05)
            key = await client.get_async(echo + "/get", timeout_ms=5000)
            result = await client.wait(key, 10)
            sleeper.join()
            task.cancel()
            gaps = [b - a for a, b in itertools.pairwise(ticks)]
            return result.status or 0, gaps

    try:
        status, gaps = asyncio.run(main())
    finally:
        stall.close()
        server.stop()
    assert status == 200
    assert max(gaps) < 0.3  # the loop kept ticking while Redis was asleep


def test_a_wait_on_an_own_key_another_process_cancelled_gets_the_stored_result(
    redis_url: str, echo: str
) -> None:
    p = prefix()
    with Client(store=redis_url, store_prefix=p, lease_ms=600) as sender:
        key = sender.get_async(echo + "/delay/5000", timeout_ms=10_000)
        sender.flush()
        done = run_python(
            f"""
            import postkey
            c = postkey.Client(store={redis_url!r}, store_prefix={p!r})
            print(c.cancel({key!r}))
            c.close()
            """
        )
        assert done.stdout.strip() == "True", done.stderr
        started = time.monotonic()
        # Woken locally (no pub/sub for its own keys) once the sender notices the cancel and
        # its own write is dropped: with what the store holds, the other process's cancel.
        result = sender.wait(key, 5)
        assert time.monotonic() - started < 2
    assert result.state is State.FAILED and result.error_kind == "cancelled"
    assert "another process" in (result.error or "")


@contextlib.contextmanager
def sender_and_other(redis_url: str) -> Iterator[tuple[Client, Client]]:
    """Two clients on one store prefix: two owners, as two processes are (the other one
    ends the sender's keys through the store)."""
    p = prefix()
    with (
        Client(store=redis_url, store_prefix=p) as sender,
        Client(store=redis_url, store_prefix=p) as other,
    ):
        yield sender, other


def test_a_cancel_from_another_process_reaches_a_waiting_sender_at_once(
    redis_url: str, echo: str
) -> None:
    # The default lease (10 s): the lease thread's read of its keys, the last resort, comes
    # only every 3.3 s. The cancel is announced on the sender's reply channels instead: its
    # transfer stops and its waiters wake at once. (Another client is another owner, as
    # another process is: it cancels through the store.)
    with sender_and_other(redis_url) as (sender, other):
        key = sender.get_async(echo + "/delay/8000", timeout_ms=10_000)
        sender.flush()
        woke: list[tuple[object, float]] = []
        waiter = threading.Thread(
            target=lambda: woke.append((sender.wait(key, 9), time.monotonic())), daemon=True
        )
        waiter.start()
        time.sleep(0.3)  # the wait is registered on the job
        cancelled_at = time.monotonic()
        assert other.cancel(key)
        waiter.join(9)
        assert woke, "the wait did not end"
        result, at = woke[0]
        assert at - cancelled_at < 1.0
        assert " in_flight=0 " in repr(sender)  # its transfer was stopped, not left to run
    assert isinstance(result, postkey.Result)
    assert result.state is State.FAILED and result.error_kind == "cancelled"
    assert "another process" in (result.error or "")


def test_a_forged_end_announcement_does_not_stop_a_request_this_process_sends(
    redis_url: str, echo: str
) -> None:
    # Anyone who can publish on the reply channels can claim a key ended. The sender checks
    # the store before it stops anything: the request goes on and its own result stands.
    from postkey._stores.names import shard_of

    p = prefix()
    with Client(store=redis_url, store_prefix=p) as sender:
        key = sender.get_async(echo + "/delay/600", timeout_ms=10_000)
        sender.flush()
        time.sleep(0.2)  # subscribed, and the request on the wire
        store = sender._store_
        spy = spy_client(redis_url)
        try:
            channel = store._names.reply(shard_of(key), store.reply_id)
            for note in (key.encode() + b"\nr", key.encode() + b"\n", b"garbage"):
                spy.spublish(channel, note)
        finally:
            spy.close()
        result = sender.wait(key, 5)
    assert result.status == 200


def test_an_end_announced_while_not_subscribed_is_read_at_the_next_confirmation(
    redis_url: str, echo: str
) -> None:
    # An announcement made while the reply channels are down (a reconnect) is lost: when the
    # hub confirms a channel again, the sender reads the records of its keys in that shard.
    # Here the announcement is never made (a pending record written without a reply id, as
    # by an earlier version); the hub's re-confirmation is called as the hub calls it.
    from postkey._stores.names import shard_of

    with sender_and_other(redis_url) as (sender, other):
        key = sender.get_async(echo + "/delay/8000", timeout_ms=10_000)
        sender.flush()
        store = sender._store_
        deadline = time.monotonic() + 10  # confirmed once: the next one is a re-confirmation
        while len(store._replies._confirmed) < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        spy = spy_client(redis_url)
        try:
            spy.set(
                store._names.record(key),
                codec.encode_pending(store.owner, None, time.time(), "pending"),
                px=60_000,
            )
        finally:
            spy.close()
        assert other.cancel(key)
        time.sleep(0.3)
        assert " in_flight=1 " in repr(sender)  # nothing heard: still sending
        store._ended_elsewhere_missed(shard_of(key))
        result = sender.wait(key, 2)
    assert result.state is State.FAILED and result.error_kind == "cancelled"


def test_a_caller_key_cancelled_right_after_a_first_submit_stops_at_once(
    redis_url: str, echo: str
) -> None:
    # A key its caller names is known to everyone before the sender's reply channels are
    # confirmed: a cancel announced before then is read at the first confirmation.
    p = prefix()
    for i in range(4):
        with (
            Client(store=redis_url, store_prefix=p) as other,
            Client(store=redis_url, store_prefix=p) as sender,
        ):
            key = sender.get_async(echo + "/delay/8000", timeout_ms=10_000, key=f"order-{i}")
            assert other.cancel(key)
            started = time.monotonic()
            result = sender.wait(key, 9)
            took = time.monotonic() - started
        assert result.error_kind == "cancelled"
        assert took < 1.5, f"round {i}: {took:.2f} s"


def test_every_confirmation_of_a_channel_asks_the_owner_to_read_what_it_missed() -> None:
    # The first one too: a key named by its caller may be cancelled by another process before
    # the reply channels are confirmed.

    asked: list[int] = []
    replies = replies_fed_by_hand(confirmed=asked.append)
    channel = Names("p").reply(5, "owner")
    replies._confirmed_channel(channel)
    replies._lost()
    replies._confirmed_channel(channel)
    assert asked == [5, 5]


def replies_fed_by_hand(confirmed: Callable[[int], None] = lambda shard: None) -> Replies:
    """A `Replies` that subscribes nothing: the tests hand it announcements (and channel
    confirmations) themselves."""
    from postkey._result import Result

    return Replies(
        lambda *subscription: None,
        Names("p"),
        "owner",
        read_many=lambda keys: [Result(k, State.PENDING) for k in keys],
        lookup=lambda key: Result(key, State.UNKNOWN),
        confirmed=confirmed,
    )


def test_results_heard_with_nobody_waiting_are_kept_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from postkey._result import Result
    from postkey._stores import redis_replies

    monkeypatch.setattr(redis_replies, "_LANDED_BYTES", 10_000)
    replies = replies_fed_by_hand()

    def announce(key: str, body: bytes) -> None:
        replies._mine[key] = True  # as remember() marks a key queued while listening
        done = Result(key, State.DONE, status=200, body=body, url="http://h/")
        replies._heard("reply", key.encode() + b"\n" + codec.encode_result(done))

    for i in range(50):
        announce(f"k{i}", b"x" * 1000)  # ~50 KB heard, 10 KB kept: the newest
    assert replies._landed_bytes <= 10_000
    known, silent = replies.claim([f"k{i}" for i in range(50)])
    assert "k49" in known and known["k49"].body == b"x" * 1000 and "k0" not in known
    assert not silent  # every one was heard: none can be waited for without a read
    assert replies.claim(["k49"]) == ({}, set())  # handed out once
    assert replies._landed == {} and replies._landed_bytes == 0


def test_one_message_of_several_announcements_wakes_each_waiter() -> None:
    import struct

    from postkey._result import Result
    from postkey._stores import redis_replies

    replies = replies_fed_by_hand()
    woken: dict[str, Result] = {}
    for key in ("a", "b", "c"):
        replies._mine[key] = True
        replies.watch(key, lambda r: woken.setdefault(r.key, r))
    frames = b""
    for key in ("a", "b", "c"):
        done = Result(key, State.DONE, status=200, body=key.encode() * 3)
        item = key.encode() + b"\n" + codec.encode_result(done)
        frames += struct.pack("<I", len(item)) + item
    replies._heard("reply", redis_replies.REPLY_BATCH + frames)
    assert {k: r.body for k, r in woken.items()} == {"a": b"aaa", "b": b"bbb", "c": b"ccc"}
    assert replies._waiters == {}


def test_a_wait_on_keys_sent_here_reads_nothing(echo: str) -> None:
    # Keys this process sends are woken by their own results landing, and an end another
    # process makes (a cancel) is announced to this one: the wait reads nothing from Redis (a
    # wait on 20,000 keys once read 40,000 names, later their 20,000 records, then waited).
    with LocalRedis() as url, Client(store=url, store_prefix=prefix(), lease_ms=60_000) as c:
        # Still on the wire when the wait begins, even on a loaded machine: a key that ended
        # before is read from Redis (what it holds then), and would count here.
        keys = [c.get_async(echo + f"/delay/{2000 + i}") for i in range(100)]
        deadline = time.monotonic() + 10  # its reply channels confirmed (each reads its keys)
        while len(c._store_._replies._confirmed) < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        spy = spy_client(url)
        try:
            # Until the confirmations' own reads are done (a channel counts as confirmed just
            # before its read, which a loaded machine can delay past a fixed pause).
            reads_before = -1
            while reads_before != _reads(spy) and time.monotonic() < deadline:
                reads_before = _reads(spy)
                time.sleep(0.3)
            results = c.wait_many(keys + keys[:3], 10)  # a key twice is answered twice
            reads_after = _reads(spy)
        finally:
            spy.close()
    assert [r.key for r in results] == keys + keys[:3]
    assert all(r.state is State.DONE and r.status == 200 for r in results)
    assert reads_after - reads_before == 0


def test_a_wait_on_an_own_key_another_process_ended_returns_at_once(echo: str) -> None:
    p = prefix()
    with LocalRedis() as url, Client(store=url, store_prefix=p, lease_ms=30_000) as sender:
        key = sender.get_async(echo + "/delay/20000", timeout_ms=25_000)
        sender.flush()
        with Client(store=url, store_prefix=p) as other:
            assert other.cancel(key)
        started = time.monotonic()
        result = sender.wait(key, 10)
        took = time.monotonic() - started
        sender.close(drain=False)
    assert result.state is State.FAILED and result.error_kind == "cancelled"
    assert took < 1, f"{took:.2f} s: the wait did not see that the store had ended the key"


def _reads(spy: object) -> int:
    # MGET: how the store reads keys (its scripts' own GETs count as GET).
    stats = spy.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


def test_waits_on_keys_sent_here_leave_no_waiter_on_their_jobs(redis_url: str, echo: str) -> None:
    # Waiters of keys this process sends sit on their jobs until the result lands; a wait that
    # times out, or two waits on one key, must leave nothing behind, and each wait that stays
    # is woken once the result lands.
    with Client(store=redis_url, store_prefix=prefix()) as client:
        store = client._store
        keys = [client.get_async(echo + "/delay/700", timeout_ms=10_000) for _ in range(3)]
        jobs = [store._jobs[k] for k in keys]  # type: ignore[attr-defined]
        assert all(not r.state.terminal for r in client.wait_many(keys, 0.05))
        assert not client.wait(keys[0], 0.05).state.terminal
        assert all(not job.waiters for job in jobs)
        got: list[list[postkey.Result]] = []
        both = [
            threading.Thread(target=lambda: got.append(client.wait_many(keys, 10)))
            for _ in range(2)
        ]
        for t in both:
            t.start()
        for t in both:
            t.join(15)
        assert len(got) == 2
        assert all([r.status for r in results] == [200] * 3 for results in got)
        assert all(not job.waiters for job in jobs)
        assert [r.state for r in client.wait_many(keys, 0)] == [State.DONE] * 3


@pytest.mark.parametrize(
    "payload",
    [
        b"{nope",
        b"[1]",
        b'{"owner":5,"submitted_at":1.0}',
        b'{"owner":null,"submitted_at":1.0}',
        b"{}",
        b'{"owner":"a","submitted_at":"x"}',
        b'{"owner":"a","submitted_at":1.0,"queued":1,"timeout_ms":"y"}',
        b'{"owner":"\\ud800","submitted_at":1.0}',
        b"[" * 100_000,
        b"\xff\xfe",
    ],
)
def test_a_pending_record_postkey_cannot_read_is_unknown(redis_url: str, payload: bytes) -> None:
    # Anything may write under the prefix of a shared Redis: a record postkey cannot read is
    # answered as unknown, saying so, by every read; never a bare exception.
    with Client(store=redis_url, store_prefix=prefix()) as client:
        raw = redis_client(redis_url)
        raw.set(client._store._names.record("k"), b"pk\x01P" + payload, px=60_000)  # type: ignore[attr-defined]
        for result in (client.get("k"), client.wait("k", 0.1), client.wait_many(["k"], 0.1)[0]):
            assert result.state is State.UNKNOWN
            assert "cannot read" in (result.error or "")
        raw.set(client._store._names.record("v"), b"pk\x01S\xff\xfe", px=60_000)  # type: ignore[attr-defined]
        assert client.cache_get("v", "default") == "default"
        raw.close()


def test_an_unreadable_record_does_not_hold_up_other_waits(redis_url: str, echo: str) -> None:
    # The wait hub reads the keys it watches in batches: one record it cannot read must not
    # stop it waking the others (it used to restart over and over, every wait left to time out).
    p = prefix()
    with (
        Client(store=redis_url, store_prefix=p) as sender,
        Client(store=redis_url, store_prefix=p) as reader,
    ):
        stuck = sender.get_async(echo + "/delay/10000", timeout_ms=20_000)
        good = sender.get_async(echo + "/delay/1000", timeout_ms=20_000)
        sender.flush(5)
        results: dict[str, postkey.Result] = {}
        waits = [
            threading.Thread(target=lambda k=k: results.__setitem__(k, reader.wait(k, 8)))
            for k in (stuck, good)
        ]
        started = time.monotonic()
        for t in waits:
            t.start()
        time.sleep(0.3)
        raw = redis_client(redis_url)
        raw.set(reader._store._names.record(stuck), b"pk\x01P[1]", px=60_000)  # type: ignore[attr-defined]
        raw.close()
        waits[1].join(10)
        assert results[good].status == 200
        assert time.monotonic() - started < 4  # woken when it ended (at ~1 s), not at 8 s
        waits[0].join(10)
        assert results[stuck].state is State.UNKNOWN
        sender.cancel(stuck)  # no need to wait out its 10 s


def redis_client(url: str) -> Any:
    """A plain redis-py client for ``url`` (a Cluster's when it names one)."""
    import redis

    if url.startswith("redis+cluster://"):
        return redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    return redis.Redis.from_url(url)


def test_an_async_wait_released_at_exit_returns_a_result(redis_url: str, echo: str) -> None:
    # At interpreter exit the store releases its waiters (with no result): an async wait then
    # answers with what is known, a Result, as the blocking wait does; never the sentinel.
    async def main() -> postkey.Result:
        async with postkey.AsyncClient(store=redis_url, store_prefix=prefix()) as client:
            key = await client.get_async(echo + "/delay/2000", timeout_ms=10_000)
            waiting = asyncio.ensure_future(client.wait(key, 10))
            await asyncio.sleep(0.3)
            client._store.release_waiters()
            return await asyncio.wait_for(waiting, 5)

    result = asyncio.run(main())
    assert isinstance(result, postkey.Result) and not result.state.terminal


@pytest.mark.parametrize("send", ["local", "workers"])
def test_no_wait_blocks_once_its_client_is_closed(redis_url: str, echo: str, send: str) -> None:
    # Waits blocked at close() return what the store holds, and waits that begin after it
    # return at once, as with a timeout of 0: nothing can wake them any more. They used to
    # block for ever on a queued client (its reply channels were never released), and after
    # close() on any Redis client, whatever ended the key elsewhere.
    p = prefix()
    client = Client(store=redis_url, store_prefix=p, send=send)
    # Queued with no worker, or sent to a server that answers in 30 s: pending throughout.
    key = client.get_async(f"{echo}/delay/30000", timeout_ms=60_000)
    client.flush()
    got: dict[str, object] = {}
    blocked = threading.Thread(
        target=lambda: got.setdefault("early", client.wait(key)), daemon=True
    )
    blocked.start()
    value_wait = threading.Thread(
        target=lambda: got.setdefault("value", client.cache_wait(f"v-{key}", None, "none")),
        daemon=True,
    )
    value_wait.start()
    time.sleep(0.3)
    client.close(drain=False) if send == "local" else client.close()
    blocked.join(10)
    value_wait.join(10)
    assert not blocked.is_alive() and not value_wait.is_alive()
    assert got["value"] == "none"
    late: dict[str, Any] = {}

    def wait_late() -> None:
        late["one"] = client.wait(key)
        late["many"] = client.wait_many([key, key])
        late["value"] = client.cache_wait(f"v-{key}", None, "none")

    after = threading.Thread(target=wait_late, daemon=True)
    after.start()
    after.join(5)
    assert not after.is_alive(), "a wait after close() blocked"
    assert late["one"].key == key and late["many"][0].state is late["one"].state
    assert late["value"] == "none"
    if send == "workers":  # still queued: nobody ended it
        assert isinstance(got["early"], postkey.Result)
        assert got["early"].state is State.PENDING and late["one"].state is State.PENDING


def test_a_full_redis_can_still_be_read_and_a_submit_says_it_refused_the_write(
    echo: str,
) -> None:
    # With maxmemory and noeviction (the policy the README recommends), a full Redis refuses
    # writes but still reads. Every client wrote its lease when made, so a reader could not
    # even start: "store URL ...: Redis refused it", as if the URL were wrong.
    with LocalRedis("--maxmemory-policy", "noeviction") as url:
        p = prefix()
        with Client(store=url, store_prefix=p) as sender:
            key = sender.get_async(f"{echo}/get")
            assert sender.wait(key, 10).status == 200
        spy = spy_client(url)
        # A key whose sender died (its lease is gone): a reader ends it as worker_lost, a
        # write, which a full Redis refuses (that read raised redis-py's OutOfMemoryError).
        orphan_record = codec.encode_pending("0badc0de" * 2, None, time.time() - 3600, "pending")
        spy.set(Names(p).record("orphan"), orphan_record, px=600_000)
        # A sending process that has its lease already (it sent before the Redis filled up).
        busy = Client(store=url, store_prefix=p, lease_ms=1000)
        busy.get_async(f"{echo}/get")
        busy.flush()
        for i in range(20):
            spy.set(f"filler:{i}", b"x" * 100_000)
        # Full for good: maxmemory half a megabyte below what is used (filled to the brim, a
        # few bytes freed by a client's buffers let some writes through again).
        spy.config_set("maxmemory", int(spy.info("memory")["used_memory"]) - 500_000)
        with pytest.raises(redis_errors.OutOfMemoryError, match="maxmemory"):
            spy.set("one-more", "x")
        with Client(store=url, store_prefix=p) as reader:
            assert reader.get(key).status == 200
            assert reader.exists(key)
            assert reader.wait(key, 1).status == 200
            with pytest.raises(postkey.StoreUnavailable, match=r"refused a write: .*maxmemory"):
                reader.get_async(f"{echo}/get")
            assert reader.status("orphan") == "pending"  # what is known; a later read ends it
            with pytest.raises(postkey.StoreUnavailable, match="refused a write"):
                reader.cache_set("v", "1")
            # Its key was handed out before the refusal came back: flush() says it is not
            # visible elsewhere (its write was sent again for a lease, then given up on); the
            # next submit is refused at once.
            busy.get_async(f"{echo}/get")
            with pytest.raises(postkey.StoreUnavailable):
                busy.flush(5)
            with pytest.raises(postkey.StoreUnavailable, match="refused a write"):
                busy.get_async(f"{echo}/get")
        busy.close()
        spy.close()


@pytest.mark.parametrize("send", ["local", "workers"])
def test_no_async_wait_blocks_once_its_client_is_closed(
    redis_url: str, echo: str, send: str
) -> None:
    # The AsyncClient's own waits (a future per key, woken through the loop) after aclose():
    # they blocked for ever where the sync client's returned at once.
    async def main() -> tuple[postkey.Result, list[postkey.Result], object]:
        client = postkey.AsyncClient(store=redis_url, store_prefix=prefix(), send=send)
        key = await client.get_async(f"{echo}/delay/30000", timeout_ms=60_000)
        await client.aclose(drain=False)
        return await asyncio.wait_for(
            asyncio.gather(
                client.wait(key), client.wait_many([key]), client.cache_wait("none", None, "-")
            ),
            5,
        )

    one, many, value = asyncio.run(main())
    assert many[0].state is one.state and value == "-"


@pytest.mark.parametrize("send", ["local", "workers"])
def test_a_wait_on_a_store_that_went_down_raises_store_unavailable(hostile: str, send: str) -> None:
    # It reconnected forever: `postkey wait KEY` never exited while Redis was down.
    server = LocalRedis().start()
    waiter = Client(store=server.url, store_timeout_ms=500, lease_ms=1000)
    try:
        with Client(store=server.url, send=send, store_timeout_ms=500, lease_ms=1000) as sender:
            # local: another process's key (this client reads, the sender sends); workers: a
            # queued key no worker takes (this client's reply channels).
            key = sender.get_async(hostile + "/silent", timeout_ms=60_000)
            sender.flush()
            outcomes: list[object] = []

            def wait(call: Callable[[], object]) -> None:
                try:
                    outcomes.append(call())
                except postkey.StoreUnavailable as exc:
                    outcomes.append(exc)

            waits = [
                threading.Thread(target=wait, args=(lambda: waiter.wait(key, 60),)),
                threading.Thread(target=wait, args=(lambda: waiter.cache_wait("nothing", 60),)),
            ]
            if send == "workers":
                waits.append(threading.Thread(target=wait, args=(lambda: sender.wait(key, 60),)))
            for t in waits:
                t.start()
            time.sleep(0.5)
            started = time.monotonic()
            server.kill()
            for t in waits:
                t.join(20)
            assert len(outcomes) == len(waits), outcomes
            assert all(isinstance(o, postkey.StoreUnavailable) for o in outcomes), outcomes
            assert time.monotonic() - started < 10
            sender.close(drain=False)
    finally:
        waiter.close(drain=False)
        server.stop()


def test_an_async_wait_on_a_store_that_went_down_raises_store_unavailable(hostile: str) -> None:
    server = LocalRedis().start()

    async def main() -> None:
        async with postkey.AsyncClient(
            store=server.url, store_timeout_ms=500, lease_ms=1000
        ) as waiter:
            other = Client(store=server.url, store_timeout_ms=500, lease_ms=1000)
            key = other.get_async(hostile + "/silent", timeout_ms=60_000)
            other.flush()
            waits = asyncio.gather(
                waiter.wait(key, 60), waiter.cache_wait("nothing", 60), return_exceptions=True
            )
            await asyncio.sleep(0.5)
            started = time.monotonic()
            server.kill()
            outcomes = await asyncio.wait_for(waits, 20)
            assert all(isinstance(o, postkey.StoreUnavailable) for o in outcomes), outcomes
            assert time.monotonic() - started < 10
            other.close(drain=False)

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_an_outage_releases_waits_but_not_the_watches_of_on_done(hostile: str) -> None:
    from postkey._stores.base import STORE_DOWN

    heard: list[object] = []

    class OnDoneWatch:  # what Client's on_done watch is: not a wait
        outlives_outages = True

        def __call__(self, value: object) -> None:
            heard.append(value)

    waits: list[object] = []
    with LocalRedis() as url:
        reader = Client(store=url, lease_ms=1000)
        sender = Client(store=url, lease_ms=1000)
        key = sender.get_async(hostile + "/hold", timeout_ms=5000)
        sender.flush()
        store = reader._store  # type: ignore[attr-defined]
        store._hub.watch(key, "result", OnDoneWatch())
        store._hub.watch(key, "result", waits.append)
        store._hub.release_all(STORE_DOWN)  # as the hub does after give_up_s without Redis
        assert waits == [STORE_DOWN] and heard == []
        assert sender.wait(key, 5).status == 200
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(heard) == 1 and getattr(heard[0], "status", None) == 200
        sender.close()
        reader.close()
