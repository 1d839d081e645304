"""Latency under load, postkey on W1 (POSTs of W1's body to nginx over plain HTTP).

1. Closed loop: BENCH_N POSTs submitted at once, ``wait_many``: the peak req/s of this process.
2. Open loop: for BENCH_SECONDS, one thread submits at BENCH_FRACTION (0.5) of that peak on a
   fixed schedule, request i due at ``t0 + i / rate``. The thread never waits for results: it
   submits every request whose instant has come (``post_async``), then sleeps until the next
   instant (``time.sleep`` releases the GIL for the engine thread; a busy-wait would hold it for
   the whole switch interval). Only after the last submit does it ``wait_many`` for all keys.

Latency per request comes from the Result's own wall-clock timestamps, both taken by postkey:
``submitted_at`` (set inside ``post_async``) and ``finished_at`` (set by the engine when the
response is complete, just before it stores the result and wakes waiters). Reported:
submit -> result (``finished_at - submitted_at``) p50 / p99 / max, and from the scheduled
instant (``finished_at - scheduled``, which also counts any lateness of the submitting thread,
so a schedule that slipped cannot hide queueing), and ``submitted_at - scheduled``.
The same client (and so the same warm connections) serves both phases; concurrency BENCH_C.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from workload import BODY, EXPECTED, HEADERS
from workloads import env_int, finish

URL = os.environ["BENCH_URL"]
N = env_int("BENCH_N", 20_000)
CONCURRENCY = env_int("BENCH_C", 256)
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
FRACTION = float(os.environ.get("BENCH_FRACTION", "0.5"))


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


client = postkey.Client(
    max_in_flight=CONCURRENCY, max_per_host=CONCURRENCY, max_queue=max(N, 200_000)
)
started = time.perf_counter()
keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
closed = client.wait_many(keys)
peak = N / (time.perf_counter() - started)
good = sum(1 for r in closed if r.status == 200 and r.body == EXPECTED)
if good != N:
    finish("postkey-latency", 1.0, N, good)
del closed
client.cache_clear()

rate = peak * FRACTION
total = int(rate * SECONDS)
keys = []
post = client.post_async
t0 = time.time() + 0.01
time.sleep(0.01)
sent = 0
while sent < total:
    due = min(total, max(0, int((time.time() - t0) * rate) + 1))
    while sent < due:
        keys.append(post(URL, BODY, HEADERS, 30000))
        sent += 1
    if sent < total:
        pause = t0 + sent / rate - time.time()
        if pause > 0:
            time.sleep(pause)
results = client.wait_many(keys)
good = 0
latencies: list[float] = []
from_schedule: list[float] = []
late: list[float] = []
for i, r in enumerate(results):
    good += r.status == 200 and r.body == EXPECTED
    assert r.submitted_at is not None and r.finished_at is not None
    scheduled = t0 + i / rate
    latencies.append((r.finished_at - r.submitted_at) * 1000)
    from_schedule.append((r.finished_at - scheduled) * 1000)
    late.append((r.submitted_at - scheduled) * 1000)
last = max(r.finished_at or 0.0 for r in results)
for values in (latencies, from_schedule, late):
    values.sort()
finish(
    "postkey-latency",
    last - t0,
    total,
    good,
    peak_rps=peak,
    rate=rate,
    sent=total,
    achieved_rps=total / (last - t0),
    p50_ms=percentile(latencies, 0.5),
    p99_ms=percentile(latencies, 0.99),
    max_ms=latencies[-1],
    sched_p50_ms=percentile(from_schedule, 0.5),
    sched_p99_ms=percentile(from_schedule, 0.99),
    sched_max_ms=from_schedule[-1],
    late_p99_ms=percentile(late, 0.99),
    late_max_ms=late[-1],
)
