"""Queued mode (send="workers") on a real redis-server with real `postkey worker` processes:
submits return at once, workers send, any process reads; delivery defaults; cancel from
anywhere; deadlines, drain at SIGTERM, poison requests, malformed entries, lost groups."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis as redis_py

import postkey
from postkey import Client, ErrorKind, State
from postkey._stores import codec
from postkey._stores.names import GROUP, SHARDS, Names

from .gateway_process import free_port
from .recording import RecordingServer
from .spy import spy_client
from .test_redis_store import run_python
from .workers import WorkerProcess


def prefix() -> str:
    return f"q{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """One redis-server for the queue's features; the tests marked ``BOTH`` run on a Redis
    Cluster too (as do the contract, the fault suite and tests/test_cluster.py), which keeps
    ``make test`` within its few minutes."""
    kind = getattr(request, "param", "redis")
    return str(request.getfixturevalue(f"{'single' if kind == 'redis' else 'cluster'}_redis_url"))


BOTH = pytest.mark.parametrize("redis_url", ["redis", "cluster"], indirect=True)


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def spawn(redis_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (stopped at the end, whatever happened)."""
    started: list[WorkerProcess] = []

    def start(p: str, *args: str, ready: bool = True, **settings: int | str) -> WorkerProcess:
        worker = WorkerProcess(redis_url, p, *args, **settings).start()
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        try:
            worker.stop(30)
        except AssertionError:
            pass


def queued(redis_url: str, p: str, **settings: object) -> Client:
    return Client(store=redis_url, store_prefix=p, send="workers", **settings)


def record_meta(redis_url: str, p: str, key: str) -> dict[str, object]:
    spy = spy_client(redis_url)
    try:
        raw = spy.get(Names(p).record(key))
    finally:
        spy.close()
    assert raw is not None
    return codec.decode_pending(raw)


def pending_entries(redis_url: str, p: str) -> int:
    spy = spy_client(redis_url)
    try:
        total = 0
        for shard in range(SHARDS):
            try:
                total += int(spy.xpending(Names(p).queue(shard), GROUP)["pending"])
            except redis_py.ResponseError:
                pass
        return total
    finally:
        spy.close()


def wait_until_sending(recorder: RecordingServer, count: int) -> None:
    """Until ``count`` requests are on the wire at the recording server at once."""
    deadline = time.monotonic() + 10
    while recorder.active < count:
        assert time.monotonic() < deadline, f"never {count} on the wire at once"
        time.sleep(0.02)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postkey", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@BOTH
