"""W2 on aiohttp: C long-lived worker tasks sharing one session, TLS verified against BENCH_CA.
aiohttp speaks HTTP/1.1 only, also to the HTTP/2 listener of W2b (which still answers 1.1)."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
import uuid

import aiohttp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, EXPECTED, HEADERS
from workloads import env_int, finish

URL = os.environ["BENCH_URL"]
N = env_int("BENCH_N", 20_000)
CONCURRENCY = env_int("BENCH_C", 256)


async def main() -> None:
    context = ssl.create_default_context(cafile=os.environ["BENCH_CA"])
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    results: dict[str, tuple[int, object, bytes]] = {}
    protocols: dict[str, int] = {}
    remaining = iter(range(N))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in remaining:
                async with session.post(URL, data=BODY, headers=HEADERS) as response:
                    body = await response.read()
                    results[str(uuid.uuid4())] = (response.status, response.headers, body)
                    version = f"{response.version.major}.{response.version.minor}"
                    protocols[version] = protocols.get(version, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        good = sum(1 for status, _h, body in results.values() if status == 200 and body == EXPECTED)
        finish("aiohttp", elapsed, N, good, protocols=protocols)


asyncio.run(main())
