"""The shared store on a real redis-server: keys readable and waitable from other processes, a
dead sender's keys end as worker_lost, a Redis that is not there gives a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import postkey
from postkey import Client, State


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


def test_another_process_waits_push_based_for_a_key_sent_here(redis_url: str, hostile: str) -> None:
    p = prefix()
    with Client(store=redis_url, store_prefix=p) as client:
        key = client.get_async(hostile + "/hold", timeout_ms=5000)  # answers after 300 ms
        waiter = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(
                    f"""
                    import time, postkey
                    with postkey.Client(store={redis_url!r}, store_prefix={p!r}) as c:
                        r = c.wait({key!r}, 10)
                        print(r.state, r.status, time.time())
                    """
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
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
        c = postkey.Client(store={redis_url!r}, store_prefix={p!r}, lease_ms=600)
        print(c.get_async({hostile + "/silent"!r}, timeout_ms=60000), flush=True)
        os._exit(0)  # dies with the request on the wire: no close, no result
        """
    )
    key = sender.stdout.strip()
    with Client(store=redis_url, store_prefix=p) as client:
        assert client.status(key) is State.PENDING  # the lease has not lapsed yet
        started = time.monotonic()
        result = client.wait(key, 10)
    assert result.state is State.FAILED and result.error_kind == "worker_lost"
    assert "lease" in (result.error or "")
    assert time.monotonic() - started < 5


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
