"""End to end: a real ``postkey serve`` on a real Redis (started by the test on a free port),
queuing for a real ``postkey worker`` that sends; the result is read back through the gateway."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

from .gateway_process import ServeProcess, keys_file
from .workers import WorkerProcess

KEY = "pk_test_e2e_0123456789"


def call(method: str, url: str, body: object = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.load(answer)


def test_gateway_on_redis_with_a_worker(single_redis_url: str, echo: str, tmp_path: Path) -> None:
    redis_url = single_redis_url
    prefix = f"gw-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(redis_url, prefix).start()
    server = ServeProcess(
        "--store",
        redis_url,
        "--send",
        "workers",
        "--keys",
        str(keys_file(tmp_path, acme=KEY)),
        env={"POSTKEY_STORE_PREFIX": prefix},
    )
    try:
        worker.wait_ready()
        server.wait_ready()
        status, ready = call("GET", server.url + "/readyz")
        assert status == 200 and ready["store"] == "redis"
        status, submitted = call(
            "POST",
            server.url + "/v1/requests",
            {"method": "POST", "url": echo + "/post", "json": {"via": "worker"}, "key": "e2e-1"},
        )
        assert status == 202 and submitted == {"key": "e2e-1"}
        status, result = call("GET", server.url + "/v1/requests/e2e-1?wait=20")
        assert status == 200 and result["state"] == "done" and result["status"] == 200
        assert json.loads(str(result["body"]))["json"] == {"via": "worker"}
        status, batch = call(
            "POST",
            server.url + "/v1/requests/batch",
            {"requests": [{"url": f"{echo}/get?i={i}"} for i in range(20)]},
        )
        keys = batch["keys"]
        assert isinstance(keys, list) and len(keys) == 20
        for key in keys:
            status, result = call("GET", f"{server.url}/v1/requests/{key}?wait=20")
            assert result["status"] == 200
        status, slow = call("POST", server.url + "/v1/requests", {"url": echo + "/delay/20000"})
        status, cancelled = call("DELETE", f"{server.url}/v1/requests/{slow['key']}")
        assert status == 200 and cancelled["error_kind"] == "cancelled"
        status, stats = call("GET", server.url + "/v1/dashboard/stats")
        counters = stats["counters"]
        assert isinstance(counters, dict) and counters["submitted"] == 22
    finally:
        server.stop()
        worker.stop()
    assert "Traceback" not in server.output()
