"""W5 on a bare pycurl CurlMulti loop: N GETs of a 1 MiB file at concurrency C; each body is
compared byte for byte with the file (BENCH_BLOB) as it completes, then dropped."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pycurl

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workloads import env_int, finish, multi_loop

URL = os.environ["BENCH_URL"]
N = env_int("BENCH_N", 2000)
CONCURRENCY = env_int("BENCH_C", 64)
BLOB = Path(os.environ["BENCH_BLOB"]).read_bytes()

multi = pycurl.CurlMulti()
multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, CONCURRENCY)
handles = [pycurl.Curl() for _ in range(CONCURRENCY)]
good = 0


def start(curl: pycurl.Curl, _i: int) -> None:
    curl.body = []
    curl.head = []
    curl.setopt(pycurl.URL, URL)
    curl.setopt(pycurl.WRITEFUNCTION, curl.body.append)
    curl.setopt(pycurl.HEADERFUNCTION, curl.head.append)
    curl.setopt(pycurl.TIMEOUT_MS, 60000)


def done(curl: pycurl.Curl, errno: int) -> None:
    global good
    if errno == 0 and curl.getinfo(pycurl.RESPONSE_CODE) == 200 and b"".join(curl.body) == BLOB:
        good += 1
    curl.body = curl.head = None


started = time.perf_counter()
multi_loop(multi, handles, N, start, done)
elapsed = time.perf_counter() - started
finish("pycurl", elapsed, N, good, mib_s=N * len(BLOB) / 2**20 / elapsed)
