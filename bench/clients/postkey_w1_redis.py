"""W1 through postkey with the shared store: results written to and read back from Redis (a
redis-server of the script's own, postkey.testing.LocalRedis, on CPU 1 beside nginx)."""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])

import postkey
from postkey.testing import LocalRedis
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

with LocalRedis() as redis_url:
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
