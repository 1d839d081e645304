"""W4 through postkey: 10% of the requests go to a host that never answers (2 s timeout).

Prints the fast requests' throughput (to nginx) with the silent share mixed in, and without it,
in the same process: the ratio says how much one slow host costs everyone else.
"""

from __future__ import annotations

import json
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from workload import BODY, CONCURRENCY, EXPECTED, HEADERS, URL

N = 20_000
SLOW_EVERY = 10  # one request in ten goes to the silent host


def fast_throughput(slow_url: str | None) -> tuple[float, float]:
    """(fast requests per second, their p99 latency in ms), submit to last fast result."""
    client = postkey.Client(max_in_flight=CONCURRENCY, max_queue=N)
    fast: list[str] = []
    started = time.perf_counter()
    for i in range(N):
        if slow_url is not None and i % SLOW_EVERY == 0:
            client.post_async(slow_url, BODY, HEADERS, 2000)
        else:
            fast.append(client.post_async(URL, BODY, HEADERS, 30000))
    results = client.wait_many(fast)
    elapsed = time.perf_counter() - started
    assert all(r.status == 200 and r.body == EXPECTED for r in results)
    latencies = sorted(r.elapsed_ms or 0.0 for r in results)
    client.close(drain=False)
    return len(fast) / elapsed, latencies[int(len(latencies) * 0.99)]


with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4096)
    slow = f"http://127.0.0.1:{silent.getsockname()[1]}/never"
    all_fast, all_fast_p99 = fast_throughput(None)
    mixed, mixed_p99 = fast_throughput(slow)
print(
    json.dumps(
        {
            "client": "postkey-w4",
            "fast_rps_all_fast": all_fast,
            "fast_rps_mixed": mixed,
            "ratio": mixed / all_fast,
            "p99_all_fast_ms": all_fast_p99,
            "p99_mixed_ms": mixed_p99,
        }
    )
)
