"""Fixtures: real servers on 127.0.0.1 (postkey.testing's echo, hostile) and clients that are
always closed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from postkey import Client
from postkey.testing import LocalRedis, LocalServer

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
def redis_url() -> Iterator[str]:
    """A redis-server of our own on a free port (never the machine's 6379), stopped at the end."""
    with LocalRedis() as url:
        yield url
