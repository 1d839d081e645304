"""W1 through postkey's public API: submit all, wait all, check all."""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import os

import postkey
from postkey._policy import DestinationPolicy
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

# W1_GUARD=1: the SSRF guard on (public_only with the target allow-listed), to measure its cost.
policy = (
    DestinationPolicy.public_only(allow=("127.0.0.1",))
    if os.environ.get("W1_GUARD") == "1"
    else DestinationPolicy.allow_all()
)
client = postkey.Client(
    max_in_flight=CONCURRENCY, max_per_host=CONCURRENCY, max_queue=N, policy=policy
)
started = time.perf_counter()
keys = [client.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
results = {r.key: (r.status, r.body) for r in client.wait_many(keys)}
report("postkey", started, results)
