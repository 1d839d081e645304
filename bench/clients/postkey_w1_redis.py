"""W1 through postkey with the shared store (this process sends, results in Redis): every key
registered in and every result written to Redis and read back from it (a redis-server of the
script's own, postkey.testing.LocalRedis, pinned to CPU 1 beside nginx)."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])

import postkey
from postkey.testing import LocalRedis
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

server = LocalRedis()
with server as redis_url:
    if server.pid is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(server.pid, {1})  # beside nginx, as the peers' Redis was
    client = postkey.Client(
        max_in_flight=CONCURRENCY,
        max_per_host=CONCURRENCY,
        max_queue=N,
        store=redis_url,
    )
    started = time.perf_counter()
    keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
    results = {r.key: (r.status, r.body) for r in client.wait_many(keys)}
    report("postkey-redis", started, results)
    client.close()
