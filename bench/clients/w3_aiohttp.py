"""W3 on aiohttp: C worker tasks, N POSTs round robin over BENCH_HOSTS host names, each resolved
to 127.0.0.1 by a resolver of this script (aiohttp's resolver hook; aiohttp's DNS cache on, its
default). Connection limit C in all, none per host."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, EXPECTED, HEADERS
from workloads import finish, w3_plan

N, CONCURRENCY, HOSTS, PORT, URLS = w3_plan()
calls = 0


class Loopback(AbstractResolver):
    """Every *.w3.test name is 127.0.0.1; anything else is an error."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        global calls
        calls += 1
        if not host.endswith(".w3.test"):
            raise OSError(f"no address for {host}")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


async def main() -> None:
    results: dict[str, tuple[int, object, bytes]] = {}
    remaining = iter(range(N))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0, resolver=Loopback())
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in remaining:
                async with session.post(URLS[i % HOSTS], data=BODY, headers=HEADERS) as response:
                    body = await response.read()
                    results[str(uuid.uuid4())] = (response.status, response.headers, body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        good = sum(1 for status, _h, body in results.values() if status == 200 and body == EXPECTED)
        finish("aiohttp", elapsed, N, good, resolver_calls=calls)


asyncio.run(main())
