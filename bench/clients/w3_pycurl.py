"""W3 on a bare pycurl CurlMulti loop: N POSTs round robin over BENCH_HOSTS host names, every
name pinned to 127.0.0.1 by libcurl's RESOLVE list (all names, set once per handle: libcurl loads
it into the multi handle's shared DNS cache). libcurl's own connection cache size (its default)."""

from __future__ import annotations

import sys
import time
import uuid

import pycurl

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, EXPECTED, HEADERS
from workloads import finish, multi_loop, w3_host, w3_plan

N, CONCURRENCY, HOSTS, PORT, URLS = w3_plan()
RESOLVE = [f"{w3_host(i, HOSTS)}:{PORT}:127.0.0.1" for i in range(HOSTS)]

header_lines = [f"{k}: {v}" for k, v in HEADERS.items()] + ["Expect:"]
multi = pycurl.CurlMulti()
handles = []
for _ in range(CONCURRENCY):
    curl = pycurl.Curl()
    curl.setopt(pycurl.RESOLVE, RESOLVE)
    handles.append(curl)
results: dict[str, tuple[int, bytes, bytes]] = {}


def start(curl: pycurl.Curl, i: int) -> None:
    curl.key = str(uuid.uuid4())
    curl.body = []
    curl.head = []
    curl.setopt(pycurl.URL, URLS[i % HOSTS])
    curl.setopt(pycurl.POSTFIELDS, BODY)
    curl.setopt(pycurl.HTTPHEADER, header_lines)
    curl.setopt(pycurl.WRITEFUNCTION, curl.body.append)
    curl.setopt(pycurl.HEADERFUNCTION, curl.head.append)
    curl.setopt(pycurl.TIMEOUT_MS, 30000)


def done(curl: pycurl.Curl, errno: int) -> None:
    if errno:
        results[curl.key] = (0, b"", b"")
    else:
        status = curl.getinfo(pycurl.RESPONSE_CODE)
        results[curl.key] = (status, b"".join(curl.head), b"".join(curl.body))


started = time.perf_counter()
multi_loop(multi, handles, N, start, done)
elapsed = time.perf_counter() - started
good = sum(1 for status, _h, body in results.values() if status == 200 and body == EXPECTED)
finish("pycurl", elapsed, N, good, resolver_calls=0)