def test_a_queued_request_is_sent_by_a_worker_and_read_from_another_process(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    spawn(p)
    with queued(redis_url, p) as client:
        key = client.post_async(echo + "/post", json={"n": 1})
        client.flush()
        read = run_python(
            f"""
            import postkey
            c = postkey.Client(store={redis_url!r}, store_prefix={p!r})
            r = c.wait({key!r}, 10)
            print(r.state.value, r.status, r.json()["json"])
            c.close()
            """
        )
        assert read.returncode == 0, read.stderr
        assert read.stdout.split() == ["done", "200", "{'n':", "1}"]
        assert client.get(key).json()["json"] == {"n": 1}


def test_the_cli_post_returns_the_key_at_once_and_a_worker_sends_it_later(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    env = {**os.environ, "POSTKEY_STORE": redis_url, "POSTKEY_STORE_PREFIX": p}
    started = time.monotonic()
    url = recorder.url + "/rec/cli"
    posted = cli("post", "--send", "workers", "--allow-private", url, "-d", "x", env=env)
    assert posted.returncode == 0, posted.stderr
    assert time.monotonic() - started < 10  # no worker runs yet: nothing waited for the send
    key = posted.stdout.strip()
    assert recorder.hits["cli"] == 0
    exists = cli("exists", key, env=env)
    assert (exists.returncode, exists.stdout.strip()) == (1, "false")
    spawn(p)
    waited = cli("wait", key, "--timeout", "10", env=env)
    assert waited.returncode == 0, waited.stderr
    assert "cli 1" in waited.stdout and recorder.hits["cli"] == 1


def test_the_mychat_names_queue_in_one_process_and_read_in_another(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    spawn(p)
    env = {
        **os.environ,
        "POSTKEY_STORE": redis_url,
        "POSTKEY_STORE_PREFIX": p,
        "POSTKEY_SEND": "workers",
    }
    sent = run_python(
        f"""
        from postkey.mychat import HTTPSendPostMessageAsync
        print(HTTPSendPostMessageAsync({echo + "/post"!r}, '{{"a": 1}}', "", 5000))
        """,
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    key = sent.stdout.strip().splitlines()[-1]
    assert key.startswith("httppost_async{")
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


def test_delivery_defaults_follow_the_method_and_the_idempotency_key(redis_url: str) -> None:
    p = prefix()
    url = "http://127.0.0.1:9/x"
    with queued(redis_url, p) as client:
        get = client.get_async(url)
        put = client.request_async("PUT", url, b"x")
        post = client.post_async(url, b"x")
        patch = client.request_async("PATCH", url, b"x")
        keyed = client.post_async(url, b"x", {"Idempotency-Key": "order-7"})
        forced = client.get_async(url, delivery="at_most_once")
        client.flush()
        expected = {
            get: "at_least_once",
            put: "at_least_once",
            post: "at_most_once",
            patch: "at_most_once",
            keyed: "at_least_once",
            forced: "at_most_once",
        }
        for key, delivery in expected.items():
            meta = record_meta(redis_url, p, key)
            assert meta["delivery"] == delivery and meta["queued"] is True
            assert client.status(key) is State.PENDING  # no worker runs
        with pytest.raises(postkey.InvalidRequest, match="delivery must be"):
            client.post_async(url, delivery="exactly_once")


def test_bad_input_is_refused_before_anything_is_queued(redis_url: str) -> None:
    p = prefix()
    with queued(redis_url, p) as client:
        with pytest.raises(postkey.InvalidURL):
            client.post_async("ftp://example.com/")
        with pytest.raises(postkey.InvalidHeader):
            client.post_async("http://127.0.0.1:9/", headers="X-A: 1\r\nX-B: 2\n\rX")
        with pytest.raises(postkey.InvalidTimeout):
            client.post_async("http://127.0.0.1:9/", timeout_ms=10**12)
        client.flush()
    assert pending_entries(redis_url, p) == 0
    spy = spy_client(redis_url)
    assert list(spy.scan_iter(match=f"{p}:*")) == []
    spy.close()


def test_queued_mode_needs_a_shared_store() -> None:
    with pytest.raises(postkey.InvalidValue, match="send='workers'"):
        Client(send="workers")
    with pytest.raises(postkey.InvalidValue, match="send must be"):
        Client(send="elsewhere")


def test_a_worker_without_a_store_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    done = cli("worker", env=env)
    assert done.returncode == 2 and "needs" not in done.stdout
    assert "Redis store" in done.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("claim_idle_ms", 1), ("claim_idle_ms", 499), ("lease_ms", 5), ("lease_ms", 10**12)],
)
def test_lease_times_that_would_spin_or_never_lapse_are_refused(name: str, value: int) -> None:
    # claim_idle_ms=1 made an idle worker renew in a hot loop (37,700 commands in 6 s).
    with pytest.raises(postkey.InvalidValue, match=f"{name} must be from"):
        postkey.Settings(**{name: value})
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    env[f"POSTKEY_{name.upper()}"] = str(value)
    done = cli("worker", "--store", "redis://127.0.0.1:1/0", env=env)
    assert done.returncode == 2 and f"{name} must be from" in done.stderr, done


def test_a_store_that_is_not_there_or_not_redis_is_exit_4_in_one_line(echo: str) -> None:
    # Exit 2 says "bad input, nothing sent": a script must tell a typo from an outage. A server
    # that does not speak Redis was a redis-py traceback (InvalidResponse).
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    http_port = echo.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    for url in (f"redis://127.0.0.1:{free_port()}/0", f"redis://127.0.0.1:{http_port}/0"):
        for args in (("get", "k"), ("wait", "k", "--timeout", "1"), ("cancel", "k")):
            done = cli(*args, "--store", url, env=env)
            assert done.returncode == 4, (url, args, done)
            assert done.stderr.startswith("postkey: error: the store "), done.stderr
            assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_key_holding_what_postkey_did_not_write_is_a_key_conflict(redis_url: str) -> None:
    # Another application (or a hostile one) shares the Redis and put a hash under a postkey
    # record's name: cancel and a submit under that key raised redis-py's WRONGTYPE error.
    p = prefix()
    spy = spy_client(redis_url)
    spy.hset(Names(p).record("victim"), "f", "v")
    spy.close()
    with Client(store=redis_url, store_prefix=p) as client:
        assert client.status("victim") == "unknown"
        with pytest.raises(postkey.KeyConflict, match="postkey did not write"):
            client.cancel("victim")
        with pytest.raises(postkey.KeyConflict, match="names a different request"):
            client.get_async("http://127.0.0.1:9/", key="victim")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    env["POSTKEY_STORE_PREFIX"] = p
    done = cli("cancel", "victim", "--store", redis_url, env=env)
    assert done.returncode == 2 and "postkey did not write" in done.stderr, done
    assert "Traceback" not in done.stderr


@BOTH
def test_cancel_from_another_process_ends_a_queued_key_and_it_is_never_sent(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    with queued(redis_url, p) as client:
        key = client.get_async(recorder.url + "/rec/never")
        client.flush()
        env = {**os.environ, "POSTKEY_STORE": redis_url, "POSTKEY_STORE_PREFIX": p}
        cancelled = cli("cancel", key, env=env)
        assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "true")
        result = client.get(key)
        assert result.state is State.FAILED and result.error_kind == "cancelled"
        again = cli("cancel", key, env=env)
        assert (again.returncode, again.stdout.strip()) == (1, "false")
        spawn(p)
        marker = client.get_async(recorder.url + "/rec/after")
        assert client.wait(marker, 10).status == 200  # the worker has read past it
    assert recorder.hits["never"] == 0
    assert pending_entries(redis_url, p) == 0


def test_cancel_stops_a_request_a_worker_is_sending(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    worker = spawn(p, claim_idle_ms=900)  # renewals (and cancel checks) every 0.3 s
    with queued(redis_url, p) as client:
        key = client.get_async(recorder.url + "/rec/slow?ms=20000", timeout_ms=30_000)
        deadline = time.monotonic() + 10
        while client.status(key) is not State.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.cancel(key)
        result = client.wait(key, 5)
        assert result.state is State.FAILED and result.error_kind == "cancelled"
        deadline = time.monotonic() + 5
        while pending_entries(redis_url, p) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending_entries(redis_url, p) == 0  # the worker let go of it
    assert worker.stop() == 0


def test_a_request_whose_deadline_passes_in_the_queue_is_never_sent(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    with queued(redis_url, p) as client:
        key = client.get_async(recorder.url + "/rec/late", timeout_ms=300)
        client.flush()
        time.sleep(0.5)
        spawn(p)
        result = client.wait(key, 10)
    assert result.state is State.FAILED and result.error_kind == "timeout"
    assert "before a worker" in (result.error or "")
    assert recorder.hits["late"] == 0


def test_sigterm_lets_in_flight_requests_finish_within_the_drain_time(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    worker = spawn(p, "--drain", "10")
    with queued(redis_url, p) as client:
        keys = [client.post_async(recorder.url + f"/rec/d{i}?ms=1000") for i in range(5)]
        deadline = time.monotonic() + 10
        while any(client.status(k) is not State.RUNNING for k in keys):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        worker.kill(signal.SIGTERM)
        assert worker.process is not None and worker.process.returncode == 0
        results = client.wait_many(keys, 1)
    assert [r.status for r in results] == [200] * 5
    assert pending_entries(redis_url, p) == 0


def test_past_the_drain_time_work_is_handed_back_or_ends_as_unknown_outcome(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    first = spawn(p, "--drain", "0.3")
    with queued(redis_url, p) as client:
        again = client.get_async(recorder.url + "/rec/again?ms=3000")
        once = client.post_async(recorder.url + "/rec/once?ms=3000")
        deadline = time.monotonic() + 10
        while recorder.hits["again"] + recorder.hits["once"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first.kill(signal.SIGTERM)
        # The POST may have reached the server: at-most-once never sends it again.
        lost = client.wait(once, 5)
        assert lost.state is State.FAILED and lost.error_kind == "unknown_outcome"
        assert client.status(again) is State.PENDING  # back in the queue
        spawn(p)
        result = client.wait(again, 10)
    assert result.status == 200 and result.text == "again 2"
    assert recorder.hits["once"] == 1
    assert pending_entries(redis_url, p) == 0


def test_at_the_cut_requests_never_sent_go_back_to_the_queue_whatever_their_delivery(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    # A worker holds more entries than it sends at once (they wait, started, for a slot).
    # Past the drain time, those were never sent: at-most-once or not, they go back to the
    # queue for another worker, instead of ending as unknown_outcome although nothing was sent.
    p = prefix()
    with queued(redis_url, p) as client:
        keys = [client.post_async(f"{recorder.url}/rec/p{i}?ms=1500") for i in range(12)]
        client.flush(10)
        first = spawn(p, "--concurrency", "4", "--drain", "0.5")
        wait_until_sending(recorder, 4)
        first.kill(signal.SIGTERM)
        assert len(recorder.arrivals) == 4
        on_the_wire = {rid for rid, _at in recorder.arrivals}
        results = dict(zip(keys, client.wait_many(keys, 0.1), strict=True))
        # The 4 on the wire may have reached the server: at-most-once ends them.
        cut = {k for k, r in results.items() if r.error_kind == "unknown_outcome"}
        assert len(cut) == 4
        assert sum(r.state is State.PENDING for r in results.values()) == 8
        spawn(p, "--concurrency", "8")
        later = client.wait_many([k for k in keys if k not in cut], 20)
    assert [r.status for r in later] == [200] * 8
    assert len(recorder.arrivals) == 12 and not recorder.duplicates()
    assert {rid for rid, _at in recorder.arrivals[4:]}.isdisjoint(on_the_wire)
    assert pending_entries(redis_url, p) == 0


def test_a_worker_with_a_small_concurrency_keeps_its_slots_busy(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    # Requests arriving one by one: a worker with room for fewer than 16 (one per shard)
    # still reads while it has room, up to its concurrency on the wire.
    p = prefix()
    spawn(p, "--concurrency", "4")
    with queued(redis_url, p) as client:
        keys = []
        for i in range(6):
            keys.append(client.get_async(f"{recorder.url}/rec/t{i}?ms=1500"))
            client.flush(10)
            time.sleep(0.1)
        results = client.wait_many(keys, 20)
    assert [r.status for r in results] == [200] * 6
    assert recorder.peak == 4


def test_a_retry_due_during_the_drain_is_sent_and_the_worker_stops(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    # A request on the wire at SIGTERM answers 503: its retry waits its backoff during the
    # drain, is sent, and the worker stops once it ends (the thread that releases held jobs
    # used to be gone by then, and the entry stayed pending until another worker took it).
    p = prefix()
    worker = spawn(p, "--drain", "10", retries=2)
    with queued(redis_url, p) as client:
        key = client.get_async(f"{recorder.url}/rec/r?ms=700&status=503&fail_first=1")
        wait_until_sending(recorder, 1)
        stopped_at = time.monotonic()
        worker.kill(signal.SIGTERM)
        took = time.monotonic() - stopped_at
        result = client.wait(key, 1)
    assert result.status == 200 and recorder.hits["r"] == 2
    assert took < 6, took
    assert pending_entries(redis_url, p) == 0


@pytest.mark.parametrize("names", [(), ("--name", "fixed")], ids=["own-names", "one-name"])
def test_a_request_that_keeps_killing_its_worker_ends_in_the_dead_letter_stream(
    redis_url: str,
    recorder: RecordingServer,
    spawn: Callable[..., WorkerProcess],
    names: tuple[str, ...],
) -> None:
    # "one-name": a supervisor restarts each killed worker under the same --name. Each restart
    # is still a new delivery, counted (it was sent again and again as the same attempt).
    p = prefix()
    settings = {"claim_idle_ms": 600, "max_deliveries": 2}
    with queued(redis_url, p) as client:
        key = client.get_async(recorder.url + "/rec/poison?ms=60000", timeout_ms=120_000)
        for attempt in (1, 2):
            worker = spawn(p, *names, **settings)
            deadline = time.monotonic() + 15
            while recorder.hits["poison"] < attempt:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.02)
            worker.kill()  # as if the request crashed it
        spawn(p, *names, **settings)  # takes the entry over: its third delivery
        result = client.wait(key, 15)
    assert result.state is State.FAILED and result.error_kind == "worker_lost"
    assert "dead-letter" in (result.error or "")
    assert recorder.hits["poison"] == 2
    spy = spy_client(redis_url)
    dead = [e for s in range(SHARDS) for e in spy.xrange(Names(p).dead(s))]
    spy.close()
    assert len(dead) == 1 and dead[0][1][b"k"].decode() == key
    assert pending_entries(redis_url, p) == 0


def test_a_worker_restarted_under_its_name_never_sends_an_at_most_once_request_again(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    # A supervisor (systemd, a StatefulSet) restarts a killed worker under the same --name. The
    # new one must not take the dead one's started entry for one of its own: that sent an
    # at-most-once POST twice.
    p = prefix()
    settings = {"claim_idle_ms": 600}
    worker = spawn(p, "--name", "fixed", **settings)
    with queued(redis_url, p) as client:
        key = client.post_async(recorder.url + "/rec/pay?ms=3000", "charge", timeout_ms=30_000)
        wait_until_sending(recorder, 1)
        worker.kill()
        spawn(p, "--name", "fixed", **settings)
        result = client.wait(key, 20)
    assert result.error_kind == "unknown_outcome", result.describe()
    time.sleep(3.5)  # a second send would have reached the server by now
    assert recorder.hits["pay"] == 1
    assert pending_entries(redis_url, p) == 0


@pytest.mark.parametrize("name", ["w#2", "", "a b", "x" * 101, "é"])
def test_a_worker_name_that_could_pass_for_another_is_refused(redis_url: str, name: str) -> None:
    # '#' ends the worker's name in the owner of a request it started (<name>#<attempt>).
    done = cli("worker", "--store", redis_url, "--name", name, env=dict(os.environ))
    assert done.returncode == 2, done
    assert "name is 1 to 100 letters, digits and '._-'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_entry_is_dropped_and_a_bad_payload_ends_its_key(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    names = Names(p)
    spy = spy_client(redis_url)
    spy.xadd(names.queue(0), {"junk": "1"})
    with queued(redis_url, p) as client:
        key = client.get_async(echo + "/get")
        client.flush()
        # Replace the queued payload with garbage, as a foreign writer might.
        stream = names.queue_of(key)
        entry_id = spy.xrange(stream)[-1][0]
        spy.xdel(stream, entry_id)
        spy.xadd(stream, {"k": key, "j": b"pk\x01J\x05\x00\x00\x00{bad"})
        worker = spawn(p)
        result = client.wait(key, 10)
        assert result.state is State.FAILED and result.error_kind == "internal"
        assert "bad" in (result.error or "")
        ok = client.get_async(echo + "/get")
        assert client.wait(ok, 10).status == 200  # the worker lives on
    assert worker.process is not None and worker.process.poll() is None
    assert pending_entries(redis_url, p) == 0
    spy.close()


@BOTH
def test_a_worker_makes_its_consumer_group_again_when_it_is_gone(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    worker = spawn(p)
    spy = spy_client(redis_url)
    for shard in range(SHARDS):
        spy.xgroup_destroy(Names(p).queue(shard), GROUP)
    with queued(redis_url, p) as client:
        key = client.get_async(echo + "/get")
        assert client.wait(key, 15).status == 200
    spy.close()
    log = worker.output()
    assert "consumer groups are gone" in log
    assert log.count("reading the queue failed") + log.count("groups are gone") < 20  # no hot loop


def test_on_done_and_the_async_client_work_in_queued_mode(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    spawn(p)
    seen: list[postkey.Result] = []
    with queued(redis_url, p) as client:
        key = client.get_async(echo + "/get", on_done=seen.append)
        assert client.wait(key, 10).status == 200
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [r.key for r in seen] == [key]

    async def main() -> list[int | None]:
        async with postkey.AsyncClient(store=redis_url, store_prefix=p, send="workers") as c:
            keys = [await c.get_async(echo + f"/get?i={i}") for i in range(20)]
            return [r.status for r in await c.wait_many(keys, 10)]

    assert asyncio.run(main()) == [200] * 20


def test_a_queued_requests_on_done_is_never_called_with_anything_but_a_result(
    redis_url: str, echo: str
) -> None:
    # close() wakes every wait of its client: the watch behind a queued request's on_done was
    # woken too, and the callback got postkey's internal "nothing" marker, not a Result (the
    # gateway, stopping, logged AttributeErrors from it).
    seen: list[object] = []
    client = queued(redis_url, prefix())
    client.get_async(echo + "/get", on_done=seen.append)  # no worker: still queued at close
    client.flush()
    client.close()
    time.sleep(0.3)
    assert seen == []


def test_a_queued_key_with_no_worker_at_all_ends_after_its_deadline(redis_url: str) -> None:
    from postkey._stores import redis as redis_store

    p = prefix()
    with queued(redis_url, p) as client:
        key = client.get_async("http://127.0.0.1:9/", timeout_ms=200)
        client.flush()
        old = redis_store.QUEUED_GRACE_S
        redis_store.QUEUED_GRACE_S = 0.1  # instead of a minute
        try:
            time.sleep(0.4)
            result = client.get(key)
        finally:
            redis_store.QUEUED_GRACE_S = old
    assert result.state is State.FAILED and result.error_kind == ErrorKind.TIMEOUT
    assert "no worker took" in (result.error or "")


def test_the_worker_logs_are_key_value_lines(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    worker = spawn(p)
    assert worker.stop() == 0
    lines = [line for line in worker.output().splitlines() if line.strip()]
    assert lines and all(line.startswith("ts=") and " level=" in line for line in lines)
    assert any("stopped: started=0" in line for line in lines)
    json.dumps(lines)  # plain text, nothing binary


@BOTH
def test_a_host_limit_holds_across_all_workers(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    for _ in range(2):  # each could send 64 at once on its own
        spawn(p, "--concurrency", "64", host_concurrency=2)
    with queued(redis_url, p) as client:
        keys = [client.get_async(f"{recorder.url}/rec/h{i}?ms=150") for i in range(12)]
        results = client.wait_many(keys, 20)
    assert [r.status for r in results] == [200] * 12
    assert recorder.peak == 2  # never more than the shared limit, and it was reached


@BOTH
def test_a_worker_takes_no_more_entries_than_it_may_hold(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    # Entries spread over all 16 shards. A read asks every shard's stream at once, and Redis
    # counts COUNT per stream: asking each for the room left took up to 16 times as many.
    p = prefix()
    with queued(redis_url, p) as client:
        keys = [client.get_async(f"{recorder.url}/rec/slow{i}?ms=3000") for i in range(120)]
        client.flush(10)
        spawn(p, "--concurrency", "4", "--drain", "0")  # its first read finds them all queued
        wait_until_sending(recorder, 4)
        time.sleep(0.5)  # reads that would take more have happened by now
        held = pending_entries(redis_url, p)
        for key in keys:
            client.cancel(key)
    assert recorder.peak == 4  # on the wire: exactly its concurrency
    # Started and waiting for a slot: as many again, and with room for fewer than one per
    # shard, a read takes one per shard: at most its concurrency plus 16.
    assert 4 <= held <= 4 + SHARDS, held


def test_a_429_with_retry_after_pauses_the_host_for_every_worker(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    for _ in range(2):
        spawn(p)
    with queued(redis_url, p) as client:
        first = client.get_async(f"{recorder.url}/rec/busy?status=429&retry_after=1")
        assert client.wait(first, 10).status == 429
        paused_at = time.monotonic()
        keys = [client.get_async(f"{recorder.url}/rec/after{i}") for i in range(6)]
        assert {r.status for r in client.wait_many(keys, 10)} == {200}
    later = [t for rid, t in recorder.arrivals if rid.startswith("after")]
    assert min(later) - paused_at >= 0.8  # both workers waited out the pause


def test_retries_are_opt_in_and_only_for_requests_that_may_repeat(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    spawn(p, retries=3)
    with queued(redis_url, p) as client:
        flaky = client.get_async(f"{recorder.url}/rec/flaky?status=503&fail_first=2")
        post = client.post_async(f"{recorder.url}/rec/post?status=503&fail_first=2", b"x")
        keyed = client.post_async(
            f"{recorder.url}/rec/keyed?status=502&fail_first=1", b"x", {"Idempotency-Key": "k1"}
        )
        results = client.wait_many([flaky, post, keyed], 20)
    assert [r.status for r in results] == [200, 503, 200]
    assert (recorder.hits["flaky"], recorder.hits["post"], recorder.hits["keyed"]) == (3, 1, 2)


def test_absurd_queue_settings_are_refused() -> None:
    with pytest.raises(postkey.InvalidValue, match="retries must be <= 100"):
        postkey.Settings(retries=10**9)
    with pytest.raises(postkey.InvalidValue, match="host_concurrency must be >= 0"):
        postkey.Settings(host_concurrency=-1)


@BOTH
def test_every_lua_script_compiles(redis_url: str) -> None:
    # A script that does not compile fails only when first called, deep in a worker's loop.
    from postkey._stores import redis as redis_store
    from postkey._stores import redis_limits, redis_queue

    spy = spy_client(redis_url)
    scripts = redis_queue.QueueScripts(spy)
    sources = [
        getattr(scripts, name).script
        for name in ("enqueue", "start", "finish", "handback", "end_pending")
    ]
    sources += [
        redis_queue.with_announce(redis_store._FINISH),
        redis_queue.with_announce(redis_store._CACHE_SET),
        redis_store._REGISTER,
        redis_store._CACHE_DELETE,
    ]
    sources += [
        value
        for name, value in vars(redis_limits).items()
        if name.isupper() and name.startswith("_") and isinstance(value, str) and "redis." in value
    ]
    for source in sources:
        assert len(spy.script_load(source)) == 40
    spy.close()


def test_a_wait_on_an_own_queued_key_no_worker_takes_ends_after_its_deadline(
    redis_url: str,
) -> None:
    from postkey._stores import redis as redis_store

    p = prefix()
    old = redis_store.QUEUED_GRACE_S
    redis_store.QUEUED_GRACE_S = 0.1  # instead of a minute
    try:
        with queued(redis_url, p) as client:
            key = client.get_async("http://127.0.0.1:9/", timeout_ms=200)
            started = time.monotonic()
            result = client.wait(key, 10)  # a reply waiter: the rechecks must end it
    finally:
        redis_store.QUEUED_GRACE_S = old
    assert result.state is State.FAILED and result.error_kind == "timeout"
    assert time.monotonic() - started < 5


def test_cancel_right_after_a_queued_submit_cancels_it(
    redis_url: str, recorder: RecordingServer, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    with queued(redis_url, p) as client:
        cancelled = []
        for i in range(20):
            key = client.post_async(f"{recorder.url}/rec/c{i}?ms=500", b"x")
            cancelled.append(client.cancel(key))  # its record may not have landed yet
            assert client.wait(key, 10).error_kind == "cancelled"
        spawn(p)  # a worker now finds them ended: none is sent
        marker = client.get_async(f"{recorder.url}/rec/marker")
        assert client.wait(marker, 10).status == 200
    assert cancelled == [True] * 20
    assert set(recorder.hits) == {"marker"}


def test_an_entry_whose_key_is_not_a_key_is_dropped_and_the_worker_lives_on(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    worker = spawn(p)
    spy = spy_client(redis_url)
    for shard in range(SHARDS):
        spy.xadd(Names(p).queue(shard), {"k": b"\xff\xfe", "j": b"junk"})
        spy.xadd(Names(p).queue(shard), {"k": "no spaces allowed", "j": b"junk"})
    with queued(redis_url, p) as client:
        key = client.get_async(echo + "/get")
        assert client.wait(key, 10).status == 200
    assert worker.process is not None and worker.process.poll() is None
    assert "is not a postkey request" in worker.output()
    assert pending_entries(redis_url, p) == 0
    spy.close()


def test_flush_says_when_keys_never_reached_redis(echo: str) -> None:
    from postkey.testing import LocalRedis

    server = LocalRedis()
    url = server.start().url
    try:
        client = Client(store=url, send="workers", store_timeout_ms=300, lease_ms=1000)
        client.get_async(echo + "/get")
        client.flush(5)
        server.kill()
        key = client.get_async(echo + "/get")  # Redis has not failed a call yet: written behind
        with pytest.raises(postkey.StoreUnavailable):
            client.flush(10)
        server.start()  # empty: only this process knows the key, and how it ended
        result = client.get(key)
        assert result.state is State.FAILED and result.error_kind == "not_queued"
        client.close()
    finally:
        server.stop()


def test_the_cli_prints_the_key_and_exits_0_for_a_queued_request_whatever_its_outcome(
    redis_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    p = prefix()
    spawn(p)
    env = {**os.environ, "POSTKEY_STORE": redis_url, "POSTKEY_STORE_PREFIX": p}
    # It fails at the worker (nothing listens there): the submit still succeeded, and its
    # outcome is read later.
    posted = cli("request", "GET", "http://0.0.0.0:9/", "--send", "workers", env=env)
    assert posted.returncode == 0 and posted.stderr == ""
    key = posted.stdout.strip()
    waited = cli("wait", key, "--timeout", "10", env=env)
    assert waited.returncode == 1 and "failed" in waited.stderr


def test_a_start_that_runs_twice_for_one_entry_is_one_attempt(redis_url: str) -> None:
    from postkey._stores.redis_queue import WorkQueue

    p = prefix()
    with queued(redis_url, p) as client:
        key = client.get_async("http://127.0.0.1:9/")
        client.flush()
    spy = spy_client(redis_url)
    queue = WorkQueue(spy, Names(p), "w1")
    queue.ensure_groups()
    [(shard, entry_id, _fields)] = queue.read(10, None)
    keys, args = queue.start_args(shard, [(key, entry_id)], 3, (60_000, 60_000))
    first = queue.scripts.start(keys, args)
    again = queue.scripts.start(keys, args)  # as a retry after a lost answer would
    assert first[0][0] == again[0][0] == b"go" and first[0][2] == again[0][2] == b"w1#1"
    assert record_meta(redis_url, p, key)["attempt"] == 1
    spy.close()


def test_a_submit_retried_after_its_first_try_landed_is_queued_once(single_redis_url: str) -> None:
    # While Redis is unhealthy, submits write synchronously; redis-py retries a call whose
    # answer was lost, and the retry finds the record its first try made. A key postkey made
    # cannot collide, so that is this very submit: queued once, never a KeyConflict.
    from postkey._job import Job
    from postkey._keys import new_key
    from postkey._request import build_request
    from postkey._stores.delivery import AT_MOST_ONCE

    with Client(store=single_redis_url, send="workers") as client:
        store = client._store_
        store._writes.healthy = False  # the synchronous path
        request = build_request(
            "GET",
            "http://127.0.0.1:9/x",
            None,
            None,
            5000,
            max_timeout_ms=60_000,
            max_body_bytes=1024,
        )
        job = Job(new_key(), request)
        assert store.enqueue(job, False, AT_MOST_ONCE)
        assert store.enqueue(job, False, AT_MOST_ONCE)  # the retry: no KeyConflict
        assert client.status(job.key) is State.PENDING
        client.cancel(job.key)


@contextlib.contextmanager
def queued_and_observer(
    redis_url: str, spawn: Callable[..., WorkerProcess]
) -> Iterator[tuple[Client, Client]]:
    """A queued client with a worker, and a plain client of the same prefix to look on."""
    p = prefix()
    spawn(p)
    with queued(redis_url, p) as client, Client(store=redis_url, store_prefix=p) as observer:
        yield client, observer


def _heard_by(client: Client, observer: Client, keys: list[str]) -> None:
    """Once ``keys`` (queued by ``client``) have ended, as ``observer`` sees, and ``client`` has
    heard their announcements on its reply channels (nobody there waits for them yet)."""
    client.flush()
    assert all(r.state is State.DONE for r in observer.wait_many(keys, 20))
    time.sleep(0.3)  # the announcements arrive meanwhile


def test_results_heard_before_the_wait_are_not_read_from_redis_again(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    with queued_and_observer(redis_url, spawn) as (client, observer):
        # Its reply channels confirmed first: an end announced before that is not heard (and
        # is read, rightly), which a loaded machine can make happen to the first keys.
        client.wait(client.post_async(echo + "/post"), 20)
        keys = [client.post_async(echo + "/post", json={"n": i}) for i in range(20)]
        _heard_by(client, observer, keys)
        spy = spy_client(redis_url)
        try:
            spy.execute_command("CLIENT", "PAUSE", 3000, "ALL")  # any read would stall 3 s
            started = time.monotonic()
            results = client.wait_many(keys, 10)
            took = time.monotonic() - started
            spy.execute_command("CLIENT", "UNPAUSE")
        finally:
            spy.close()
        assert [r.json()["json"]["n"] for r in results] == list(range(20))
        assert took < 1.5, f"{took:.2f} s: the wait read Redis for results it had heard"


def test_a_heard_result_taken_or_expired_is_not_handed_out_again(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    with queued_and_observer(redis_url, spawn) as (client, observer):
        taken = client.post_async(echo + "/post", json={"n": 1})
        short = client.post_async(echo + "/post", json={"n": 2}, ttl_ms=300)
        _heard_by(client, observer, [taken, short])
        assert client.get(taken, take=True).state is State.DONE
        assert client.wait(taken, 2).state is State.UNKNOWN  # as get() says: taken
        time.sleep(0.5)  # past the short one's TTL
        assert client.wait(short, 2).state is State.EXPIRED


def test_stray_or_unreadable_reply_announcements_never_end_a_wait(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    # Anyone who can publish on a reply channel can send anything: a "read it" note for a key
    # still queued, a record that does not decode, garbage. None of it may end a wait (nor
    # stop the thread that hears them); the real results still do.
    import struct
    import threading

    from postkey._stores.names import shard_of

    def frame(raw: bytes) -> bytes:
        return struct.pack("<I", len(raw)) + raw

    p = prefix()
    with queued(redis_url, p) as client:
        keys = [client.get_async(echo + f"/get?i={i}") for i in range(3)]
        client.flush()
        store = client._store_
        got: list[list[postkey.Result]] = []
        waiting = threading.Thread(target=lambda: got.append(client.wait_many(keys, 30)))
        waiting.start()
        time.sleep(0.3)
        bad_record = (
            codec.RECORD_MAGIC
            + b"R"
            + codec.RESULT_HEAD.pack(0, 0, 200, 1, b"\0" * 36, 0, 2, 0, 0)
            + b"\xff\xfe"
        )  # a fingerprint that is not UTF-8
        spy = spy_client(redis_url)
        try:
            for key in keys:
                channel = store._names.reply(shard_of(key), store.reply_id)
                for note in (
                    key.encode() + b"\nr",
                    b"*" + frame(key.encode() + b"\n" + bad_record),
                    b"*" + frame(key.encode() + b"\nr") + struct.pack("<I", 2**32 - 1) + b"abc",
                    b"*" + frame(b"no newline") + frame(b"\xff\xfe\n\x00"),
                ):
                    spy.spublish(channel, note)
        finally:
            spy.close()
        time.sleep(0.5)
        assert waiting.is_alive(), "a stray announcement ended the wait"
        spawn(p)
        waiting.join(30)
        assert got and [r.state for r in got[0]] == [State.DONE] * 3
        assert store._hub._runner.is_alive()


def test_a_wait_that_fails_on_a_read_leaves_nothing_registered(redis_url: str, echo: str) -> None:
    p = prefix()
    with queued(redis_url, p) as client, Client(store=redis_url, store_prefix=p) as other:
        queued_keys = [client.get_async(echo + "/get") for _ in range(3)]  # no worker runs
        client.flush()
        theirs = other.get_async(echo + "/delay/20000", timeout_ms=30_000)
        other.flush()
        replies = client._store_._replies
        with replies._lock:
            for key in queued_keys:
                replies._mine[key] = False  # as after a reconnect: each is read once more

        def store_down(keys: list[str]) -> list[postkey.Result]:
            raise postkey.StoreUnavailable("the store went away between two reads")

        replies._read_many = store_down  # type: ignore[method-assign]
        with pytest.raises(postkey.StoreUnavailable):
            client.wait_many([*queued_keys, theirs], 5)
        assert replies._waiters == {}
        assert client._store_._hub._waiters == {}
        other.close(drain=False)


def test_a_submitter_of_an_earlier_version_hears_one_announcement_per_message(
    redis_url: str, echo: str, spawn: Callable[..., WorkerProcess]
) -> None:
    # Its reply id does not say it reads several announcements in one message (REPLY_BATCH):
    # workers that end many of its keys at once still announce each alone.
    p = prefix()
    with queued(redis_url, p) as client:
        store = client._store_
        store.reply_id = store._replies._reply_id = store.owner  # as before BATCHED_REPLIES
        spy = redis_py.Redis.from_url(redis_url)
        listener = spy.pubsub()
        try:
            names = Names(p)
            listener.ssubscribe(*{names.reply(i, store.owner) for i in range(SHARDS)})
            keys = [client.get_async(echo + f"/get?i={i}") for i in range(60)]
            spawn(p)
            results = client.wait_many(keys, 30)
            heard: list[bytes] = []
            deadline = time.monotonic() + 5
            while len(heard) < len(keys) and time.monotonic() < deadline:
                message = listener.get_message(timeout=0.2)
                if message and message["type"] == "smessage":
                    heard.append(message["data"])
        finally:
            listener.close()
            spy.close()
    assert [r.state for r in results] == [State.DONE] * len(keys)
    assert not [m for m in heard if m.startswith(b"*")]
    assert sorted(m.partition(b"\n")[0].decode() for m in heard) == sorted(keys)
