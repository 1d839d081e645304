"""Per-host limits on a real redis-server: a lease semaphore that threads and processes share and
that a killed holder cannot keep, GCRA rate limits, shared pauses, Retry-After parsing, TTLs on
every key, and the same scripts on a (one-node) Redis Cluster."""

from __future__ import annotations

import calendar
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from postkey._stores.redis_limits import PAUSE, RATE, SEMAPHORE, HostLimits, parse_retry_after
from postkey.testing import LocalRedis

HOST = "https://api.example.com:443"


@pytest.fixture(scope="module", autouse=True)
def cluster_node() -> Iterator[LocalRedis]:
    """A one-node Redis Cluster, started first: a new master waits ~2 s before it reports
    cluster_state:ok, and the other tests run meanwhile."""
    # The bus port defaults to port + 10000, past 65535 for a high free port: pick one too.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        bus_port = sock.getsockname()[1]
    node = LocalRedis("--cluster-enabled", "yes", "--cluster-port", str(bus_port)).start()
    admin = redis.Redis(host="127.0.0.1", port=node.port)
    admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    admin.close()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """One redis-server (the conftest's runs on a Cluster too): these tests talk to it with a
    plain client, and the limits' Cluster behaviour has a test of its own, at the end."""
    with LocalRedis() as url:
        yield url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"lim-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def limits(r: redis.Redis, prefix: str) -> HostLimits:
    return HostLimits(r, prefix)


def keys_under(r: redis.Redis, prefix: str) -> list[bytes]:
    return sorted(r.scan_iter(match=prefix + ":*"))


# -- concurrency: the lease semaphore --------------------------------------------------------


def test_permits_stop_at_the_limit_and_a_holder_re_acquiring_is_renewed_not_counted_twice(
    limits: HostLimits,
) -> None:
    assert [limits.acquire(HOST, h, 3, 10_000) for h in "abcd"] == [True, True, True, False]
    assert limits.holders(HOST) == 3
    assert limits.acquire(HOST, "b", 3, 10_000)  # at the limit, but b already holds one
    assert limits.holders(HOST) == 3
    assert limits.holders("https://other.example:443") == 0  # hosts are independent
    assert limits.acquire("https://other.example:443", "d", 1, 10_000)


def test_release_frees_a_permit_for_the_next_acquirer(limits: HostLimits) -> None:
    assert limits.acquire(HOST, "a", 1, 10_000)
    assert not limits.acquire(HOST, "b", 1, 10_000)
    limits.release(HOST, "a")
    limits.release(HOST, "never-held")  # harmless
    assert limits.holders(HOST) == 0
    assert limits.acquire(HOST, "b", 1, 10_000)


def test_a_holder_that_never_releases_loses_its_permit_after_its_lease(
    limits: HostLimits, r: redis.Redis
) -> None:
    assert limits.acquire(HOST, "dead", 1, 150)
    assert not limits.acquire(HOST, "live", 1, 150)
    time.sleep(0.2)
    assert limits.holders(HOST) == 0
    assert limits.acquire(HOST, "live", 1, 150)
    # The lapsed member was swept, not merely outnumbered: the set does not grow.
    assert r.zscore(limits.key(HOST, SEMAPHORE), "dead") is None
    assert r.zcard(limits.key(HOST, SEMAPHORE)) == 1


def test_renew_keeps_a_permit_past_its_first_lease(limits: HostLimits) -> None:
    assert limits.acquire(HOST, "a", 1, 200)
    time.sleep(0.12)
    limits.renew(HOST, ["a", "not-a-holder"], 200)
    time.sleep(0.12)  # 240 ms after acquiring: past the first lease, inside the renewed one
    assert limits.holders(HOST) == 1
    assert not limits.acquire(HOST, "b", 1, 200)
    limits.release(HOST, "a")
    assert limits.acquire(HOST, "b", 1, 200)


def test_renew_does_not_revive_a_lapsed_lease_or_add_strangers(
    limits: HostLimits, r: redis.Redis
) -> None:
    assert limits.acquire(HOST, "a", 2, 100)
    time.sleep(0.15)
    limits.renew(HOST, ["a", "stranger"], 10_000)
    assert limits.holders(HOST) == 0
    assert r.exists(limits.key(HOST, SEMAPHORE)) == 0
    limits.renew(HOST, [], 10_000)  # nothing to do, no error


