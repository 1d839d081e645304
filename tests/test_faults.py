"""Faults from outside the engine's control end only the request they belong to.

User code that raises or answers nonsense (resolvers, callbacks), a slow host, a stuck resolver,
races between submitters: every key issued still reaches exactly one terminal result, and the
engine keeps serving everything else.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections import Counter
from urllib.parse import urlsplit

import pytest

import postkey
from postkey import Client, ErrorKind, QueueFull, State

from .servers import HostileServer


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


# -- user code: resolvers --------------------------------------------------------------------


def test_a_resolver_answer_that_is_not_a_list_fails_only_its_own_request(hostile: str) -> None:
    port = _port(hostile)

    def resolver(name: str) -> object:
        if name == "bad.test":
            return ipaddress.ip_address("127.0.0.1")  # one address, not a list of them
        return ["127.0.0.1"]

    with Client(resolver=resolver) as c:  # type: ignore[arg-type]
        others = [c.get_async(f"http://good.test:{port}/hold", timeout_ms=5000) for _ in range(20)]
        time.sleep(0.05)  # the others are in flight
        bad = c.get_async(f"http://bad.test:{port}/hold", timeout_ms=5000)
        result = c.wait(bad, 5)
        assert result.state is State.FAILED and result.error_kind == ErrorKind.DNS
        assert "IPv4Address" in (result.error or ""), result.error
        assert [r.status for r in c.wait_many(others, 5)] == [200] * 20
        assert not c.closed
        assert (
            c.wait(c.get_async(f"http://good.test:{port}/hold", timeout_ms=5000), 5).status == 200
        )


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (["2130706433"], "2130706433"),
        (["not an address"], "not an address"),
        ("127.0.0.1", "a str"),
        ([], "no address"),
        ([None], "None"),
        (["fe80::1%lo"], "zone id"),
    ],
)
def test_a_resolver_answer_libcurl_cannot_use_ends_as_dns(
    hostile: str, answer: object, says: str
) -> None:
    with Client(resolver=lambda name: answer) as c:  # type: ignore[arg-type,return-value]
        result = c.wait(c.get_async(f"http://x.test:{_port(hostile)}/hold", timeout_ms=3000), 5)
    assert result.state is State.FAILED
    assert result.error_kind == ErrorKind.DNS, result
    assert says in (result.error or ""), result.error


def test_a_resolver_raising_base_exceptions_fails_only_its_request(hostile: str) -> None:
    class Odd(BaseException):
        pass

    def resolver(name: str) -> list[str]:
        if name == "exit.test":
            raise SystemExit(3)
        if name == "odd.test":
            raise Odd("odd")
        return ["127.0.0.1"]

    port = _port(hostile)
    with Client(resolver=resolver) as c:
        bad = [
            c.get_async(f"http://{n}:{port}/hold", timeout_ms=3000)
            for n in ("exit.test", "odd.test")
        ]
        assert [r.error_kind for r in c.wait_many(bad, 5)] == [ErrorKind.DNS, ErrorKind.DNS]
        good = c.get_async(f"http://ok.test:{port}/hold", timeout_ms=3000)
        assert c.wait(good, 5).status == 200


def test_slow_names_past_their_deadline_do_not_starve_a_fast_name(hostile: str) -> None:
    release = threading.Event()
    port = _port(hostile)

    def resolver(name: str) -> list[str]:
        if name.startswith("slow"):
            release.wait(10)
        return ["127.0.0.1"]

    try:
        with Client(resolver=resolver) as c:
            slow = [
                c.get_async(f"http://slow{i}.test:{port}/hold", timeout_ms=300) for i in range(40)
            ]
            assert {r.error_kind for r in c.wait_many(slow, 5)} == {ErrorKind.TIMEOUT}
            # every resolver thread that was ever started is still stuck in a slow lookup
            started = time.monotonic()
            fast = c.wait(c.get_async(f"http://fast.test:{port}/hold", timeout_ms=3000), 5)
            assert fast.status == 200, fast
            assert time.monotonic() - started < 2.0
    finally:
        release.set()


def test_a_fast_lookup_never_waits_behind_a_slow_one(hostile: str) -> None:
    port = _port(hostile)
    release = threading.Event()

    def resolver(name: str) -> list[str]:
        if name == "slow.test":
            release.wait(10)
        return ["127.0.0.1"]

    try:
        with Client(resolver=resolver) as c:
            # one resolver thread exists and is idle when the two lookups arrive back to back
            assert c.wait(c.get_async(f"http://warm.test:{port}/hold", timeout_ms=3000), 5).ok
            time.sleep(0.2)
            c.get_async(f"http://slow.test:{port}/hold", timeout_ms=5000)
            fast = c.wait(c.get_async(f"http://fast.test:{port}/hold", timeout_ms=2000), 5)
            assert fast.status == 200, fast
    finally:
        release.set()


def test_a_burst_for_one_name_costs_one_lookup_and_keeps_its_deadlines(hostile: str) -> None:
    calls: list[str] = []

    def resolver(name: str) -> list[str]:
        calls.append(name)
        return ["127.0.0.1"]

    with Client(resolver=resolver, max_queue=5000) as c:
        started = time.monotonic()
        keys = [
            c.get_async(f"http://one.test:{_port(hostile)}/silent", timeout_ms=50)
            for _ in range(3000)
        ]
        finals = c.wait_many(keys, 10)
        took = time.monotonic() - started
        assert {r.error_kind for r in finals} == {ErrorKind.TIMEOUT}
        assert took < 1.0, took  # each ends near its own 50 ms deadline, not behind the others
        assert len(calls) < 300, len(calls)  # concurrent jobs for one name share a lookup


def test_an_answer_is_reused_for_resolver_cache_ms_and_a_failure_is_not(hostile: str) -> None:
    calls: list[str] = []
    failing = {"flaky.test"}

    def resolver(name: str) -> list[str]:
        calls.append(name)
        if name in failing:
            failing.discard(name)
            raise OSError("temporary failure")
        return ["127.0.0.1"]

    port = _port(hostile)  # its /fast answers 404 at once
    with Client(resolver=resolver, resolver_cache_ms=400) as c:
        for _ in range(5):  # one after another: no lookup in flight to share
            assert (
                c.wait(c.get_async(f"http://a.test:{port}/fast", timeout_ms=3000), 5).status == 404
            )
        assert calls == ["a.test"]
        time.sleep(0.5)  # the answer is older than resolver_cache_ms: asked again
        assert c.wait(c.get_async(f"http://a.test:{port}/fast", timeout_ms=3000), 5).status == 404
        assert calls == ["a.test", "a.test"]
        first = c.wait(c.get_async(f"http://flaky.test:{port}/fast", timeout_ms=3000), 5)
        assert first.error_kind is ErrorKind.DNS
        assert (
            c.wait(c.get_async(f"http://flaky.test:{port}/fast", timeout_ms=3000), 5).status == 404
        )
    with Client(resolver=resolver, resolver_cache_ms=0) as c:
        calls.clear()
        for _ in range(3):
            assert (
                c.wait(c.get_async(f"http://b.test:{port}/fast", timeout_ms=3000), 5).status == 404
            )
        assert calls == ["b.test"] * 3


def test_an_answer_that_raises_while_read_fails_its_requests_and_leaks_nothing(
    hostile: str,
) -> None:
    def resolver(name: str) -> object:
        if name == "bad.test":

            def answer() -> object:
                raise SystemExit("boom")
                yield "127.0.0.1"

            return answer()
        return ["127.0.0.1"]

    port = _port(hostile)
    with Client(resolver=resolver) as c:  # type: ignore[arg-type]
        bad = [c.get_async(f"http://bad.test:{port}/hold", timeout_ms=3000) for _ in range(300)]
        finals = c.wait_many(bad, 5)
        assert {(r.error_kind, "SystemExit" in (r.error or "")) for r in finals} == {
            (ErrorKind.DNS, True)
        }
        resolutions = c._engine._resolutions
        assert resolutions is not None and resolutions._abandoned == 0
        assert c.wait(c.get_async(f"http://good.test:{port}/hold", timeout_ms=3000), 5).ok


# -- the engine loop itself ----------------------------------------------------------------------


class _EngineBug(BaseException):
    """Stands in for a defect inside the engine loop (nothing outside can raise there)."""


def test_if_the_engine_loop_dies_every_key_ends_and_the_client_says_closed(hostile: str) -> None:
    c = postkey.default_client()
    keys = [c.get_async(hostile + "/silent", timeout_ms=20000) for _ in range(5)]
    time.sleep(0.1)
    engine = c._engine

    class BrokenMulti:
        """libcurl's multi handle, but perform() raises (the engine's own classes may be
        compiled and cannot be patched; the handle they hold is a plain object)."""

        def __init__(self, real: object) -> None:
            self.real = real

        def perform(self) -> None:
            raise _EngineBug("boom")

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    engine._transfers._multi = BrokenMulti(engine._transfers._multi)
    engine._wake()
    engine._runner.join(10)
    assert not engine._runner.is_alive()
    finals = [c.get(k) for k in keys]
    assert {(r.state, r.error_kind) for r in finals} == {(State.FAILED, ErrorKind.INTERNAL)}
    assert "boom" in (finals[0].error or "")
    assert c.closed
    with pytest.raises(postkey.ClientClosed, match="internal error"):
        c.get_async(hostile + "/hold")
    fresh = postkey.default_client()
    assert fresh is not c
    assert fresh.wait(postkey.get_async(hostile + "/hold", timeout_ms=5000), 5).status == 200
    postkey.close(drain=False)


# -- callbacks -----------------------------------------------------------------------------------


def test_a_callback_raising_systemexit_does_not_stop_later_callbacks(echo: str) -> None:
    seen: list[int] = []

    def make(i: int) -> postkey._client.OnDone:
        def cb(result: postkey.Result) -> None:
            seen.append(i)
            if i == 0:
                raise SystemExit(1)
            if i == 1:
                raise GeneratorExit

        return cb

    with Client() as c:
        for i in range(5):
            c.wait(c.post_async(echo + "/cb", b"x", None, 5000, on_done=make(i)), 5)
    assert seen == [0, 1, 2, 3, 4]


def test_the_callback_backlog_is_bounded_and_says_so(echo: str) -> None:
    gate = threading.Event()
    ran: list[str] = []

    def slow(result: postkey.Result) -> None:
        gate.wait(10)
        ran.append(result.key)

    with Client(max_callback_backlog=50) as c:
        # one callback runs (stuck), fifty results wait for theirs
        keys = [c.post_async(echo + "/b", b"x", None, 5000, on_done=slow) for _ in range(51)]
        c.wait_many(keys, 5)
        time.sleep(0.1)
        with pytest.raises(QueueFull, match="max_callback_backlog=50"):
            c.post_async(echo + "/b", b"x", None, 5000, on_done=slow)
        # requests without a callback are not held up
        assert c.wait(c.post_async(echo + "/b", b"x", None, 5000), 5).status == 200
        gate.set()
    assert sorted(ran) == sorted(keys)


def test_close_waits_for_a_stuck_callback_only_as_long_as_allowed(
    echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    c = Client(callback_grace_ms=300)
    try:
        keys = [
            c.post_async(echo + "/c", b"x", None, 5000, on_done=lambda r: gate.wait(30))
            for _ in range(3)
        ]
        c.wait_many(keys, 5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="postkey"):
            c.close()
        assert time.monotonic() - started < 2.0
        assert any("callback" in r.getMessage() for r in caplog.records), caplog.records
    finally:
        gate.set()


# -- races ---------------------------------------------------------------------------------------


def test_a_caller_key_racing_a_full_queue_is_never_left_unknown(hostile: str) -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    bad: list[tuple[str, State]] = []
    try:
        with Client(max_in_flight=1, max_queue=1) as c:
            c.get_async(hostile + "/silent", timeout_ms=30000)  # holds the only slot
            for n in range(150):
                key = f"race-{n}"
                got: list[str] = []

                def submit(key: str = key, got: list[str] = got) -> None:
                    try:
                        got.append(c.get_async(hostile + "/silent", timeout_ms=30000, key=key))
                    except QueueFull:
                        pass

                threads = [threading.Thread(target=submit) for _ in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if got and c.status(key) is State.UNKNOWN:
                    bad.append((key, c.status(key)))
                for k in got:
                    c.cancel(k)
            c.close(drain=False)
    finally:
        sys.setswitchinterval(old)
    assert not bad, bad[:5]


# -- the queue, cancelled jobs and memory ----------------------------------------------------


def test_cancelled_queued_jobs_free_their_queue_places_and_bodies(hostile: str) -> None:
    with Client(max_in_flight=1, max_queue=5) as c:
        c.get_async(hostile + "/silent", timeout_ms=30000)
        time.sleep(0.1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            queued = [
                c.post_async(hostile + "/silent", bytes(4 << 20), None, 30000) for _ in range(5)
            ]
            for key in queued:
                assert c.cancel(key)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 2 << 20, f"{held} bytes still held by 5 cancelled 4 MiB bodies"
        # the five places are free again
        again = [c.get_async(hostile + "/silent", timeout_ms=30000) for _ in range(5)]
        assert all(c.status(k) is State.PENDING for k in again)
        c.close(drain=False)


def test_a_cancelled_transfer_drops_what_it_had_received(hostile: str) -> None:
    with Client() as c:
        key = c.get_async(hostile + "/drip", timeout_ms=30000)
        time.sleep(1.5)  # headers and a byte or two arrived
        assert c.cancel(key)
        time.sleep(0.1)
        for handle in c._engine._transfers._idle:
            assert not handle.body_parts and not handle.head_lines


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "dropped"])
def test_a_client_that_is_gone_frees_its_store(closed: bool) -> None:
    # The exit hook tracks every store (to release its waiters at exit): that must not keep the
    # store of a client nobody holds any more, closed or simply dropped.
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        c = Client()
        for i in range(8):
            c.cache_set(f"v{i}", bytes(1 << 20))
        if closed:
            c.close()
        del c
        # A dropped client's engine thread ends on its own soon after (it holds the store
        # until then): give it a few seconds, collecting as it goes.
        deadline = time.monotonic() + 10
        while True:
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            if held < 2 << 20 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        tracemalloc.stop()
    assert held < 2 << 20, f"{held / 2**20:.1f} MiB of a gone client's store still held"


def test_memoised_parsing_does_not_keep_large_inputs_alive(echo: str) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with Client() as c:
            long_path = "a" * 7000
            block = "\r\n".join(f"X-H{i}: " + "v" * 300 for i in range(90))
            keys = [c.post_async(f"{echo}/{long_path}{i}", b"x", block, 5000) for i in range(1500)]
            c.wait_many(keys, 30)
            c.cache_clear()
        del keys
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 8 << 20, f"{held / 2**20:.1f} MiB retained after the client closed"


# -- one slow host -------------------------------------------------------------------------------


def test_a_silent_host_holds_at_most_its_own_share(echo: str, hostile: str) -> None:
    with Client(max_in_flight=8, max_per_host=4) as c:
        silent = [c.get_async(hostile + "/silent", timeout_ms=4000) for _ in range(40)]
        time.sleep(0.1)
        started = time.monotonic()
        fast = [c.post_async(echo + f"/f{i}", b"x", None, 10000) for i in range(50)]
        assert [r.status for r in c.wait_many(fast, 10)] == [200] * 50
        assert time.monotonic() - started < 2.0
        for key in silent:
            c.cancel(key)


def test_requests_waiting_for_their_host_end_at_their_own_deadline(hostile: str) -> None:
    with Client(max_per_host=1) as c:
        c.get_async(hostile + "/silent", timeout_ms=10000)
        time.sleep(0.1)
        started = time.monotonic()
        waiting = c.wait(c.get_async(hostile + "/silent", timeout_ms=500), 5)
        assert waiting.error_kind == ErrorKind.TIMEOUT
        assert time.monotonic() - started < 1.5
        c.close(drain=False)


def test_plain_http_requests_to_one_host_open_their_own_connections() -> None:
    server = HostileServer().start()
    try:
        with Client(max_per_host=8) as c:
            keys = [c.get_async(server.url + "/silent", timeout_ms=1500) for _ in range(8)]
            c.wait_many(keys, 5)
        # no PIPEWAIT on http://: eight connections at once, not one with seven waiting behind
        assert server.peak_active == 8, server.peak_active
    finally:
        server.stop()


def test_connections_to_more_hosts_than_max_in_flight_are_kept_for_reuse() -> None:
    server = HostileServer().start()
    port = _port(server.url)
    try:
        with Client(max_in_flight=8, max_per_host=1, resolver=lambda n: ["127.0.0.1"]) as c:
            for _ in range(3):
                keys = [
                    c.get_async(f"http://h{i}.test:{port}/x", timeout_ms=5000) for i in range(100)
                ]
                assert {r.status for r in c.wait_many(keys, 20)} == {404}
        # One connection per host name, reused in the next two rounds: the cache of idle
        # connections (max_idle_connections) is not limited to the 8 in flight.
        assert server.connections <= 110, server.connections
    finally:
        server.stop()


def test_many_hosts_share_the_in_flight_budget_fairly(hostile: str, echo: str) -> None:
    """Round-robin between hosts: a host with a long backlog does not delay a newcomer's turn."""
    port = _port(echo)
    with Client(max_in_flight=4, max_per_host=4, resolver=lambda n: ["127.0.0.1"]) as c:
        backlog = [
            c.post_async(f"http://busy.test:{port}/b{i}", b"x", None, 30000) for i in range(400)
        ]
        newcomer = c.post_async(f"http://new.test:{port}/n", b"x", None, 30000)
        assert c.wait(newcomer, 20).status == 200
        done_before = sum(1 for k in backlog if c.status(k) is State.DONE)
        assert done_before < 100, done_before
        finals = Counter(r.status for r in c.wait_many(backlog, 60))
        assert finals == {200: 400}


