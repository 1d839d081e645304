"""W3 through postkey: N POSTs round robin over BENCH_HOSTS host names, submit all, wait_many.
Names resolve through the ``resolver=`` setting (postkey's only way to map names: a function
name -> addresses, run on postkey's resolver threads); every other setting is the default but
the queue size (max_in_flight 256, max_per_host 64)."""

from __future__ import annotations

import itertools
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from workload import BODY, EXPECTED, HEADERS
from workloads import finish, w3_plan

N, CONCURRENCY, HOSTS, PORT, URLS = w3_plan()
calls = itertools.count()  # next() is atomic: the resolver runs on several threads


def loopback(name: str) -> list[str]:
    """Every *.w3.test name is 127.0.0.1; anything else is an error."""
    next(calls)
    if not name.endswith(".w3.test"):
        raise OSError(f"no address for {name}")
    return ["127.0.0.1"]


client = postkey.Client(max_in_flight=CONCURRENCY, max_queue=N, resolver=loopback)
started = time.perf_counter()
keys = [client.post_async(URLS[i % HOSTS], BODY, HEADERS, 30000) for i in range(N)]
results = client.wait_many(keys)
elapsed = time.perf_counter() - started
good = sum(1 for r in results if r.status == 200 and r.body == EXPECTED)
if good != N:
    print(next(r for r in results if not (r.status == 200 and r.body == EXPECTED)), file=sys.stderr)
finish("postkey", elapsed, N, good, resolver_calls=next(calls))
