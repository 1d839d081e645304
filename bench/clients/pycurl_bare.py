"""W1 on a bare pycurl CurlMulti loop (perform / info_read / select): the transport's ceiling.

Kept honest: like a postkey result, each request keeps its status, its raw header block and its
body (a user of postkey reads all three).
"""

from __future__ import annotations

import sys
import time
import uuid

import pycurl

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, CONCURRENCY, HEADERS, URL, N, report

header_lines = [f"{k}: {v}" for k, v in HEADERS.items()] + ["Expect:"]
multi = pycurl.CurlMulti()
multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, CONCURRENCY)
free = [pycurl.Curl() for _ in range(CONCURRENCY)]
results: dict[str, tuple[int, bytes]] = {}
heads: dict[str, bytes] = {}
submitted = done = 0


def start(curl: pycurl.Curl) -> None:
    curl.key = str(uuid.uuid4())
    curl.body = []
    curl.head = []
    curl.setopt(pycurl.URL, URL)
    curl.setopt(pycurl.POSTFIELDS, BODY)
    curl.setopt(pycurl.HTTPHEADER, header_lines)
    curl.setopt(pycurl.WRITEFUNCTION, curl.body.append)
    curl.setopt(pycurl.HEADERFUNCTION, curl.head.append)
    curl.setopt(pycurl.TIMEOUT_MS, 30000)
    multi.add_handle(curl)


started = time.perf_counter()
while done < N:
    while free and submitted < N:
        start(free.pop())
        submitted += 1
    while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
        pass
    while True:
        queued, ok, failed = multi.info_read()
        for curl in ok:
            results[curl.key] = (curl.getinfo(pycurl.RESPONSE_CODE), b"".join(curl.body))
            heads[curl.key] = b"".join(curl.head)
            multi.remove_handle(curl)
            free.append(curl)
            done += 1
        for curl, _errno, _msg in failed:
            results[curl.key] = (0, b"")
            multi.remove_handle(curl)
            free.append(curl)
            done += 1
        if not queued:
            break
    if done < N:
        multi.select(1.0)
report("pycurl", started, results)
