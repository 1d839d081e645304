"""W1 through postkey's queued mode: this process queues every request in Redis
(``send="workers"``), `postkey worker` processes started by bench/queued.py send them, and this
process reads every result back by key and checks it.

W1_STORE is the Redis URL. ``python postkey_w1_queued.py ready`` queues one request and waits
for it (how bench/queued.py knows the workers are reading the queue).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])

import postkey
from workload import BODY, EXPECTED, HEADERS, URL, N, report

# Connects (and takes this process's lease) before the clock starts.
client = postkey.Client(store=os.environ["W1_STORE"], send="workers", max_queue=max(N, 1))
if sys.argv[1:] == ["ready"]:
    probe = client.wait(client.post_async(URL, BODY, HEADERS, 30000), timeout=60)
    ok = probe.status == 200 and probe.body == EXPECTED
    print("ready" if ok else f"probe: {probe!r}", flush=True)
    client.close()
    sys.exit(0 if ok else 1)

started = time.perf_counter()
keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
submit_s = time.perf_counter() - started
results = {r.key: (r.status, r.body) for r in client.wait_many(keys)}
report("postkey-queued", started, results, submit_s=submit_s)