def test_threads_never_hold_more_permits_than_the_limit(redis_url: str, prefix: str) -> None:
    limit, counter = 3, f"{prefix}:inside"
    peak, taken, refused = [0], [0], [0]
    lock = threading.Lock()

    def contend(name: str) -> None:
        client = redis.Redis.from_url(redis_url)
        mine = HostLimits(client, prefix)
        # At least 0.25 s, and on until the threads really contended (a loaded machine may
        # give them few turns in 0.25 s), at most 10 s.
        started = time.monotonic()
        while time.monotonic() < started + 0.25 or (
            (taken[0] <= 20 or refused[0] == 0) and time.monotonic() < started + 10
        ):
            if not mine.acquire(HOST, name, limit, 5000):
                with lock:
                    refused[0] += 1
                continue
            inside = client.incr(counter)  # counted by Redis, independently of the semaphore
            time.sleep(0.001)
            client.decr(counter)
            mine.release(HOST, name)
            with lock:
                peak[0], taken[0] = max(peak[0], inside), taken[0] + 1
        client.close()

    threads = [threading.Thread(target=contend, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert taken[0] > 10 and refused[0] > 0  # they really contended
    assert 1 <= peak[0] <= limit


CONTENDER = """
import json, sys, threading, time
import redis
from postkey._stores.redis_limits import HostLimits

url, prefix, name, host = sys.argv[1:5]
limit = int(sys.argv[5])
stats = {"taken": 0, "refused": 0, "peak": 0}
lock = threading.Lock()

def contend(holder, go):
    client = redis.Redis.from_url(url)
    mine = HostLimits(client, prefix)
    go.wait()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        if not mine.acquire(host, holder, limit, 5000):
            with lock:
                stats["refused"] += 1
            continue
        inside = client.incr(prefix + ":inside")
        time.sleep(0.001)
        client.decr(prefix + ":inside")
        mine.release(host, holder)
        with lock:
            stats["taken"] += 1
            stats["peak"] = max(stats["peak"], inside)

go = threading.Event()
threads = [threading.Thread(target=contend, args=(f"{name}-{i}", go)) for i in range(4)]
for t in threads:
    t.start()
print("ready", flush=True)
redis.Redis.from_url(url).blpop([prefix + ":go"], timeout=10)
go.set()
for t in threads:
    t.join()
print(json.dumps(stats), flush=True)
"""


def test_separate_processes_never_hold_more_permits_than_the_limit(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    limit = 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, redis_url, prefix, f"p{i}", HOST, str(limit)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        r.rpush(prefix + ":go", *["go"] * len(procs))  # all start together
        stats = []
        for proc in procs:
            out, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0
            stats.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(s["taken"] > 0 for s in stats), stats  # every process got permits
    assert sum(s["refused"] for s in stats) > 0, stats  # and they contended
    assert max(s["peak"] for s in stats) <= limit, stats


HOLD_FOREVER = """
import sys, time
import redis
from postkey._stores.redis_limits import HostLimits

limits = HostLimits(redis.Redis.from_url(sys.argv[1]), sys.argv[2])
assert limits.acquire(sys.argv[3], "victim", 1, int(sys.argv[4]))
print("held", flush=True)
time.sleep(60)
"""


def test_a_process_killed_with_sigkill_while_holding_loses_its_permit_after_the_lease(
    redis_url: str, prefix: str, limits: HostLimits
) -> None:
    lease_ms = 300
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOREVER, redis_url, prefix, HOST, str(lease_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        held_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert not limits.acquire(HOST, "survivor", 1, lease_ms)
        assert limits.holders(HOST) == 1
        while not limits.acquire(HOST, "survivor", 1, lease_ms):
            assert time.monotonic() - held_at < lease_ms / 1000 + 1, "the lease never lapsed"
            time.sleep(0.01)
        assert time.monotonic() - held_at > lease_ms / 1000 - 0.15  # not before its lease
        assert limits.holders(HOST) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- rate: GCRA ------------------------------------------------------------------------------


def test_gcra_lets_a_burst_through_then_spaces_requests_at_one_per_interval(
    limits: HostLimits,
) -> None:
    per_second, burst, interval = 10.0, 5, 100  # one request per 100 ms
    assert [limits.rate(HOST, per_second, burst) for _ in range(burst)] == [0] * burst
    wait = limits.rate(HOST, per_second, burst)
    assert 50 < wait <= interval
    # A refused request is not counted: asking again does not push the wait further out.
    again = limits.rate(HOST, per_second, burst)
    assert 0 < again <= wait
    time.sleep(again / 1000 + 0.005)
    assert limits.rate(HOST, per_second, burst) == 0
    allowed_at = time.monotonic()
    following = limits.rate(HOST, per_second, burst)
    # ...and the next is one interval apart, less the time since (a loaded machine took 20 ms).
    passed_ms = (time.monotonic() - allowed_at) * 1000
    assert 80 - passed_ms < following <= interval


def test_gcra_without_burst_spaces_every_request_and_keeps_fractional_intervals(
    limits: HostLimits,
) -> None:
    assert limits.rate(HOST, 3.0, 1) == 0
    wait = limits.rate(HOST, 3.0, 1)  # 333.3 ms apart
    assert 300 < wait <= 334
    assert limits.rate("https://elsewhere:443", 3.0, 1) == 0  # another host's budget


def test_gcra_key_lives_about_interval_times_burst(limits: HostLimits, r: redis.Redis) -> None:
    for _ in range(4):
        assert limits.rate(HOST, 10.0, 4) == 0
    ttl = r.pttl(limits.key(HOST, RATE))
    assert 300 < ttl <= 400


# -- pause -----------------------------------------------------------------------------------


def test_pause_is_clamped_to_the_maximum_and_seen_from_another_connection(
    redis_url: str, limits: HostLimits, prefix: str, r: redis.Redis
) -> None:
    assert limits.pause(HOST, 3600, max_pause_s=2.0) == 2.0
    other_client = redis.Redis.from_url(redis_url)
    try:
        other = HostLimits(other_client, prefix)
        assert 1900 < other.paused_ms(HOST) <= 2000
        assert other.paused_ms("https://unpaused:443") == 0
    finally:
        other_client.close()
    assert 1900 < r.pttl(limits.key(HOST, PAUSE)) <= 2000


def test_a_shorter_pause_never_cuts_a_longer_one_and_a_longer_one_extends_it(
    limits: HostLimits,
) -> None:
    assert limits.pause(HOST, 1.0, 10) == 1.0
    assert limits.pause(HOST, 3.0, 10) == 3.0
    kept = limits.pause(HOST, 0.5, 10)
    assert 2.9 < kept <= 3.0  # the pause in effect: the longer one
    assert 2900 < limits.paused_ms(HOST) <= 3000


@pytest.mark.parametrize("seconds", [-5.0, 0.0, math.nan])
def test_a_pause_of_nothing_writes_nothing(
    limits: HostLimits, r: redis.Redis, prefix: str, seconds: float
) -> None:
    assert limits.pause(HOST, seconds, 10) == 0.0
    assert limits.paused_ms(HOST) == 0
    assert keys_under(r, prefix) == []


def test_an_infinite_pause_is_the_maximum(limits: HostLimits) -> None:
    assert limits.pause(HOST, math.inf, 1.5) == 1.5


def test_a_pause_ends_by_itself(limits: HostLimits, r: redis.Redis) -> None:
    assert limits.pause(HOST, 0.1, 10) == 0.1
    assert limits.paused_ms(HOST) > 0
    time.sleep(0.12)
    assert limits.paused_ms(HOST) == 0
    assert r.exists(limits.key(HOST, PAUSE)) == 0


# -- keys: TTLs, hash tags -------------------------------------------------------------------


def test_every_key_has_a_ttl_and_one_host_shares_one_slot(
    limits: HostLimits, r: redis.Redis, prefix: str
) -> None:
    hosts = [HOST, "http://{weird}host:80", "plain-name"]
    for host in hosts:
        assert limits.acquire(host, "a", 2, 1000)
        assert limits.rate(host, 5.0, 2) == 0
        assert limits.pause(host, 4, 5) == 4.0
    found = keys_under(r, prefix)
    assert len(found) == 3 * len(hosts)
    for key in found:
        assert r.pttl(key) > 0, key
    for host in hosts:
        sem, rate, pause = (limits.key(host, p) for p in (SEMAPHORE, RATE, PAUSE))
        assert 1000 < r.pttl(sem) <= 2000  # lease_ms past the latest expiry
        assert 0 < r.pttl(rate) <= 200 * 2
        assert 3900 < r.pttl(pause) <= 4000
        assert len({key_slot(k.encode()) for k in (sem, rate, pause)}) == 1
        assert host not in sem and sem.startswith(prefix + ":{h-")
    assert len({key_slot(limits.key(h, SEMAPHORE).encode()) for h in hosts}) == len(hosts)


def test_the_semaphore_ttl_follows_the_latest_lease(limits: HostLimits, r: redis.Redis) -> None:
    assert limits.acquire(HOST, "long", 3, 5000)
    assert limits.acquire(HOST, "short", 3, 100)
    assert 5000 < r.pttl(limits.key(HOST, SEMAPHORE)) <= 10_000  # the short one does not cut it
    limits.renew(HOST, ["long"], 200)
    assert 200 < r.pttl(limits.key(HOST, SEMAPHORE)) <= 400


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda h: h.acquire(HOST, "a", 0, 1000), "limit must be at least 1, got 0"),
        (lambda h: h.acquire(HOST, "a", 1, 0), "lease_ms must be at least 1, got 0"),
        (lambda h: h.renew(HOST, ["a"], -1), "lease_ms must be at least 1, got -1"),
        (lambda h: h.rate(HOST, 0, 1), "per_second must be a finite number above 0, got 0"),
        (lambda h: h.rate(HOST, -2.0, 1), "per_second must be .* got -2.0"),
        (lambda h: h.rate(HOST, math.nan, 1), "per_second must be .* got nan"),
        (lambda h: h.rate(HOST, math.inf, 1), "per_second must be .* got inf"),
        (lambda h: h.rate(HOST, 1.0, 0), "burst must be at least 1, got 0"),
        (lambda h: h.acquire(HOST, "a", 1, 10**17), "lease_ms must be at most 31622400000"),
        (lambda h: h.rate(HOST, 1e-9, 1), r"burst / per_second must be at most 31622400 s"),
        (lambda h: h.rate(HOST, 1000.0, 10**12), r"burst / per_second must be at most"),
        (lambda h: h.pause(HOST, 1, -1), "max_pause_s must be a number from 0 to 31622400, got -1"),
        (lambda h: h.pause(HOST, 1, math.nan), "max_pause_s must be .* got nan"),
        (lambda h: h.pause(HOST, 1, 1e20), "max_pause_s must be .* got 1e[+]20"),
    ],
)
def test_bad_arguments_are_refused_saying_what_is_wrong_and_write_nothing(
    limits: HostLimits, r: redis.Redis, prefix: str, call: object, message: str
) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call(limits)
    assert keys_under(r, prefix) == []


def test_a_non_integer_limit_is_a_type_error(limits: HostLimits) -> None:
    with pytest.raises(TypeError, match="limit must be an int, not float"):
        limits.acquire(HOST, "a", 1.5, 1000)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "a{b", "a}b"])
