"""W1 the way most users write it: submit all, then `wait(key)` one by one, reading status,
headers and body of every result (max_per_host equal to the concurrency, as the bare loop)."""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from postkey._policy import DestinationPolicy
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

client = postkey.Client(
    max_in_flight=CONCURRENCY,
    max_per_host=CONCURRENCY,
    max_queue=N,
    policy=DestinationPolicy.allow_all(),
)
started = time.perf_counter()
keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
results: dict[str, tuple[int, bytes]] = {}
header_count = 0
for key in keys:
    result = client.wait(key)
    header_count += len(result.headers)
    results[key] = (result.status, result.body)
assert header_count >= 3 * N, header_count  # nginx sends Server, Date, Content-Type, ...
report("postkey-perkey", started, results)
