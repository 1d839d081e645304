"""The job and the checks shared by the peer-queue scripts (q_arq.py, q_celery.py).

Adapted from the team's peer harness (peer-bench/queues/qcommon.py): the job is W1's, from
bench/workload.py, so the bytes sent are the ones the postkey rows send. POST the ~100-byte JSON
body to W1_URL (the local nginx of bench/queued.py) with Content-Type: application/json and
return (status code, response body text). BENCH_REDIS_URL is the broker and result backend.

Every submitter: connects, then (timed) enqueues N jobs one by one from this one process, then
reads every result back through the queue's own result API in submission order, checks that all
N are (200, '{"ok":true}'), prints one JSON line and exits non-zero if any is missing or wrong.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from workload import BODY, EXPECTED, HEADERS, URL

__all__ = ["BODY", "HEADERS", "URL"]

EXPECTED_TEXT = EXPECTED.decode()
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_parts = urlsplit(REDIS_URL)
REDIS_HOST = _parts.hostname or "127.0.0.1"
REDIS_PORT = _parts.port or 6379
RESULT_TIMEOUT_S = 900  # per result; bench/queued.py ends a run long before
now = time.perf_counter


def n_from_argv(default: int = 20000) -> int:
    """`python q_x.py submit N` / `python q_x.py ready`."""
    return int(sys.argv[2]) if len(sys.argv) > 2 else default


def check_one(res: object) -> bool:
    """res is what the queue handed back for (status, text); tuples may come back as lists."""
    return (
        isinstance(res, (list, tuple))
        and len(res) == 2
        and int(res[0]) == 200
        and res[1] == EXPECTED_TEXT
    )


def report(
    queue: str, n: int, submit_s: float, e2e_s: float, results: list, **extra: object
) -> None:
    ok = sum(1 for r in results if check_one(r))
    out = {
        "queue": queue,
        "n": n,
        "got": len(results),
        "ok": ok,
        "submit_s": submit_s,
        "e2e_s": e2e_s,
        "jobs_per_s": n / e2e_s,
        "submitter_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }
    print(json.dumps(out), flush=True)
    if ok != n or len(results) != n:
        bad = [r for r in results if not check_one(r)][:3]
        print(f"FAIL: {ok}/{n} ok, {len(results)} results, e.g. {bad}", file=sys.stderr)
        sys.exit(1)


def ready_ok(res: object) -> None:
    """The `ready` sub-command: one probe job must round-trip."""
    if not check_one(res):
        print(f"probe job returned {res!r}", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
