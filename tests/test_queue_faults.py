"""Queued mode under faults, with real redis-server and worker processes: workers killed with
kill -9 mid-send, a worker paused past its claim time, Redis killed and restarted with and
without persistence, and every key's names gone after their TTLs.

CI-sized by default (a few seconds each); ``POSTKEY_LONG_TESTS=1`` runs the sizes of issue 8
(2,000 requests with a kill every 2 s, 100,000 requests for the key count).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import postkey
from postkey import State
from postkey._stores.names import SHARDS, Names
from postkey.testing import LocalRedis, LocalRedisCluster

from .recording import RecordingServer
from .spy import spy_client
from .test_queue import pending_entries, prefix, queued
from .workers import WorkerProcess

LONG = os.environ.get("POSTKEY_LONG_TESTS") == "1"


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        try:
            worker.stop(30)
        except AssertionError:
            pass


def _chaos(
    redis_url: str, recorder: RecordingServer, workers: list[WorkerProcess], kills: bool
) -> tuple[int, dict[str, postkey.Result], set[str]]:
    """Submit a steady stream of requests to 4 workers, killing one with kill -9 at a steady
    rate if ``kills``; returns the kill count, every key's result, and at-most-once ids."""
    count, every_s = (2000, 2.0) if LONG else (400, 0.4)
    wanted_kills = 20 if LONG else 10
    p = prefix()
    settings = {"claim_idle_ms": 900, "max_deliveries": 50}
    for _ in range(4):
        workers.append(WorkerProcess(redis_url, p, "--concurrency", "64", **settings).start())
    for worker in workers:
        worker.wait_ready()
    at_most_once: set[str] = set()
    keys: dict[str, str] = {}
    killed = 0
    stop = threading.Event()

    def killer() -> None:
        nonlocal killed
        rng = random.Random(7)
        while not stop.wait(every_s):
            victim = rng.choice(workers)
            victim.kill()
            killed += 1
            victim.start()

    chaos = threading.Thread(target=killer, daemon=True)
    with queued(redis_url, p) as client:
        if kills:
            chaos.start()
        rng = random.Random(1)
        started = time.monotonic()
        # Spread over the time the kills need: every kill can land on requests in flight.
        span = every_s * (wanted_kills + 1) if kills else 2.0
        for i in range(count):
            delay = rng.choice((0, 20, 100, 300))
            kind = i % 3
            rid = f"r{i}"
            url = f"{recorder.url}/rec/{rid}?ms={delay}"
            if kind == 0:
                key = client.get_async(url, timeout_ms=60_000)
            elif kind == 1:
                key = client.post_async(url, b"x", {"Idempotency-Key": rid}, timeout_ms=60_000)
            else:
                key = client.post_async(url, b"x", timeout_ms=60_000)
                at_most_once.add(rid)
            keys[rid] = key
            pause = started + span * (i + 1) / count - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        while kills and killed < wanted_kills:
            time.sleep(0.05)
        stop.set()
        if kills:
            chaos.join()
        for worker in workers:  # the last kill's victims are back: everything can finish
            worker.wait_ready()
        ordered = list(keys.items())
        results = client.wait_many([key for _rid, key in ordered], 60)
        again = client.wait_many([key for _rid, key in ordered], 1)
    assert [r.to_dict() for r in results] == [r.to_dict() for r in again]  # results never change
    deadline = time.monotonic() + 10
    while pending_entries(redis_url, p) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pending_entries(redis_url, p) == 0
    spy = spy_client(redis_url)
    assert sum(spy.xlen(Names(p).dead(s)) for s in range(SHARDS)) == 0
    spy.close()
    return killed, {rid: r for (rid, _key), r in zip(ordered, results, strict=True)}, at_most_once


def test_a_fault_free_run_sends_everything_exactly_once(
    redis_url: str, recorder: RecordingServer, workers: list[WorkerProcess]
) -> None:
    _killed, results, _once = _chaos(redis_url, recorder, workers, kills=False)
    assert {r.state for r in results.values()} == {State.DONE}
    assert recorder.duplicates() == {}
    assert all(recorder.hits[rid] == 1 for rid in results)


def test_workers_killed_mid_send_lose_nothing_and_repeat_only_what_may_repeat(
    redis_url: str, recorder: RecordingServer, workers: list[WorkerProcess]
) -> None:
    killed, results, at_most_once = _chaos(redis_url, recorder, workers, kills=True)
    assert killed >= (20 if LONG else 10)
    states = {rid: (r.state, r.error_kind) for rid, r in results.items()}
    for rid, (state, kind) in states.items():
        if rid in at_most_once:
            # Sent once, or possibly sent by a worker that died: never sent twice.
            assert state is State.DONE or kind == "unknown_outcome", (rid, state, kind)
            assert recorder.hits[rid] <= 1, rid
        else:
            assert state is State.DONE, (rid, state, kind, results[rid].error)
            assert recorder.hits[rid] >= 1
    # Repeats come only from kills during a send: at most one per request a killed worker held.
    repeated = recorder.duplicates()
    assert set(repeated) <= set(results) - at_most_once
    assert sum(n - 1 for n in repeated.values()) <= killed * 64
    done_bodies = [r for rid, r in results.items() if r.state is State.DONE]
    assert all(r.text.split()[0] == rid for rid, r in results.items() if r in done_bodies)


