"""postkey micro-figures: submits per second from one thread, and wait wake-up latency."""

from __future__ import annotations

import json
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import postkey
from workload import BODY, HEADERS, URL

SUBMITS = 200_000
SAMPLES = 2000


def submits_per_second(url: str) -> float:
    client = postkey.Client(max_queue=SUBMITS, max_in_flight=256, max_per_host=256)
    started = time.perf_counter()
    for _ in range(SUBMITS):
        client.post_async(url, BODY, HEADERS, 60000)
    elapsed = time.perf_counter() - started
    client.close(drain=False)
    return SUBMITS / elapsed


# 1. The submit path alone: the target accepts connections and never answers, so the engine
#    fills its 256 slots and then sleeps; the loop measures only what a submit costs.
with socket.socket() as blackhole:
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(4096)
    idle = submits_per_second(f"http://127.0.0.1:{blackhole.getsockname()[1]}/ingest")

# 2. The same loop while the engine sends to nginx on the same core (they share the GIL).
busy = submits_per_second(URL)

# 3. Wake-up: from the moment the engine stores a result (Result.finished_at) to the moment the
#    waiting thread runs again, one request at a time.
client = postkey.Client()
lags = []
for _ in range(SAMPLES):
    result = client.wait(client.post_async(URL, BODY, HEADERS, 5000))
    woke = time.time()
    assert result.status == 200 and result.finished_at is not None
    lags.append((woke - result.finished_at) * 1000.0)
client.close()
lags.sort()
print(
    json.dumps(
        {
            "client": "postkey-micro",
            "submits_per_s": idle,
            "submits_per_s_busy": busy,
            "wake_p50_ms": lags[len(lags) // 2],
            "wake_p99_ms": lags[int(len(lags) * 0.99)],
        }
    )
)
