"""arq: asyncio worker, one aiohttp ClientSession made in on_startup, max_jobs=256.

    python q_arq.py worker          # = `arq q_arq.WorkerSettings`, but with WARNING logging
    python q_arq.py ready           # one probe job must round-trip
    python q_arq.py submit N        # timed: enqueue N, read N results back, check

From the team's peer harness (peer-bench/queues/q_arq.py). Results: arq stores each job's
pickled result under arq:result:<id> (keep_result 3600 s); the submitter reads them with
Job.result(), in submission order. Job.result() polls; its default poll_delay of 0.5 s is set
to POLL_S here.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import arq
from arq import create_pool
from arq.connections import RedisSettings
from qcommon import (
    BODY,
    HEADERS,
    REDIS_HOST,
    REDIS_PORT,
    RESULT_TIMEOUT_S,
    URL,
    n_from_argv,
    now,
    ready_ok,
    report,
)

POLL_S = 0.05
REDIS = RedisSettings(host=REDIS_HOST, port=REDIS_PORT)


async def startup(ctx: dict) -> None:
    ctx["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))


async def shutdown(ctx: dict) -> None:
    await ctx["session"].close()


async def post(ctx: dict) -> tuple[int, str]:
    async with ctx["session"].post(URL, data=BODY, headers=HEADERS) as r:
        return (r.status, await r.text())


class WorkerSettings:
    functions = (post,)
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = 256
    redis_settings = REDIS


async def ready() -> None:
    redis = await create_pool(REDIS)
    job = await redis.enqueue_job("post")
    assert job is not None
    ready_ok(await job.result(timeout=60, poll_delay=POLL_S))


async def submit(n: int) -> None:
    redis = await create_pool(REDIS)
    await redis.ping()
    t0 = now()
    jobs = [await redis.enqueue_job("post") for _ in range(n)]
    t_sub = now()
    results = [await j.result(timeout=RESULT_TIMEOUT_S, poll_delay=POLL_S) for j in jobs if j]
    t_end = now()
    report(
        "arq",
        n,
        t_sub - t0,
        t_end - t0,
        results,
        version=arq.VERSION,
        aiohttp=aiohttp.__version__,
        poll_s=POLL_S,
    )


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "worker":
        logging.basicConfig(level=logging.WARNING)
        arq.run_worker(WorkerSettings)
    elif cmd == "ready":
        asyncio.run(ready())
    elif cmd == "submit":
        asyncio.run(submit(n_from_argv()))
