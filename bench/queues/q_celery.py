"""Celery: Redis broker + Redis result backend; the job uses one requests.Session per thread.

    celery -A q_celery worker --pool=threads --concurrency=64 -l WARNING
    python q_celery.py ready        # one probe job must round-trip
    python q_celery.py submit N     # timed: post.delay() N times, AsyncResult.get() each

From the team's peer harness (peer-bench/queues/q_celery.py). Results: the Redis backend stores
celery-task-meta-<id> (JSON) and publishes it; AsyncResult.get() waits on that pub/sub channel
(no polling).
"""

from __future__ import annotations

import sys
import threading

import celery
import requests
from celery import Celery
from qcommon import (
    BODY,
    HEADERS,
    REDIS_URL,
    RESULT_TIMEOUT_S,
    URL,
    n_from_argv,
    now,
    ready_ok,
    report,
)

app = Celery("q_celery", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
_local = threading.local()


def _session() -> requests.Session:
    s = getattr(_local, "s", None)
    if s is None:
        s = _local.s = requests.Session()
    return s


@app.task(name="post")
def post() -> tuple[int, str]:
    r = _session().post(URL, data=BODY, headers=HEADERS)
    return (r.status_code, r.text)


def submit(n: int) -> None:
    t0 = now()
    pending = [post.delay() for _ in range(n)]
    t_sub = now()
    results = [p.get(timeout=RESULT_TIMEOUT_S) for p in pending]
    t_end = now()
    report(
        "celery",
        n,
        t_sub - t0,
        t_end - t0,
        results,
        version=celery.__version__,
        requests=requests.__version__,
    )


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ready":
        ready_ok(post.delay().get(timeout=60))
    elif cmd == "submit":
        # connect broker + backend before the clock starts
        app.connection_for_write().ensure_connection()
        app.backend.client.ping()
        submit(n_from_argv())
