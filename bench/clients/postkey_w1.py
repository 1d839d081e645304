"""W1 through postkey's public API: submit all, wait all, check all."""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

client = postkey.Client(max_in_flight=CONCURRENCY, max_per_host=CONCURRENCY, max_queue=N)
started = time.perf_counter()
keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
results = {r.key: (r.status, r.body) for r in client.wait_many(keys)}
report("postkey", started, results)