def test_an_idle_client_reclaims_expired_results_by_itself(echo: str) -> None:
    with Client(result_ttl_ms=1500) as c:
        keys = [c.post_async(echo + f"/r{i}", b"x", None, 5000) for i in range(300)]
        assert all(r.status == 200 for r in c.wait_many(keys, 10))
        entries = c._store.cache._entries
        assert len(entries) == 300
        # nobody touches the client: the engine's housekeeping alone reclaims them
        deadline = time.monotonic() + 8
        while entries and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not entries, f"{len(entries)} expired results still resident"
        assert c.status(keys[0]) is State.EXPIRED


def test_many_hosts_under_a_low_open_file_limit_do_not_run_out_of_descriptors(echo: str) -> None:
    # Idle connections hold descriptors: their cache stays under the open-file limit, leaving
    # room for the transfers in flight (with 512 and 900 host names, hundreds failed before).
    script = textwrap.dedent(
        """
        import resource, sys
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        import postkey
        port = sys.argv[1]
        with postkey.Client(resolver=lambda n: ["127.0.0.1"]) as c:
            for _ in range(2):
                keys = [
                    c.get_async(f"http://h{i}.test:{port}/get", timeout_ms=20000)
                    for i in range(900)
                ]
                bad = [r for r in c.wait_many(keys, 60) if r.status != 200]
                assert not bad, (len(bad), bad[0].error_kind, bad[0].error)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(_port(echo))],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
