"""W1 on requests-futures: a thread pool of C workers over requests."""

from __future__ import annotations

import sys
import time
import uuid

from requests_futures.sessions import FuturesSession

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

session = FuturesSession(max_workers=CONCURRENCY)
started = time.perf_counter()
futures = {str(uuid.uuid4()): session.post(URL, data=BODY, headers=HEADERS) for _ in range(N)}
results = {}
for key, future in futures.items():
    response = future.result()
    results[key] = (response.status_code, response.content)
report("requests-futures", started, results)
