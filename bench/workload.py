"""Workload W1, shared by every client script: what is sent and what must come back."""

from __future__ import annotations

import json
import os
import sys
import time

N = int(os.environ.get("W1_REQUESTS", "20000"))
CONCURRENCY = int(os.environ.get("W1_CONCURRENCY", "256"))
URL = os.environ.get("W1_URL", "http://127.0.0.1:18080/ingest")
BODY = (
    b'{"event":"signup","user_id":123456,"ts":1700000000,"source":"bench",'
    b'"pad":"xxxxxxxxxxxxxxxxxxxxxxx"}'
)
HEADERS = {"Content-Type": "application/json"}
EXPECTED = b'{"ok":true}'


def report(client: str, started: float, results: dict, **extra: object) -> None:
    """Check every stored result and print one JSON line; exit 1 if any is wrong."""
    elapsed = time.perf_counter() - started
    good = sum(1 for status, body in results.values() if status == 200 and body == EXPECTED)
    print(
        json.dumps(
            {
                "client": client,
                "requests": N,
                "ok": good,
                "elapsed_s": elapsed,
                "rps": N / elapsed,
                **extra,
            }
        )
    )
    sys.exit(0 if good == N else 1)
