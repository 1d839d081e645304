"""Deadline overshoot: how far past timeout_ms a request against a slow server really ends.

200 runs against each slow server (20 at a time), timeout 500 ms. Overshoot = (finished_at -
submitted_at) - timeout, taken from the Result itself. Usage: python bench/deadlines.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.servers import HostileServer  # noqa: E402

from postkey import Client  # noqa: E402

TIMEOUT_MS = 500
RUNS, AT_ONCE = 200, 20


def slow_resolver(host: str) -> list[str]:
    time.sleep(5)
    return ["127.0.0.1"]


def measure(client: Client, url: str, body: bytes | None = None) -> list[float]:
    overshoots: list[float] = []
    for _ in range(RUNS // AT_ONCE):
        keys = [
            client.request_async("POST" if body else "GET", url, body, None, TIMEOUT_MS)
            for _ in range(AT_ONCE)
        ]
        for result in client.wait_many(keys, 10):
            assert result.error_kind == "timeout", (url, result)
            assert result.elapsed_ms is not None
            overshoots.append(result.elapsed_ms - TIMEOUT_MS)
    return overshoots


def main() -> None:
    server = HostileServer().start()
    cases = {
        "accepts, never answers": (server.url + "/silent", None, {}),
        "never completes TLS": (server.url.replace("http:", "https:") + "/", None, {}),
        "headers, then 1 byte / 800 ms": (server.url + "/drip800", None, {}),
        "reads the body at 1 byte / s": (server.url + "/slow-reader", b"x" * (8 << 20), {}),
        "slow DNS answer (5 s)": ("http://slow.test/", None, {"resolver": slow_resolver}),
    }
    print(f"| slow server ({RUNS} runs, timeout {TIMEOUT_MS} ms) | overshoot p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    for name, (url, body, extra) in cases.items():
        with Client(max_in_flight=AT_ONCE, **extra) as client:
            values = sorted(measure(client, url, body))
        worst = max(worst, values[-1])
        print(
            f"| {name} | {statistics.median(values):.1f} ms | "
            f"{values[int(len(values) * 0.99) - 1]:.1f} ms | {values[-1]:.1f} ms |"
        )
    server.stop()
    print(f"\nworst overshoot: {worst:.1f} ms (target <= 50 ms)")


if __name__ == "__main__":
    main()
