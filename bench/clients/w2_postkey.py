"""W2 through postkey's public API over TLS 1.3 (``ca_file=`` the bench CA): submit all, wait_many,
check all. BENCH_HTTP_VERSION ("1.1" or "2") sets the ``http_version`` setting; without it postkey
takes HTTP/2 when the server offers it by ALPN. The protocol of each response is read after the
clock stops (reading it parses the header block)."""

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

client = postkey.Client(
    max_in_flight=CONCURRENCY,
    max_per_host=CONCURRENCY,
    max_queue=N,
    ca_file=os.environ["BENCH_CA"],
    http_version=os.environ.get("BENCH_HTTP_VERSION") or None,
)
started = time.perf_counter()
keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
results = client.wait_many(keys)
elapsed = time.perf_counter() - started
good = sum(1 for r in results if r.status == 200 and r.body == EXPECTED)
protocols: dict[str, int] = {}
for r in results:
    protocols[r.http_version] = protocols.get(r.http_version, 0) + 1
if good != N:
    print(next(r for r in results if not (r.status == 200 and r.body == EXPECTED)), file=sys.stderr)
finish("postkey", elapsed, N, good, protocols=protocols)
