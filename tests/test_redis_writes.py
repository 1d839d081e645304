"""Script calls sent together (`call_scripts`) on a real redis-server: on one Redis the calls of
one script go as one call of its many form; each call still gets its own answer, one call's
error does not stop the others, a key's calls keep their order, and a flushed script cache is
refilled."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postkey._stores.redis_writes import call_scripts

from .spy import spy_client

_SET_AND_ANSWER = "redis.call('SET', KEYS[1], ARGV[1]); return tonumber(ARGV[2])"
# Appends ARGV[1] to a list at KEYS[1] (LPUSH on a string key is a WRONGTYPE error).
_APPEND = "return redis.call('RPUSH', KEYS[1], ARGV[1])"


@pytest.fixture
def client(single_redis_url: str) -> Any:
    c = spy_client(single_redis_url)
    yield c
    c.close()


def names(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"w{tag}:{i}" for i in range(n)]


def evalsha_calls(client: Any) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def test_each_call_of_a_script_sent_together_gets_its_own_answer(client: Any) -> None:
    script = client.register_script(_SET_AND_ANSWER)
    call_scripts(client, [(script, [k], ["", 0]) for k in names(2)])  # its many form loaded
    keys = names(50)
    before = evalsha_calls(client)
    answers = call_scripts(client, [(script, [k], [f"v{i}", i * 10]) for i, k in enumerate(keys)])
    assert answers == [i * 10 for i in range(50)]
    assert client.mget(keys) == [f"v{i}".encode() for i in range(50)]
    assert evalsha_calls(client) - before == 1  # one EVALSHA for all 50


def test_one_failing_call_does_not_stop_the_others(client: Any) -> None:
    script = client.register_script(_APPEND)
    keys = names(3)
    client.set(keys[1], "a string: RPUSH on it is a WRONGTYPE error")
    answers = call_scripts(client, [(script, [k], ["x"]) for k in keys])
    assert answers[0] == 1 and answers[2] == 1
    assert isinstance(answers[1], redis.ResponseError)
    assert "WRONGTYPE" in str(answers[1])
    assert client.lrange(keys[0], 0, -1) == [b"x"] and client.lrange(keys[2], 0, -1) == [b"x"]


def test_calls_of_one_key_run_in_the_order_they_were_made(client: Any) -> None:
    append = client.register_script(_APPEND)
    other = client.register_script("return redis.call('RPUSH', KEYS[1], 'other:' .. ARGV[1])")
    a, b = names(2)
    calls = [
        (append, [a], ["1"]),
        (other, [b], ["1"]),
        (other, [a], ["2"]),  # a's second call, of another script
        (append, [b], ["2"]),
        (append, [a], ["3"]),
    ]
    call_scripts(client, calls)
    assert client.lrange(a, 0, -1) == [b"1", b"other:2", b"3"]
    assert client.lrange(b, 0, -1) == [b"other:1", b"2"]


def test_calls_with_different_numbers_of_keys_are_answered_each(client: Any) -> None:
    script = client.register_script("return #KEYS * 100 + #ARGV")
    keys = names(4)
    calls = [(script, keys[:1], ["a"]), (script, keys[1:3], ["a", "b"]), (script, keys[3:], [])]
    assert call_scripts(client, calls) == [101, 202, 100]


def test_a_flushed_script_cache_is_refilled_and_each_call_runs_once(client: Any) -> None:
    script = client.register_script(_APPEND)
    keys = names(20)
    call_scripts(client, [(script, [k], ["first"]) for k in keys])
    client.script_flush()  # as a Redis restarted without persistence
    answers = call_scripts(client, [(script, [k], ["second"]) for k in keys])
    assert answers == [2] * 20
    assert all(client.lrange(k, 0, -1) == [b"first", b"second"] for k in keys)


@given(st.floats(min_value=0, max_value=4e9) | st.sampled_from([0.0, 1e-7, 1764250000.123456]))
def test_the_pending_record_made_from_fixed_parts_is_the_general_one(submitted_at: float) -> None:
    from postkey._stores import codec

    owner = "0123456789abcdef"
    made = codec.pending_record_of(owner)(submitted_at)
    assert made == codec.encode_pending(owner, None, submitted_at, "pending")
    assert codec.decode_pending(made)["submitted_at"] == submitted_at


def test_a_keys_calls_keep_their_order_when_a_script_must_be_loaded_again(client: Any) -> None:
    # The second script's single form is loaded, the first's many form is not: the first
    # meets NOSCRIPT, the second runs. The first is sent again, and so is every later call
    # on its keys (every script postkey sends can run twice), so k1 ends in order.
    append = client.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
    mark = client.register_script("return redis.call('RPUSH', KEYS[1], 'then:' .. ARGV[1])")
    warm = names(1)
    call_scripts(client, [(append, warm, ["x"])])
    call_scripts(client, [(mark, warm, ["x"])])
    client.script_flush()
    call_scripts(client, [(mark, warm, ["x"])])  # only `mark` is loaded now
    k1, k2 = names(2)
    calls = [(append, [k1], ["first"]), (append, [k2], ["first"]), (mark, [k1], ["second"])]
    call_scripts(client, calls)
    assert client.lrange(k1, 0, -1)[-2:] == [b"first", b"then:second"]
    assert client.lrange(k2, 0, -1) == [b"first"]


def test_calls_without_keys_are_answered_each(client: Any) -> None:
    script = client.register_script("return tonumber(ARGV[1]) * 2")
    assert call_scripts(client, [(script, [], [n]) for n in range(5)]) == [0, 2, 4, 6, 8]


def test_an_answer_that_starts_with_a_nul_byte_is_an_answer(client: Any) -> None:
    script = client.register_script("return '\\0' .. ARGV[1]")
    keys = names(3)
    answers = call_scripts(client, [(script, [k], ["x"]) for k in keys])
    assert answers == [b"\0x"] * 3


def test_writes_given_up_on_are_logged_with_their_keys_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A Redis of its own, stopped under the writer: its writes are retried for give_up_s, then
    # reported lost (with their keys), each completion gets None and flush() says so.
    from postkey._stores.redis_writes import WriteBehind
    from postkey.testing import LocalRedis

    server = LocalRedis().start()
    c = redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    script = c.register_script(_SET_AND_ANSWER)
    writes = WriteBehind(c, give_up_s=0.3)
    try:
        writes.put(script, ["first"], ["v", 1], None)
        assert writes.flush(5.0)
        assert c.get("first") == b"v"
        server.stop()
        answers: list[Any] = []
        keys = names(5)
        for i, k in enumerate(keys):
            writes.put(
                script, [k], ["v", i], (lambda _arg, a: answers.append(a)) if i % 2 else None
            )
        with caplog.at_level("WARNING", logger="postkey"):
            assert not writes.flush(10.0)
        assert answers == [None, None]  # the two with a completion
        said = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("5 writes to the store were lost") for m in said)
        # Each lost write named by its key (all five, not a sample).
        assert [m for m in said if m.startswith("lost: ")] == [
            f"lost: the write to {k}" for k in keys
        ]
        assert not writes.healthy
    finally:
        writes.close(1.0)
        c.close()
        server.stop()


# A call: (script 0..2, key 0..3 or None for a keyless call, value). Script 0 and 1 append to a
# list (1 with a second ARGV), script 2 counts its calls with no keys; appends answer the
# list's length, so every answer depends on the order of the calls before it on its key.
_CALL = st.tuples(st.integers(0, 2), st.integers(0, 3) | st.none(), st.integers(0, 99))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_CALL, min_size=1, max_size=40))
def test_any_batch_answers_as_if_its_calls_ran_one_by_one(
    single_redis_url: str, batch: list[tuple[int, int | None, int]]
) -> None:
    c = redis.Redis.from_url(single_redis_url)
    try:
        scripts = [
            c.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1])"),
            c.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1] .. ARGV[2])"),
            c.register_script("return redis.call('INCR', '{w}:count:' .. ARGV[1])"),
        ]
        # Each script and its many form loaded first: a call that meets NOSCRIPT is sent again
        # with the later calls on its keys, which these scripts (unlike postkey's) do not allow.
        # (The plain forms too: in a fresh Redis, a batch whose first call goes alone met
        # NOSCRIPT, and the many-form call sent again with it ran its other keys' calls twice.)
        for script in scripts:
            c.script_load(script.script)
        for script, args in ((scripts[0], ["w"]), (scripts[1], ["w", "w"])):
            call_scripts(c, [(script, [k], args) for k in names(2)])
        call_scripts(c, [(scripts[2], [], ["warm"])])
        pool = names(4)
        calls: list[tuple[Any, list[str], list[Any]]] = []
        expected: list[Any] = []
        lists: dict[str, list[bytes]] = {}
        counts: dict[str, int] = {}
        tag = pool[0]  # keyless calls count under this run's own name
        for script, key, value in batch:
            if script == 2 or key is None:
                calls.append((scripts[2], [], [tag]))
                counts[tag] = counts.get(tag, 0) + 1
                expected.append(counts[tag])
                continue
            name = pool[key]
            item = f"{value}" if script == 0 else f"{value}+"
            calls.append((scripts[script], [name], [str(value)] if script == 0 else [value, "+"]))
            lists.setdefault(name, []).append(item.encode())
            expected.append(len(lists[name]))
        assert call_scripts(c, calls) == expected
        for name, items in lists.items():
            assert c.lrange(name, 0, -1) == items
    finally:
        c.close()


def test_the_writer_keeps_its_connection_and_takes_another_after_redis_restarts() -> None:
    # The writer holds one connection of the pool between batches (no pool checkout, and so no
    # poll(), per batch); a Redis killed and started again breaks it, and the writes that met
    # that are sent again on a new one.
    from postkey._stores.redis_writes import WriteBehind
    from postkey.testing import LocalRedis

    server = LocalRedis().start()
    c = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    script = c.register_script(_SET_AND_ANSWER)
    writes = WriteBehind(c, give_up_s=20.0)
    try:
        for i, k in enumerate(names(20)):
            writes.put(script, [k], ["v", i], None)
        assert writes.flush(10.0)
        pool = c.connection_pool
        assert len(pool._in_use_connections) == 1  # held by the writer, not given back
        server.kill()
        server.start()
        answers: list[Any] = []
        keys = names(30)
        for i, k in enumerate(keys):
            writes.put(script, [k], ["again", i], lambda _arg, a: answers.append(a))
        assert writes.flush(15.0)
        assert answers == list(range(30))
        assert c.mget(keys) == [b"again"] * 30
        assert writes.healthy
    finally:
        writes.close(1.0)
        assert not c.connection_pool._in_use_connections  # given back when the writer ends
        c.close()
        server.stop()


def test_a_kept_connection_that_went_stale_is_replaced_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Redis closed the writer's kept connection while it was idle (CLIENT KILL here; a restart
    # or an idle timeout elsewhere): the next batch goes out on a new connection in the same
    # attempt, with no failed attempt, no backoff and no unhealthy writer in between. A failed
    # attempt always sleeps before the next one, so the writer's sleeps count its failures
    # (time.sleep is looked up at each call, on the compiled build too).
    from postkey._stores.redis_writes import WriteBehind
    from postkey.testing import LocalRedis

    backoffs: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "postkey-redis-writes":
            backoffs.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with LocalRedis() as url:
        c = redis.Redis.from_url(url, socket_timeout=2)
        admin = redis.Redis.from_url(url, socket_timeout=2)
        script = c.register_script(_SET_AND_ANSWER)
        writes = WriteBehind(c, give_up_s=20.0)
        try:
            writes.put(script, ["before"], ["v", 1], None)
            assert writes.flush(10.0)
            admin.ping()
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            answers: list[Any] = []
            writes.put(script, ["after"], ["v", 2], lambda _arg, a: answers.append(a))
            assert writes.flush(10.0)
            assert answers == [2] and c.get("after") == b"v"
            assert backoffs == []  # no failed attempt: the stale connection cost no backoff
            assert writes.healthy
        finally:
            writes.close(1.0)
            c.close()
            admin.close()
