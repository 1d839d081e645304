"""W5 on aiohttp: C worker tasks, N GETs of a 1 MiB file; each body (``read()``) is compared byte
for byte with the file (BENCH_BLOB), then dropped."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workloads import env_int, finish

URL = os.environ["BENCH_URL"]
N = env_int("BENCH_N", 2000)
CONCURRENCY = env_int("BENCH_C", 64)
BLOB = Path(os.environ["BENCH_BLOB"]).read_bytes()


async def main() -> None:
    good = 0
    remaining = iter(range(N))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal good
            for _ in remaining:
                async with session.get(URL) as response:
                    body = await response.read()
                    good += response.status == 200 and body == BLOB

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        finish("aiohttp", elapsed, N, good, mib_s=N * len(BLOB) / 2**20 / elapsed)


asyncio.run(main())