def test_a_request_that_runs_three_claim_times_on_a_live_worker_is_sent_once(
    redis_url: str, recorder: RecordingServer, workers: list[WorkerProcess]
) -> None:
    p = prefix()
    for _ in range(2):
        workers.append(WorkerProcess(redis_url, p, claim_idle_ms=600).start())
    for worker in workers:
        worker.wait_ready()
    with queued(redis_url, p) as client:
        key = client.get_async(recorder.url + "/rec/long?ms=2000")
        result = client.wait(key, 15)
    assert result.status == 200 and result.text == "long 1"
    assert recorder.hits["long"] == 1


def test_a_late_finish_by_a_worker_that_was_taken_over_is_dropped(
    redis_url: str, recorder: RecordingServer, workers: list[WorkerProcess]
) -> None:
    p = prefix()
    first = WorkerProcess(redis_url, p, claim_idle_ms=600).start()
    workers.append(first)
    first.wait_ready()
    with queued(redis_url, p) as client:
        key = client.get_async(recorder.url + "/rec/late?ms=1500")
        deadline = time.monotonic() + 10
        while recorder.hits["late"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.kill(signal.SIGSTOP)  # alive but silent: no renewals, its entry goes idle
        second = WorkerProcess(redis_url, p, claim_idle_ms=600).start()
        workers.append(second)
        result = client.wait(key, 15)
        assert result.text == "late 2"  # the second worker's attempt
        first.kill(signal.SIGCONT)  # its response arrived meanwhile: it finishes late
        assert first.stop() == 0
        assert client.get(key).text == "late 2"  # one stored result: the late one was dropped
    assert "dropped=1" in first.output()
    assert pending_entries(redis_url, p) == 0


class _Outage:
    """A store to kill -9 and start again: one redis-server, or a Redis Cluster of which one
    master (``whole=False``: a partial outage) or every master goes down."""

    def __init__(self, kind: str, *args: str, whole: bool = False) -> None:
        self.single = LocalRedis(*args) if kind == "redis" else None
        self.cluster = LocalRedisCluster(*args) if kind == "cluster" else None
        self.whole = whole
        self.started = False

    @property
    def url(self) -> str:
        return self.single.url if self.single is not None else self._nodes().url

    def _nodes(self) -> LocalRedisCluster:
        assert self.cluster is not None
        return self.cluster

    def _down(self) -> list[LocalRedis]:
        nodes = self._nodes().nodes
        return nodes if self.whole else nodes[:1]

    def start(self) -> None:
        if self.single is not None:
            self.single.start()
        elif not self.started:
            self._nodes().start()
        else:
            for node in self._down():
                node.start()
            self._nodes().wait_ok()
        self.started = True

    def kill(self) -> None:
        if self.single is not None:
            self.single.kill()
        else:
            for node in self._down():
                node.kill()

    def stop(self) -> None:
        if self.single is not None:
            self.single.stop()
        else:
            self._nodes().stop()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_redis_killed_and_restarted_with_aof_loses_no_key_and_workers_resume(
    recorder: RecordingServer, workers: list[WorkerProcess], kind: str
) -> None:
    server = _Outage(kind, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    p = prefix()
    try:
        for _ in range(2):
            workers.append(WorkerProcess(server.url, p, claim_idle_ms=1500).start())
        for worker in workers:
            worker.wait_ready()
        issued: list[str] = []
        refused = 0
        stop = threading.Event()
        client = queued(server.url, p, store_timeout_ms=500, lease_ms=15_000)

        def submit() -> None:
            nonlocal refused
            i = 0
            while not stop.is_set():
                try:
                    issued.append(client.get_async(f"{recorder.url}/rec/a{i}?ms=50"))
                except postkey.StoreUnavailable:
                    refused += 1  # a clear error while Redis is down: no key was issued
                    time.sleep(0.05)
                i += 1
                time.sleep(0.01)

        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        for _ in range(3):
            time.sleep(1.0)
            server.kill()
            time.sleep(0.5)
            server.start()
        restarted = time.monotonic()
        probe = client.get_async(recorder.url + "/rec/probe")
        assert client.wait(probe, 10).status == 200  # workers resumed by themselves
        assert time.monotonic() - restarted < 10
        time.sleep(0.5)
        stop.set()
        submitter.join(10)
        results = client.wait_many(issued, 30)
        client.close()
        states = {r.state for r in results}
        assert states <= {State.DONE, State.FAILED}, states  # every key ever returned ends
        failed = [r for r in results if r.state is State.FAILED]
        assert all(r.error_kind == "not_queued" for r in failed), [r.error for r in failed]
        assert len(failed) <= len(results) // 10
        assert refused > 0 and len(issued) > 100
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_redis_restarted_without_persistence_gives_clear_errors_and_no_hot_loop(
    recorder: RecordingServer, workers: list[WorkerProcess], kind: str
) -> None:
    server = _Outage(kind, whole=True)
    server.start()
    p = prefix()
    try:
        worker = WorkerProcess(server.url, p, claim_idle_ms=1500).start()
        workers.append(worker)
        worker.wait_ready()
        with queued(server.url, p, store_timeout_ms=500) as client:
            key = client.get_async(recorder.url + "/rec/before")
            assert client.wait(key, 10).status == 200
            server.kill()
            started = time.monotonic()
            with pytest.raises(postkey.StoreUnavailable, match="did not answer"):
                client.wait(key, 30)  # no endless wait
            assert time.monotonic() - started < 3
            with pytest.raises(postkey.StoreUnavailable):  # no key is issued
                client.get_async(recorder.url + "/rec/never")
            assert worker.process is not None
            cpu_before = _cpu_seconds(worker.process.pid)
            time.sleep(3)
            assert _cpu_seconds(worker.process.pid) - cpu_before < 0.6  # backoff, no hot loop
            server.start()  # empty: the stream and its consumer group are gone
            later = client.get_async(recorder.url + "/rec/after")
            assert client.wait(later, 15).status == 200
        assert "consumer groups are gone" in worker.output() or recorder.hits["after"] == 1
        assert recorder.hits["never"] == 0
    finally:
        server.stop()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_every_key_goes_away_with_its_ttl(
    redis_url: str, recorder: RecordingServer, workers: list[WorkerProcess]
) -> None:
    count = 100_000 if LONG else 2_000
    p = prefix()
    workers.append(WorkerProcess(redis_url, p, tombstone_ttl_ms=300).start())
    workers[0].wait_ready()
    spy = spy_client(redis_url)

    def names() -> set[bytes]:
        return set(spy.scan_iter(match=f"{p}:*", count=1000))

    with queued(redis_url, p, result_ttl_ms=2000, tombstone_ttl_ms=300) as client:
        client.flush()
        baseline = names()  # the shards' streams, the worker's and this client's liveness keys
        for start in range(0, count, 1000):
            batch = [
                client.get_async(f"{recorder.url}/rec/t{i}") for i in range(start, start + 1000)
            ]
            assert {r.status for r in client.wait_many(batch, 120)} == {200}
        assert len(names()) > len(baseline)
        deadline = time.monotonic() + 15
        while names() != baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert names() == baseline
        # What stays: the shards' streams (owned by the workers) and live processes' leases.
        for name in baseline:
            assert name.endswith(b":queue") or (b":owner:" in name and spy.pttl(name) > 0), name
    spy.close()


def test_a_redis_stalled_past_claim_idle_never_makes_a_worker_send_again(
    recorder: RecordingServer, workers: list[WorkerProcess]
) -> None:
    # Redis stops answering (SIGSTOP: a stall, a failover) for longer than claim_idle_ms while
    # an at-most-once POST is on the wire. The worker gave its result write up after
    # claim_idle_ms and forgot the request; reading its own pending entries once Redis was
    # back, it found the entry under its own attempt, took it for one it had never started,
    # and sent the POST again.
    p = prefix()
    with LocalRedis() as url:
        server_pid = _redis_pid(url)
        worker = WorkerProcess(url, p, claim_idle_ms=1000, store_timeout_ms=500).start()
        workers.append(worker)
        worker.wait_ready()
        with queued(url, p) as client:
            key = client.post_async(recorder.url + "/rec/pay?ms=1500", "charge", timeout_ms=30_000)
            deadline = time.monotonic() + 10
            while recorder.active < 1:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.02)
            os.kill(server_pid, signal.SIGSTOP)
            time.sleep(4)
            os.kill(server_pid, signal.SIGCONT)
            result = client.wait(key, 20)
        time.sleep(2.5)  # a second send would have reached the server by now
    assert recorder.hits["pay"] == 1, worker.output()
    assert result.state is State.DONE or result.error_kind == "unknown_outcome", result.describe()


def _redis_pid(url: str) -> int:
    spy = spy_client(url)
    try:
        return int(spy.info("server")["process_id"])
    finally:
        spy.close()