def test_a_prefix_with_braces_is_refused(r: redis.Redis, bad: str) -> None:
    with pytest.raises(ValueError, match="prefix must be non-empty and hold no braces"):
        HostLimits(r, bad)


# -- Retry-After ------------------------------------------------------------------------------

OCT_21_2015 = calendar.timegm((2015, 10, 21, 7, 28, 0))


@pytest.mark.parametrize(
    ("value", "now", "seconds"),
    [
        ("120", None, 120.0),
        (" 0 ", None, 0.0),
        ("1.5", None, 1.5),
        ("-5", None, 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", OCT_21_2015 - 30, 30.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None, 0.0),  # long past
        ("Wed, 21 Oct 2015 07:28:00 GMT", OCT_21_2015 + 30, 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", OCT_21_2015 - 1, 1.0),
        ("Wed, 21 Oct 2015 09:28:00 +0200", OCT_21_2015 - 10, 10.0),
    ],
)
def test_retry_after_gives_seconds(value: str, now: float | None, seconds: float) -> None:
    assert parse_retry_after(value, now) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "12abc", "1e3", "nan", "inf", "Wed, 99 Foo 2015", "--5"]
)
def test_retry_after_that_is_absent_or_malformed_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


# -- Redis Cluster ---------------------------------------------------------------------------


def test_every_operation_runs_on_a_redis_cluster(cluster_node: LocalRedis, prefix: str) -> None:
    admin = redis.Redis(host="127.0.0.1", port=cluster_node.port)
    deadline = time.monotonic() + 10
    while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "the one-node cluster never became ready"
        time.sleep(0.02)
    admin.close()
    cluster = redis.RedisCluster(host="127.0.0.1", port=cluster_node.port)
    try:
        limits = HostLimits(cluster, prefix)
        for host in (HOST, "http://{x}:80", "name"):
            assert limits.acquire(host, "a", 1, 1000)
            assert not limits.acquire(host, "b", 1, 1000)
            limits.renew(host, ["a", "b"], 1000)
            assert limits.holders(host) == 1
            limits.release(host, "a")
            assert limits.holders(host) == 0
            assert limits.rate(host, 1.0, 1) == 0
            assert limits.rate(host, 1.0, 1) > 0
            assert limits.pause(host, 2, 1) == 1.0
            assert limits.paused_ms(host) > 0
        with pytest.raises(redis.RedisClusterException, match="same key slot"):
            cluster.eval("return 1", 2, limits.key(HOST, RATE), limits.key("name", RATE))
    finally:
        cluster.close()
