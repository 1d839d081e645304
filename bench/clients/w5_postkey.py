"""W5 through postkey: N GETs of a 1 MiB file at concurrency C, every body compared byte for byte
with the file (BENCH_BLOB).

Default mode: submit all, ``wait_many``, then check: every result is held at once, so the cache
bound is raised to 4 GiB (under the default ``cache_max_bytes`` most results would be evicted,
and read as ``expired``, before ``wait_many`` returns).
BENCH_MODE=perkey: submit all, then ``wait(key, take=True)`` in submission order (the order they
land in), check the body and let it go: ``take=True`` removes the result from the store as it is
returned, so results do not pile up. Default cache bound.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from workloads import env_int, finish

URL = os.environ["BENCH_URL"]
N = env_int("BENCH_N", 2000)
CONCURRENCY = env_int("BENCH_C", 64)
BLOB = Path(os.environ["BENCH_BLOB"]).read_bytes()
PER_KEY = os.environ.get("BENCH_MODE") == "perkey"

# Holding all N results needs room for all of them; reading them one by one does not.
room = {} if PER_KEY else {"cache_max_bytes": 4096 * 2**20}
client = postkey.Client(max_in_flight=CONCURRENCY, max_per_host=CONCURRENCY, max_queue=N, **room)
good = 0
started = time.perf_counter()
keys = [client.get_async(URL, timeout_ms=60000) for _ in range(N)]
if PER_KEY:
    for key in keys:
        result = client.wait(key, take=True)
        good += result.status == 200 and result.body == BLOB
    del result
else:
    results = client.wait_many(keys)
    good = sum(1 for r in results if r.status == 200 and r.body == BLOB)
elapsed = time.perf_counter() - started
finish(
    "postkey-perkey" if PER_KEY else "postkey",
    elapsed,
    N,
    good,
    mib_s=N * len(BLOB) / 2**20 / elapsed,
)
