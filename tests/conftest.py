"""Fixtures: real servers on 127.0.0.1 (postkey.testing's echo, hostile) and clients that are
always closed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from postkey import Client
from postkey.testing import LocalRedis, LocalRedisCluster, LocalServer

from .servers import HostileServer


@pytest.fixture(scope="session")
def echo() -> Iterator[str]:
    """Base URL of an in-process `postkey.testing.LocalServer`."""
    with LocalServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def echo_process() -> Iterator[str]:
    """Base URL of a LocalServer in its own process (for load: it does not share our GIL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "postkey.testing"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def hostile_server() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


@pytest.fixture
def hostile(hostile_server: HostileServer) -> str:
    hostile_server.reset_counts()
    return hostile_server.url


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client()
    yield c
    c.close(drain=False)


@pytest.fixture(scope="session")
def single_redis_url() -> Iterator[str]:
    """One redis-server of our own on a free port (never the machine's 6379)."""
    with LocalRedis() as url:
        yield url


@pytest.fixture(scope="session")
def cluster_redis_url() -> Iterator[str]:
    """A three-master Redis Cluster of our own (``redis+cluster://``)."""
    with LocalRedisCluster() as url:
        yield url


@pytest.fixture(scope="session", params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A store URL of our own, stopped at the end: one redis-server, then a Redis Cluster, so
    every test of the shared store and the queue runs on both."""
    return str(
        request.getfixturevalue(f"{'single' if request.param == 'redis' else 'cluster'}_redis_url")
    )
