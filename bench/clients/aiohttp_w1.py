"""W1 on aiohttp: C long-lived worker tasks sharing one session (its faster pattern)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import aiohttp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report


async def main() -> None:
    results: dict[str, tuple[int, bytes]] = {}
    remaining = iter(range(N))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in remaining:
                async with session.post(URL, data=BODY, headers=HEADERS) as response:
                    results[str(uuid.uuid4())] = (response.status, await response.read())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        report("aiohttp", started, results)


asyncio.run(main())
