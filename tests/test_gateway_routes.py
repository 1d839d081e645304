"""The gateway's routes in process (a Starlette TestClient over the app, real requests to
postkey's local test server): every route, what it answers, and every refusal in one format."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .gateway_fixtures import PLAIN, A, TestClient, gateway_client

_JSON = "application/json"


@pytest.fixture(scope="module")
def gw() -> Iterator[TestClient]:
    with gateway_client() as client:
        yield client


def submit(gw: TestClient, auth: dict[str, str] = A, **request: Any) -> str:
    response = gw.post("/v1/requests", json=request, headers=auth)
    assert response.status_code == 202, response.text
    key: str = response.json()["key"]
    assert response.headers["location"] == f"/v1/requests/{key}"
    return key


def result(gw: TestClient, key: str, auth: dict[str, str] = A) -> dict[str, Any]:
    response = gw.get(f"/v1/requests/{key}?wait=10", headers=auth)
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def assert_error(response: Any, status: int, code: str, says: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert says in body["error"]["message"], body


# -- submitting and reading ----------------------------------------------------------------------


def test_a_submit_answers_202_with_a_key_and_the_result_reads_back(
    gw: TestClient, echo: str
) -> None:
    key = submit(gw, method="post", url=echo + "/post", json={"event": "signup"}, timeout_ms=5000)
    out = result(gw, key)
    assert out["key"] == key and out["state"] == "done" and out["status"] == 200
    assert out["reason"] == "OK" and out["http_version"]
    assert ["Content-Type", "application/json"] in out["headers"]
    echoed = json.loads(out["body"])
    assert echoed["json"] == {"event": "signup"}
    assert set(out["timings"]) == {"dns_ms", "connect_ms", "tls_ms", "first_byte_ms", "total_ms"}
    assert out["submitted_at"] <= out["finished_at"] and out["elapsed_ms"] > 0
    assert out["attempts"] == 1 and out["url"] == echo + "/post"


@pytest.mark.parametrize(
    "headers",
    [{"X-One": "1", "X-Two": "2"}, [["X-One", "1"], ["X-Two", "2"]], "X-One: 1\r\nX-Two: 2"],
    ids=["object", "pairs", "crlf-string"],
)
def test_headers_come_as_an_object_pairs_or_a_crlf_string(
    gw: TestClient, echo: str, headers: object
) -> None:
    out = result(gw, submit(gw, url=echo + "/anything", headers=headers))
    sent = json.loads(out["body"])["headers"]
    assert sent["X-One"] == "1" and sent["X-Two"] == "2"


def test_a_body_comes_as_text_base64_or_json(gw: TestClient, echo: str) -> None:
    text = result(gw, submit(gw, method="POST", url=echo + "/post", body="plain é"))
    assert json.loads(text["body"])["data"] == "plain é"
    raw = base64.b64encode("bytes é".encode()).decode()
    b64 = result(gw, submit(gw, method="POST", url=echo + "/post", body_base64=raw))
    assert json.loads(b64["body"])["data"] == "bytes é"
    form = result(
        gw, submit(gw, method="POST", url=echo + "/post", data={"a": "1"}, params=[["q", "x"]])
    )
    assert json.loads(form["body"])["data"] == "a=1" and form["url"].endswith("?q=x")


def test_a_failed_request_is_a_200_result_with_its_error_kind(gw: TestClient, echo: str) -> None:
    out = result(gw, submit(gw, PLAIN, url=echo + "/get"), PLAIN)  # loopback: not public
    assert out["state"] == "failed" and out["error_kind"] == "blocked"
    assert "status" not in out and out["error"]


def test_a_caller_key_makes_a_submit_idempotent_and_conflicts_say_409(
    gw: TestClient, echo: str
) -> None:
    first = submit(gw, url=echo + "/get?n=1", key="order-42")
    assert first == "order-42"
    assert submit(gw, url=echo + "/get?n=1", key="order-42") == "order-42"
    other = gw.post("/v1/requests", json={"url": echo + "/get?n=2", "key": "order-42"}, headers=A)
    assert_error(other, 409, "key_conflict", "order-42")
    assert "acme~" not in other.text  # the namespace never shows


def test_mychat_key_format(gw: TestClient, echo: str) -> None:
    key = submit(gw, method="PUT", url=echo + "/anything", key_format="mychat")
    assert key.startswith("httpput_async{")
    assert result(gw, key)["status"] == 200


def test_pending_answers_202_and_delete_cancels(gw: TestClient, echo: str) -> None:
    key = submit(gw, url=echo + "/delay/5000", timeout_ms=10_000)
    pending = gw.get(f"/v1/requests/{key}", headers=A)
    assert pending.status_code == 202 and pending.json() == {
        "key": key,
        "state": pending.json()["state"],
    }
    assert (
        pending.json()["state"] in ("pending", "running") and pending.headers["retry-after"] == "1"
    )
    short = gw.get(f"/v1/requests/{key}?wait=0.05", headers=A)
    assert short.status_code == 202
    cancelled = gw.delete(f"/v1/requests/{key}", headers=A)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "failed" and cancelled.json()["error_kind"] == "cancelled"
    assert_error(gw.delete(f"/v1/requests/{key}", headers=A), 409, "already_ended")


def test_unknown_is_404_and_expired_is_410(gw: TestClient, echo: str) -> None:
    assert_error(gw.get("/v1/requests/never-issued", headers=A), 404, "unknown_key")
    assert_error(gw.delete("/v1/requests/never-issued", headers=A), 404, "unknown_key")
    key = submit(gw, url=echo + "/get", ttl_ms=1)
    deadline = time.monotonic() + 10
    while (response := gw.get(f"/v1/requests/{key}?wait=5", headers=A)).status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert_error(response, 410, "expired")


@pytest.mark.parametrize(
    "wait",
    [
        *["abc", "-1", "61", "nan", "inf", ""],
        # float() takes all of these; the API takes plain ASCII decimals only, as for ttl_ms.
        *["1_0", "%D9%A1", "%EF%BC%91", "%201", "1%20", "%091", "0x10", "1e1", "+1", "-0", "1."],
    ],
)
def test_a_bad_wait_is_422(gw: TestClient, wait: str) -> None:
    assert_error(gw.get(f"/v1/requests/k?wait={wait}", headers=A), 422, "invalid_wait")


@pytest.mark.parametrize("wait", ["0", "00", "0.05", "1", "0.5", ".5", "60", "60.0"])
def test_a_plain_decimal_wait_is_taken(gw: TestClient, wait: str) -> None:
    assert_error(gw.get(f"/v1/requests/never-issued?wait={wait}", headers=A), 404, "unknown_key")


def test_a_batch_is_validated_whole_then_submitted(gw: TestClient, echo: str) -> None:
    ok = gw.post(
        "/v1/requests/batch",
        json={
            "requests": [
                {"url": echo + "/get?i=1"},
                {"method": "POST", "url": echo + "/post", "body": "x"},
            ]
        },
        headers=A,
    )
    assert ok.status_code == 202
    keys = ok.json()["keys"]
    assert [result(gw, k)["status"] for k in keys] == [200, 200]
    before = gw.get("/v1/dashboard/stats", headers=A).json()["counters"]["submitted"]
    bad = gw.post(
        "/v1/requests/batch",
        json={"requests": [{"url": echo + "/get"}, {"url": "ftp://x"}]},
        headers=A,
    )
    assert_error(bad, 422, "invalid_url", "requests[1]: ")
    assert gw.get("/v1/dashboard/stats", headers=A).json()["counters"]["submitted"] == before
    for document, says in [
        ({"requests": []}, "non-empty"),
        ({"requests": [{"url": echo}] * 51}, "at most 50"),
        ([{"url": echo}], "requests"),
        ({"requests": [{"url": echo}], "extra": 1}, "requests"),
    ]:
        response = gw.post("/v1/requests/batch", json=document, headers=A)
        assert response.status_code == 422 and says in response.json()["error"]["message"]


# -- refusals ------------------------------------------------------------------------------------

BAD_SUBMITS: list[tuple[object, int, str, str]] = [
    ([1, 2], 422, "invalid_type", "JSON object"),
    ({}, 422, "invalid_url", "url is required"),
    ({"url": "ftp://x"}, 422, "invalid_url", "scheme"),
    ({"url": "http://127.0.0.1/", "method": 5}, 422, "invalid_type", "method must be a string"),
    ({"url": "http://127.0.0.1/", "method": "BAD METHOD"}, 422, "invalid_method", ""),
    ({"url": "http://127.0.0.1/", "method": "CONNECT"}, 422, "invalid_method", ""),
    ({"url": "http://127.0.0.1/", "headers": {"A": 1}}, 422, "invalid_header", ""),
    ({"url": "http://127.0.0.1/", "headers": [["A"]]}, 422, "invalid", "pairs"),
    ({"url": "http://127.0.0.1/", "headers": "no colon"}, 422, "invalid_header", ""),
    ({"url": "http://127.0.0.1/", "headers": {"Host": "x"}}, 422, "invalid_header", ""),
    ({"url": "http://127.0.0.1/", "timeout_ms": 1.5}, 422, "invalid_type", "integer"),
    ({"url": "http://127.0.0.1/", "timeout_ms": True}, 422, "invalid_type", "integer"),
    ({"url": "http://127.0.0.1/", "timeout_ms": 0}, 422, "invalid_timeout", ""),
    ({"url": "http://127.0.0.1/", "timeout_ms": 10**30}, 422, "invalid_timeout", ""),
    ({"url": "http://127.0.0.1/", "ttl_ms": 0}, 422, "invalid", "ttl_ms"),
    ({"url": "http://127.0.0.1/", "body": "x", "json": 1}, 422, "invalid_body", "one of"),
    ({"url": "http://127.0.0.1/", "body": "x", "body_base64": "eA=="}, 422, "invalid_body", ""),
    ({"url": "http://127.0.0.1/", "body_base64": "%%%"}, 422, "invalid_body", "base64"),
    ({"url": "http://127.0.0.1/", "method": "HEAD", "body": "x"}, 422, "invalid_body", "HEAD"),
    ({"url": "http://127.0.0.1/", "method": "head", "json": {}}, 422, "invalid_body", "HEAD"),
    ({"url": "http://127.0.0.1/", "key": "bad key"}, 422, "invalid_key", ""),
    ({"url": "http://127.0.0.1/", "key": "k" * 201}, 422, "invalid_key", "maximum"),
    ({"url": "http://127.0.0.1/", "key_format": "uuid"}, 422, "invalid", "key_format"),
    ({"url": "http://127.0.0.1/", "delivery": "twice"}, 422, "invalid_request", "delivery"),
    ({"url": "http://127.0.0.1/", "http_version": "3"}, 422, "invalid_request", "http_version"),
    ({"url": "http://127.0.0.1/", "follow_redirects": "yes"}, 422, "invalid_type", "boolean"),
    ({"url": "http://127.0.0.1/", "jsno": {}}, 422, "unknown_field", "did you mean 'json'"),
    ({"url": "http://127.0.0.1/", "client_cert": "/etc/passwd"}, 422, "unknown_field", ""),
    ({"url": "http://127.0.0.1/", "data": "a=1"}, 422, "invalid_type", ""),
    ({"url": "http://127.0.0.1/", "params": {"a": {"b": 1}}}, 422, "invalid_url", ""),
]


@pytest.mark.parametrize(("document", "status", "code", "says"), BAD_SUBMITS)
def test_bad_submits_are_refused_in_one_format(
    gw: TestClient, document: object, status: int, code: str, says: str
) -> None:
    assert_error(gw.post("/v1/requests", json=document, headers=A), status, code, says)


#: Words of Python, not of the API: type names, keyword-argument forms, the sys module.
PYTHON_WORDS = re.compile(r"\b(str|int|float|bool|NoneType|dict|list|tuple|sys)\b|\w=[ ,]")


@pytest.mark.parametrize(
    ("document", "code", "says"),
    [
        ({"headers": {"X": 1}}, "invalid_header", "header 'X' must be a string, not a number"),
        ({"headers": {"X": None}}, "invalid_header", "header 'X' must be a string, not null"),
        ({"headers": {"X": ["a"]}}, "invalid_header", "not an array"),
        ({"headers": [["X", 1]]}, "invalid_header", "headers[0] must be [name, value]"),
        ({"headers": [[1, 2]]}, "invalid_header", "a number and a number"),
        ({"headers": [[None, {}]]}, "invalid_header", "null and an object"),
        ({"data": {"a": {"b": 1}}}, "invalid_body", "data 'a' must be a string, number"),
        ({"data": {"a": None}}, "invalid_body", "not null"),
        ({"data": [["a", [[1]]]]}, "invalid_body", "not an array"),
        ({"params": {"a": {"b": 1}}}, "invalid_url", "params 'a' must be a string, number"),
        ({"params": [[["a"], 1]]}, "invalid_url", "params[0] name must be a string"),
        ({"json": 1, "body": "x"}, "invalid_body", "one of body, json and data"),
        ({"data": {"\ud800": "x"}}, "invalid_body", "data holds text"),
    ],
)
def test_refusals_name_what_is_wrong_in_json_terms_not_python_ones(
    gw: TestClient, document: dict[str, Any], code: str, says: str
) -> None:
    body = json.dumps({"url": "http://127.0.0.1/", **document}).encode()
    response = gw.post("/v1/requests", content=body, headers={**A, "content-type": _JSON})
    assert_error(response, 422, code, says)
    assert not PYTHON_WORDS.search(response.json()["error"]["message"]), response.text


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"url": "http://127.0.0.1/", "timeout_ms": ' + b"9" * 5000 + b"}", "4300 digits"),
        (b'{"url": "http://127.0.0.1/", "json": -' + b"1" * 4301 + b"}", "4300 digits"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'{"url": "\xff"}', "not UTF-8"),
    ],
    ids=["huge-integer", "huge-negative-integer", "bom", "not-utf8"],
)
def test_unreadable_json_is_refused_in_the_apis_terms(
    gw: TestClient, body: bytes, says: str
) -> None:
    response = gw.post("/v1/requests", content=body, headers={**A, "content-type": _JSON})
    assert_error(response, 400, "invalid_json", says)
    message = response.json()["error"]["message"]
    assert not PYTHON_WORDS.search(message) and "utf-8-sig" not in message, message
    assert "codec" not in message, message


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{", "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b'{"url": NaN}', "application/json", 400, "invalid_json"),
        (b"[" * 100_000, "application/json", 400, "invalid_json"),
        (b'{"url": "http://127.0.0.1/"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"url": "http://127.0.0.1/"}', "", 415, "unsupported_media_type"),
        (b"x" * ((1 << 20) + 1), "application/json", 413, "too_large"),
    ],
)
def test_bodies_that_cannot_be_read_are_refused(
    gw: TestClient, body: bytes, content_type: str, status: int, code: str
) -> None:
    headers = {**A, "content-type": content_type}
    assert_error(gw.post("/v1/requests", content=body, headers=headers), status, code)


def test_unknown_routes_and_methods_answer_in_the_same_format(gw: TestClient) -> None:
    assert_error(gw.get("/v2/nothing", headers=A), 404, "not_found")
    assert_error(gw.put("/v1/requests", headers=A), 405, "method_not_allowed")
    assert_error(gw.patch("/v1/cache/k", headers=A), 405, "method_not_allowed")


# -- the cache -----------------------------------------------------------------------------------


def test_cache_put_get_delete_with_ttl(gw: TestClient) -> None:
    assert (
        gw.put("/v1/cache/greeting?ttl_ms=60000", content=b"\x00hi", headers=A).status_code == 204
    )
    got = gw.get("/v1/cache/greeting", headers=A)
    assert got.status_code == 200 and got.content == b"\x00hi"
    assert got.headers["content-type"] == "application/octet-stream"
    assert gw.delete("/v1/cache/greeting", headers=A).status_code == 204
    assert_error(gw.get("/v1/cache/greeting", headers=A), 404, "unknown_key")
    assert_error(gw.delete("/v1/cache/greeting", headers=A), 404, "unknown_key")
    assert gw.put("/v1/cache/brief?ttl_ms=1", content=b"x", headers=A).status_code == 204
    time.sleep(0.05)
    assert_error(gw.get("/v1/cache/brief", headers=A), 410, "expired")


@pytest.mark.parametrize("ttl", ["0", "-5", "abc", "1.5", "9" * 20])
def test_a_bad_cache_ttl_is_422(gw: TestClient, ttl: str) -> None:
    assert_error(gw.put(f"/v1/cache/k?ttl_ms={ttl}", content=b"x", headers=A), 422, "invalid_ttl")


def test_cache_refusals(gw: TestClient, echo: str) -> None:
    assert_error(gw.put("/v1/cache/bad%20key", content=b"x", headers=A), 422, "invalid_key")
    assert_error(gw.get("/v1/cache/" + "k" * 201, headers=A), 422, "invalid_key")
    key = submit(gw, url=echo + "/get?cache=1")
    result(gw, key)
    assert_error(gw.put(f"/v1/cache/{key}", content=b"x", headers=A), 409, "key_conflict")
    got = gw.get(f"/v1/cache/{key}", headers=A)  # a request's key: MemCacheGet's text
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
    assert '"cache": "1"' in got.text


def assert_inert(response: Any) -> None:
    """Stored or target-chosen bytes: a browser must neither sniff them into HTML nor run them."""
    assert response.status_code == 200, response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp


def test_values_and_response_bodies_are_served_inert(gw: TestClient, echo: str) -> None:
    page = b"<html><script>alert(1)</script></html>"
    assert gw.put("/v1/cache/page", content=page, headers=A).status_code == 204
    assert_inert(gw.get("/v1/cache/page", headers=A))
    key = submit(gw, url=echo + "/anything")
    result(gw, key)
    assert_inert(gw.get(f"/v1/cache/{key}", headers=A))  # a response's text
    assert_inert(gw.get(f"/v1/mychat/get/{key}", headers=A))
    assert_inert(gw.get("/v1/mychat/get/never", headers=A))  # '' too


# -- the MyChat route ----------------------------------------------------------------------------


def test_mychat_send_answers_the_key_as_text_and_get_the_body_text(
    gw: TestClient, echo: str
) -> None:
    sent = gw.post(
        "/v1/mychat/send", json={"method": "POST", "url": echo + "/status/404"}, headers=A
    )
    assert sent.status_code == 200 and sent.headers["content-type"].startswith("text/plain")
    key = sent.text
    assert key.startswith("httppost_async{") and len(key) == len("httppost_async{") + 36 + 1 + 17
    result(gw, key)
    assert gw.get(f"/v1/mychat/exists/{key}", headers=A).text == "true"
    body = gw.get(f"/v1/mychat/get/{key}", headers=A)
    assert body.status_code == 200 and body.text == result(gw, key)["body"]  # a 404's body too


def test_mychat_get_is_empty_until_there_is_a_value_and_error_text_on_failure(
    gw: TestClient, echo: str
) -> None:
    slow = gw.post("/v1/mychat/send", json={"url": echo + "/delay/3000"}, headers=A).text
    assert gw.get(f"/v1/mychat/get/{slow}", headers=A).text == ""
    assert gw.get(f"/v1/mychat/exists/{slow}", headers=A).text == "false"
    gw.delete(f"/v1/requests/{slow}", headers=A)
    failed = gw.post("/v1/mychat/send", json={"url": echo + "/get"}, headers=PLAIN).text
    result(gw, failed, PLAIN)
    assert gw.get(f"/v1/mychat/get/{failed}", headers=PLAIN).text == "ERROR: blocked"
    assert gw.get("/v1/mychat/get/never", headers=A).text == ""
    gw.put("/v1/cache/note", content="héllo".encode(), headers=A)
    assert gw.get("/v1/mychat/get/note", headers=A).text == "héllo"


# -- operations ----------------------------------------------------------------------------------


def test_health_and_readiness(gw: TestClient) -> None:
    assert gw.get("/healthz").json() == {"status": "ok"}
    assert gw.get("/readyz").json() == {"status": "ready", "store": "memory"}


def test_metrics_count_requests_by_host_method_status_class_and_error_kind(
    gw: TestClient, echo: str
) -> None:
    result(gw, submit(gw, url=echo + "/status/503"))
    result(gw, submit(gw, PLAIN, url=echo + "/get"), PLAIN)
    gw.post("/v1/requests", json={}, headers=A)  # a 422, counted as a rejected call
    text = gw.get("/metrics", headers=A).text
    host = echo.removeprefix("http://")
    assert (
        f'postkey_requests_completed_total{{error_kind="",host="{host}",method="GET",status_class="5xx"}}'
        in text
    )
    assert f'error_kind="blocked",host="{host}",method="GET",status_class=""' in text
    for name in (
        "postkey_request_duration_seconds_bucket",
        "postkey_gateway_in_flight",
        "postkey_queue_depth",
        "postkey_transfers_in_flight",
        "postkey_cache_entries",
        "postkey_cache_bytes",
        "postkey_cache_evictions",
        "postkey_requests_submitted_total",
        'postkey_gateway_rejected_total{status="422"}',
    ):
        assert name in text, name


def test_the_openapi_document_names_every_route(gw: TestClient) -> None:
    document = gw.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    assert paths == {
        "/v1/requests",
        "/v1/requests/batch",
        "/v1/requests/{key}",
        "/v1/cache/{key}",
        "/v1/mychat/send",
        "/v1/mychat/get/{key}",
        "/v1/mychat/exists/{key}",
        "/v1/dashboard/stats",
        "/metrics",
        "/healthz",
        "/readyz",
    }


def test_dashboard_stats_have_the_documented_shape(gw: TestClient, echo: str) -> None:
    key = submit(gw, url=echo.replace("http://", "http://user:pw@") + "/get?token=secret")
    result(gw, key)
    stats = gw.get("/v1/dashboard/stats", headers=A).json()
    assert set(stats) == {"now", "uptime_s", "counters", "series", "slowest_hosts", "recent"}
    counters = stats["counters"]
    assert set(counters) == {"submitted", "in_flight", "done", "failed", "cancelled"}
    assert set(counters["done"]) == {"1xx", "2xx", "3xx", "4xx", "5xx"}
    assert len(stats["series"]) == 120
    times = [p["t"] for p in stats["series"]]
    assert times == sorted(times) and times[-1] == int(stats["now"])
    assert set(stats["series"][0]) == {"t", "submitted", "completed", "p50_ms", "p99_ms"}
    assert sum(p["submitted"] for p in stats["series"]) >= 1
    host = stats["slowest_hosts"][0]
    assert set(host) == {"host", "count", "p50_ms", "p99_ms", "errors"}
    newest = stats["recent"][0]
    assert newest["key"] == key and newest["state"] == "done" and newest["status"] == 200
    assert "secret" not in newest["url"] and "pw" not in newest["url"] and "?…" in newest["url"]
    assert set(newest) == {
        "key",
        "method",
        "url",
        "state",
        "status",
        "error_kind",
        "elapsed_ms",
        "submitted_at",
    }


def test_recent_requests_on_the_dashboard_hide_path_parameters(gw: TestClient, echo: str) -> None:
    key = submit(gw, url=echo + "/anything;jsessionid=SECRET/x")
    result(gw, key)
    (entry,) = [
        e for e in gw.get("/v1/dashboard/stats", headers=A).json()["recent"] if e["key"] == key
    ]
    assert entry["url"] == echo + "/anything;…/x"


def test_metrics_count_every_submit_and_result_and_bucket_their_latency(
    gw: TestClient, echo: str
) -> None:
    before = samples(gw)
    keys = [submit(gw, url=echo + f"/delay/{ms}") for ms in (0, 0, 30, 300)]
    keys.append(submit(gw, url=echo + "/status/503", method="POST"))
    for key in keys:
        result(gw, key)
    after = samples(gw)

    def added(sample: str, **labels: str) -> float:
        found = [(k, v) for k, v in after.items() if k[0] == sample and labels.items() <= k[1]]
        assert len(found) == 1, (sample, labels, sorted(after))
        key, value = found[0]
        return value - before.get(key, 0.0)

    assert added("postkey_requests_submitted_total", method="GET") == 4
    assert added("postkey_requests_submitted_total", method="POST") == 1
    host = echo.removeprefix("http://")
    done = "postkey_requests_completed_total"
    assert added(done, host=host, method="GET", status_class="2xx", error_kind="") == 4
    assert added(done, host=host, method="POST", status_class="5xx", error_kind="") == 1
    latency = "postkey_request_duration_seconds"
    get_2xx = {"method": "GET", "outcome": "2xx"}
    assert added(latency + "_count", **get_2xx) == 4
    assert added(latency + "_bucket", le="+Inf", **get_2xx) == 4
    assert added(latency + "_bucket", le="0.025", **get_2xx) == 2  # the two at once
    assert added(latency + "_bucket", le="0.25", **get_2xx) == 3  # and the 30 ms one
    assert 0.33 <= added(latency + "_sum", **get_2xx) < 5


def samples(gw: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by name and labels (parsed by prometheus-client)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = gw.get("/metrics", headers=A).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_in_flight_gauge_is_submits_less_results() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from postkey import Result, State
    from postkey.gateway._metrics import Metrics

    metrics = Metrics(lambda: (0, 0, None, None, None))
    for method in ("GET", "POST", "BREW"):  # any token: counted as "other"
        metrics.on_submit(method)
    done = Result("k", State.DONE, status=204, submitted_at=1.0, finished_at=1.5)
    metrics.on_result("GET", "http://example.com/", done)
    text = metrics.render().decode()
    found = {
        (s.name, s.labels.get("method")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("postkey_gateway_in_flight", None)] == 2
    assert found[("postkey_requests_submitted_total", "other")] == 1
    assert found[("postkey_requests_submitted_created", "other")] > 1e9  # a Unix time
    assert found[("postkey_request_duration_seconds_bucket", "GET")] == 1  # the last: +Inf
    assert metrics.in_flight() == 2
