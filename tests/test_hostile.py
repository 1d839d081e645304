"""Hostile servers: deadlines that hold, resets, oversized bodies, refused connections."""

from __future__ import annotations

import socket
import time

import pytest

from postkey import Client, State

from .servers import HUGE, HostileServer


@pytest.mark.parametrize("path", ["/silent", "/drip"])
def test_a_1000_ms_timeout_ends_within_1500_ms(client: Client, hostile: str, path: str) -> None:
    started = time.monotonic()
    key = client.get_async(hostile + path, timeout_ms=1000)
    result = client.wait(key, 5)
    elapsed = time.monotonic() - started
    assert result.state == State.FAILED and result.error_kind == "timeout"
    assert 0.9 < elapsed < 1.5


def test_the_deadline_counts_time_spent_queued(hostile: str) -> None:
    with Client(max_in_flight=1) as c:
        blocker = c.get_async(hostile + "/silent", timeout_ms=800)
        queued = c.get_async(hostile + "/hold", timeout_ms=500)
        result = c.wait(queued, 5)
        assert result.error_kind == "timeout"
        assert "while queued" in (result.error or "")
        assert c.wait(blocker, 5).error_kind == "timeout"


def test_a_reset_mid_body_is_a_network_failure(client: Client, hostile: str) -> None:
    result = client.wait(client.get_async(hostile + "/reset", timeout_ms=5000), 10)
    assert result.state == "failed" and result.error_kind == "network"
    assert result.status is None and result.body == b""


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
def test_body_cap_ends_the_transfer_as_too_large(hostile: str, path: str) -> None:
    with Client(max_response_bytes=1024 * 1024) as c:
        started = time.monotonic()
        result = c.wait(c.get_async(hostile + path, timeout_ms=20000), 30)
    assert result.state == "failed" and result.error_kind == "too_large"
    assert "1048576" in (result.error or "")
    assert time.monotonic() - started < 10


def test_the_default_cap_is_10_mib(client: Client, hostile: str) -> None:
    result = client.wait(client.get_async(hostile + "/huge-chunked", timeout_ms=30000), 40)
    assert result.error_kind == "too_large" and "10485760" in (result.error or "")


def test_a_body_within_the_cap_arrives_whole(hostile: str) -> None:
    with Client(max_response_bytes=HUGE) as c:
        result = c.wait(c.get_async(hostile + "/huge-chunked", timeout_ms=30000), 40)
    assert result.state == "done" and len(result.body) == HUGE


def test_connection_refused_is_a_connect_failure(client: Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        result = client.wait(client.get_async(f"http://127.0.0.1:{port}/", timeout_ms=3000), 5)
    assert result.state == "failed" and result.error_kind == "connect"
    assert result.error


def test_an_unresolvable_name_is_a_dns_failure(client: Client) -> None:
    result = client.wait(client.get_async("http://no-such-host.invalid/", timeout_ms=5000), 10)
    assert result.state == "failed" and result.error_kind == "dns"


def test_per_host_cap_limits_connections(hostile: str, hostile_server: HostileServer) -> None:
    with Client(max_per_host=3) as c:
        keys = [c.get_async(hostile + "/hold", timeout_ms=10000) for _ in range(12)]
        results = c.wait_many(keys, 20)
    assert all(r.status == 200 for r in results)
    assert hostile_server.peak_active <= 3


def test_in_flight_cap_limits_transfers(hostile: str, hostile_server: HostileServer) -> None:
    with Client(max_in_flight=2, max_per_host=50) as c:
        keys = [c.get_async(hostile + "/hold", timeout_ms=10000) for _ in range(8)]
        assert all(r.status == 200 for r in c.wait_many(keys, 20))
    assert hostile_server.peak_active <= 2


def test_connections_are_reused(hostile: str, hostile_server: HostileServer) -> None:
    with Client(max_per_host=1) as c:
        for _ in range(5):
            assert c.wait(c.get_async(hostile + "/hold", timeout_ms=5000), 10).status == 200
    assert hostile_server.connections == 1
    assert hostile_server.requests == 5


def test_a_slow_resolver_is_bounded_by_the_deadline(hostile: str) -> None:
    def slow(host: str) -> list[str]:
        time.sleep(3)
        return ["127.0.0.1"]

    port = hostile.rsplit(":", 1)[1]
    with Client(resolver=slow) as c:
        started = time.monotonic()
        result = c.wait(c.get_async(f"http://slow.test:{port}/hold", timeout_ms=500), 5)
        elapsed = time.monotonic() - started
        assert result.state == "failed" and result.error_kind == "timeout"
        assert "name resolution" in (result.error or "")
        assert elapsed < 1.0
        # other requests are not held up by the stuck lookup
        fast = c.wait(c.get_async(hostile + "/hold", timeout_ms=3000), 5)
        assert fast.status == 200


def test_a_failing_resolver_is_a_dns_failure(hostile: str) -> None:
    def broken(host: str) -> list[str]:
        raise OSError("no such host")

    with Client(resolver=broken) as c:
        result = c.wait(c.get_async("http://nowhere.test/", timeout_ms=2000), 5)
    assert result.error_kind == "dns" and "no such host" in (result.error or "")
