"""W2 on a bare pycurl CurlMulti loop over TLS 1.3 (the CA from BENCH_CA): HTTP/1.1 (W2a), or
with BENCH_H2=1 libcurl's 2TLS + PIPEWAIT, so requests multiplex over a few HTTP/2 connections
(W2b). Each request keeps its status, raw header block and body, as a postkey result does."""

from __future__ import annotations

import os
import sys
import time
import uuid

import pycurl

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from workload import BODY, EXPECTED, HEADERS
from workloads import env_int, finish, multi_loop

URL = os.environ["BENCH_URL"]
N = env_int("BENCH_N", 20_000)
CONCURRENCY = env_int("BENCH_C", 256)
H2 = os.environ.get("BENCH_H2") == "1"
VERSIONS = {pycurl.CURL_HTTP_VERSION_1_1: "1.1", pycurl.CURL_HTTP_VERSION_2_0: "2"}

header_lines = [f"{k}: {v}" for k, v in HEADERS.items()] + ["Expect:"]
multi = pycurl.CurlMulti()
if not H2:
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, CONCURRENCY)
handles = []
for _ in range(CONCURRENCY):
    curl = pycurl.Curl()
    curl.setopt(pycurl.CAINFO, os.environ["BENCH_CA"])
    curl.setopt(pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_3)
    if H2:
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        curl.setopt(pycurl.PIPEWAIT, 1)
    else:
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
    handles.append(curl)
results: dict[str, tuple[int, bytes, bytes]] = {}
protocols: dict[str, int] = {}


def start(curl: pycurl.Curl, _i: int) -> None:
    curl.key = str(uuid.uuid4())
    curl.body = []
    curl.head = []
    curl.setopt(pycurl.URL, URL)
    curl.setopt(pycurl.POSTFIELDS, BODY)
    curl.setopt(pycurl.HTTPHEADER, header_lines)
    curl.setopt(pycurl.WRITEFUNCTION, curl.body.append)
    curl.setopt(pycurl.HEADERFUNCTION, curl.head.append)
    curl.setopt(pycurl.TIMEOUT_MS, 30000)


def done(curl: pycurl.Curl, errno: int) -> None:
    if errno:
        results[curl.key] = (0, b"", b"")
        return
    status = curl.getinfo(pycurl.RESPONSE_CODE)
    results[curl.key] = (status, b"".join(curl.head), b"".join(curl.body))
    version = VERSIONS.get(curl.getinfo(pycurl.INFO_HTTP_VERSION), "?")
    protocols[version] = protocols.get(version, 0) + 1


started = time.perf_counter()
multi_loop(multi, handles, N, start, done)
elapsed = time.perf_counter() - started
good = sum(1 for status, _h, body in results.values() if status == 200 and body == EXPECTED)
finish("pycurl", elapsed, N, good, protocols=protocols)
