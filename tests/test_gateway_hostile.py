"""The gateway against hostile callers: tenants probing each other, forged logins, inputs built
to crash it or to blow up its memory, destinations it must not reach, and clients that hang up
on a long-poll or a server that stops under one. Real servers throughout (in process for the
routes, a real ``postkey serve`` process for sockets, memory and signals)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postkey import DestinationPolicy, Settings
from postkey.gateway import GatewayConfig, KeyRing, Tenant, create_app, hash_key
from postkey.gateway._metrics import METHODS
from postkey.testing import LocalServer

from .gateway_fixtures import KEY_A, PLAIN, TENANTS, A, B, TestClient, gateway_client
from .gateway_process import ServeProcess, keys_file

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gw() -> Iterator[TestClient]:
    with gateway_client() as client:
        yield client


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``seconds`` (a bounded wait, not a timing claim)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- tenants cannot see each other --------------------------------------------------------------


def test_another_tenants_keys_answer_exactly_as_keys_that_never_existed(
    gw: TestClient, echo: str
) -> None:
    done = gw.post("/v1/requests", json={"url": echo + "/get", "key": "iso-done"}, headers=A)
    slow = {"url": echo + "/delay/3000", "key": "iso-pending", "timeout_ms": 5000}
    assert done.status_code == 202 and gw.post("/v1/requests", json=slow, headers=A).is_success
    assert gw.put("/v1/cache/iso-value", content=b"secret", headers=A).status_code == 204
    assert gw.get("/v1/requests/iso-done?wait=10", headers=A).status_code == 200

    probes = [
        ("GET", "/v1/requests/{}"),
        ("GET", "/v1/requests/{}?wait=0.2"),
        ("DELETE", "/v1/requests/{}"),
        ("GET", "/v1/cache/{}"),
        ("DELETE", "/v1/cache/{}"),
        ("GET", "/v1/mychat/get/{}"),
        ("GET", "/v1/mychat/exists/{}"),
    ]
    for theirs in ("iso-done", "iso-pending", "iso-value", "acme~iso-done", "acme~iso-value"):
        for method, path in probes:
            probe = gw.request(method, path.format(theirs), headers=B)
            never = gw.request(method, path.format("never-was-here"), headers=B)
            assert probe.status_code == never.status_code, (method, path, theirs)
            assert probe.content.replace(theirs.encode(), b"K") == never.content.replace(
                b"never-was-here", b"K"
            ), (method, path, theirs)
            assert sorted(probe.headers) == sorted(never.headers)
    # B may use the same names for its own keys, without touching A's.
    assert gw.put("/v1/cache/iso-value", content=b"mine", headers=B).status_code == 204
    assert gw.get("/v1/cache/iso-value", headers=A).content == b"secret"
    recent = gw.get("/v1/dashboard/stats", headers=B).json()["recent"]
    assert not [r for r in recent if r["key"].startswith("iso-")]
    assert gw.delete("/v1/requests/iso-pending", headers=A).status_code == 200


# -- auth: the browser's sign-in cannot be forged from another site ------------------------------

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "null"},  # a sandboxed frame, or a cross-site redirect
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "http://testserver.evil.example"},
    ],
    ids=["origin-null", "cross-site", "same-site", "lookalike-origin"],
)
def test_a_login_form_posted_from_another_site_is_refused(
    gw: TestClient, headers: dict[str, str]
) -> None:
    gw.cookies.clear()
    response = gw.post(
        "/login",
        content=f"api_key={KEY_A}".encode(),
        headers={**FORM, **headers},
        follow_redirects=False,
    )
    assert_error(response, 403, "forbidden")
    assert "set-cookie" not in response.headers


def test_a_login_from_the_dashboard_itself_still_signs_in(gw: TestClient) -> None:
    headers = {**FORM, "origin": "http://testserver", "sec-fetch-site": "same-origin"}
    response = gw.post(
        "/login", content=f"api_key={KEY_A}".encode(), headers=headers, follow_redirects=False
    )
    assert response.status_code == 303 and "postkey_session=" in response.headers["set-cookie"]
    gw.cookies.clear()


# -- input: 4xx in the one format, never a 500 ----------------------------------------------------


@pytest.mark.parametrize("ttl", ["%C2%B2", "1%C2%B2", "%D9%A1%D9%A2", "-0", "1e3", "0"])
def test_a_cache_ttl_that_is_not_plain_ascii_digits_is_a_422_not_a_500(
    gw: TestClient, ttl: str
) -> None:
    # '²'.isdigit() is true and int('²') raises: this was a 500.
    response = gw.put(f"/v1/cache/ttl-probe?ttl_ms={ttl}", content=b"v", headers=A)
    assert_error(response, 422, "invalid_ttl")


HOSTILE_BODIES = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"url": "http://a/", "json": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"url": "http://a/", "timeout_ms": 1' + b"0" * 5000 + b"}",
    b'{"url": "http://a/", "timeout_ms": NaN}',
    b'{"url": "http://a/", "timeout_ms": -Infinity}',
    b'{"url": "http://a/", "timeout_ms": 1e400}',
    b'{"url": "http://a/", "timeout_ms": -0}',
    b'{"url": "http://a/", "timeout_ms": 99999999999}',
    b"\xff\xfe{}",
    b'{"url": "http://a/\xc3"}',
    b'{"url": "http://a/", "body": "x", "body_base64": "eA=="}',
    b'{"url": "http://a/", "body_base64": "not base64!"}',
    b'{"url": "file:///etc/passwd"}',
    b'{"url": "gopher://127.0.0.1:6379/_INFO"}',
    b'{"url": "data:text/plain,hi"}',
    b'{"url": "http://a/", "headers": {"X": "a\\r\\nHost: evil"}}',
    b'{"url": "http://a/", "headers": {"X\\u0000": "v"}}',
    b'{"url": "http://a/", "headers": "X: \\u0000"}',
    b'{"url": "http://a/\\r\\nX: y"}',
    b'{"url": "http://a/", "method": "GET /x HTTP/1.1\\r\\n"}',
    b'{"url": "http://a/", "method": "\\ud800"}',
    b'{"url": "http://\\ud800/"}',
    b'{"url": "http://a/", "key": "\\ud800"}',
    b'{"url": "http://a/", "key": "../../etc"}',
    b'{"url": "http://a/", "key": "' + b"k" * 201 + b'"}',
    b'{"url": "http://a/", "client_key": "/etc/shadow"}',
    b'{"url": "http://a/", "ttl_ms": 0}',
    b'{"url": "http://a/", "params": {"a": {"b": 1}}}',
    b'"just a string"',
    b"",
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_hostile_request_bodies_are_refused_in_the_one_error_format(
    gw: TestClient, body: bytes
) -> None:
    for path in ("/v1/requests", "/v1/mychat/send"):
        response = gw.post(path, content=body, headers={**A, **JSON})
        assert 400 <= response.status_code < 500, response.text
        assert_error(response, response.status_code)


def test_a_json_body_of_very_many_tiny_values_is_refused_before_it_is_parsed(
    gw: TestClient,
) -> None:
    # 900 KB of "{}," would be ~20 MB once parsed (30 MiB of it: 850 MB and seconds of CPU).
    batch = b'{"requests": [' + b"{}," * 300_000 + b"{}]}"
    assert_error(gw.post("/v1/requests/batch", content=batch, headers={**A, **JSON}), 413)
    single = b'{"url": "http://a/", "json": [' + b"[]," * 300_000 + b"[]]}"
    assert_error(gw.post("/v1/requests", content=single, headers={**A, **JSON}), 413)


def test_a_large_text_body_full_of_separators_is_still_accepted(gw: TestClient) -> None:
    # The bound counts JSON structure, not commas and brackets inside strings.
    text = '{"a": [1, 2], "b": {"c": ":"}},' * 18_000  # 300,000 separators
    item = {"url": "http://127.0.0.1:9/", "method": "POST", "body": text}
    response = gw.post("/v1/requests", json=item, headers=PLAIN)
    assert response.status_code == 202, response.text


def test_a_batch_giving_one_key_to_two_different_requests_sends_nothing(
    gw: TestClient, echo: str
) -> None:
    items = [
        {"url": echo + "/get", "key": "batch-dup"},
        {"url": echo + "/anything", "key": "batch-dup"},
    ]
    response = gw.post("/v1/requests/batch", json={"requests": items}, headers=A)
    body = assert_error(response, 422, "key_conflict")
    assert "requests[1]" in body["error"]["message"]
    assert gw.get("/v1/requests/batch-dup", headers=A).status_code == 404  # nothing was sent
    same = [items[0], items[0]]
    response = gw.post("/v1/requests/batch", json={"requests": same}, headers=A)
    assert response.status_code == 202 and response.json() == {"keys": ["batch-dup"] * 2}


def test_metrics_labels_do_not_grow_with_the_methods_callers_invent(gw: TestClient) -> None:
    for i in range(40):
        item = {"url": "http://127.0.0.1:9/", "method": f"INVENTED{i}"}
        assert gw.post("/v1/requests", json=item, headers=PLAIN).status_code == 202

    def labels() -> set[str]:
        text = gw.get("/metrics", headers=A).text
        return {part.split('"')[0] for part in text.split('method="')[1:]}

    assert until(lambda: "other" in labels())
    assert labels() <= METHODS | {"other"}


# -- destinations: public only, a tenant's allow-list widens its own policy only -----------------


class Canary:
    """A listener that counts the connections it accepts (none is the expected count)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


ONE_PORT_KEY = "pk_test_one_port_0123456789"
PUBLIC_KEY = "pk_test_public_0123456789"
NON_PUBLIC_HOSTS = [
    "127.0.0.1",
    "[::1]",
    "localhost",
    "127.1",
    "2130706433",
    "0",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "10.0.0.1",
    "169.254.169.254",
]


def test_non_public_destinations_and_redirects_to_them_end_blocked() -> None:
    canary = Canary()
    with LocalServer() as allowed:
        tenants = {
            hash_key(ONE_PORT_KEY): Tenant("oneport", allow=(f"127.0.0.1:{allowed.port}",)),
            hash_key(PUBLIC_KEY): Tenant("public"),
        }
        config = GatewayConfig(Settings(policy=DestinationPolicy.public_only()), KeyRing(tenants))
        one_port = {"Authorization": f"Bearer {ONE_PORT_KEY}"}
        public = {"Authorization": f"Bearer {PUBLIC_KEY}"}
        with TestClient(create_app(config)) as gw:

            def outcome(auth: dict[str, str], url: str, **more: Any) -> tuple[str, str | None]:
                item = {"url": url, "timeout_ms": 2000, **more}
                response = gw.post("/v1/requests", json=item, headers=auth)
                if response.status_code != 202:
                    return "refused", assert_error(response, 422)["error"]["code"]
                key = response.json()["key"]
                out = gw.get(f"/v1/requests/{key}?wait=10", headers=auth).json()
                return out["state"], out.get("error_kind")

            for host in NON_PUBLIC_HOSTS:
                for auth in (public, one_port):
                    state, kind = outcome(auth, f"http://{host}:{canary.port}/")
                    assert state == "refused" or (state, kind) == ("failed", "blocked"), host
            for target in ("127.0.0.1", "localhost", "[::1]"):
                hop = urllib.parse.quote(f"http://{target}:{canary.port}/")
                url = f"{allowed.url}/redirect-to?url={hop}"
                assert outcome(one_port, url, follow_redirects=True) == ("failed", "blocked")
            # The allow-list widens that tenant's policy, for that port, and no one else's.
            assert outcome(one_port, allowed.url + "/get") == ("done", None)
            assert outcome(public, allowed.url + "/get") == ("failed", "blocked")
    canary.sock.close()
    assert canary.connections == 0


# -- a real server process: memory, hang-ups, shutdown --------------------------------------------

KEY = "pk_test_hostile_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def start_server(tmp: Path) -> ServeProcess:
    return ServeProcess("--keys", str(keys_file(tmp, acme=KEY))).wait_ready()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = start_server(tmp_path_factory.mktemp("keys"))
    yield server
    server.stop()


def call(server: ServeProcess, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {**AUTH, **(JSON if data is not None else {})}
    request = urllib.request.Request(server.url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def long_polls(server: ServeProcess) -> float:
    text = call(server, "GET", "/metrics")[1].decode()
    line = next(x for x in text.splitlines() if x.startswith("postkey_gateway_long_polls "))
    return float(line.split()[1])


def open_long_poll(
    server: ServeProcess, key: str, seconds: int, then: bytes = b""
) -> socket.socket:
    """A long-poll on a raw socket, once it waits; ``then``: bytes sent in the same write."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        f"GET /v1/requests/{key}?wait={seconds} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n".encode()
        + then
    )
    assert until(lambda: long_polls(server) >= 1), "the long-poll never started"
    return sock


def peak_rss_mib(server: ServeProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


def test_a_30_mib_body_of_tiny_json_values_does_not_blow_up_the_servers_memory(
    served: ServeProcess,
) -> None:
    before = peak_rss_mib(served)
    body = b'{"requests": [' + b"{}," * (10 << 20) + b"{}]}"  # 30 MiB, under --max-body
    request = urllib.request.Request(served.url + "/v1/requests/batch", body, {**AUTH, **JSON})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    # It was 850 MB when parsed; reading the body itself takes its 30 MiB.
    assert peak_rss_mib(served) - before < 200
    assert call(served, "GET", "/healthz")[0] == 200


def test_a_long_poll_whose_client_hangs_up_stops_waiting(served: ServeProcess, echo: str) -> None:
    item = {"url": echo + "/delay/30000", "timeout_ms": 30000}
    status, answer = call(served, "POST", "/v1/requests", item)
    assert status == 202, answer
    key = json.loads(answer)["key"]
    sock = open_long_poll(served, key, 30)
    sock.close()
    # The waiter goes when its caller does, not when its 30 s are up.
    assert until(lambda: long_polls(served) == 0), "the long-poll outlived its client"
    assert call(served, "GET", f"/v1/requests/{key}")[0] == 202  # still pending meanwhile
    assert call(served, "DELETE", f"/v1/requests/{key}")[0] == 200


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("with_the_poll", "later"),
    [
        (HEALTHZ, b""),  # in the same write: uvicorn queues it and stops reading
        (b"", HEALTHZ),  # in a write of its own, once the poll waits
        (b"", HEALTHZ * 3 + b"GET /hea"),  # several, and the start of one more
        (b"", b"NOT HTTP\r\n\r\n"),  # a malformed one: its 400 waits for the poll's answer
    ],
    ids=["same-write", "later-write", "several", "malformed"],
)
def test_a_long_poll_with_requests_pipelined_behind_it_stops_when_its_client_hangs_up(
    served: ServeProcess, echo: str, with_the_poll: bytes, later: bytes
) -> None:
    item = {"url": echo + "/delay/30000", "timeout_ms": 30000}
    status, answer = call(served, "POST", "/v1/requests", item)
    assert status == 202, answer
    key = json.loads(answer)["key"]
    assert until(lambda: long_polls(served) == 0)  # from an earlier test
    sock = open_long_poll(served, key, 30, then=with_the_poll)
    if later:
        sock.sendall(later)
        time.sleep(0.2)  # read by the server before the hang-up
    sock.close()
    # Its place is freed when its caller goes, not when its 30 s are up.
    assert until(lambda: long_polls(served) == 0, 5), "the long-poll outlived its client"
    assert call(served, "DELETE", f"/v1/requests/{key}")[0] == 200


def test_a_long_poll_with_a_request_pipelined_behind_it_is_still_answered_in_order(
    served: ServeProcess, echo: str
) -> None:
    # Reading on behind a queued request (to see a hang-up) changes nothing for a client that
    # stays: the poll's answer, then the pipelined ones, in order.
    item = {"url": echo + "/delay/30000", "timeout_ms": 30000}
    key = json.loads(call(served, "POST", "/v1/requests", item)[1])["key"]
    with open_long_poll(served, key, 1, then=HEALTHZ) as sock:
        sock.sendall(HEALTHZ + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202"), answer
    assert answer.count(b"HTTP/1.1 200") == 3 and answer.count(b"HTTP/1.1 ") == 4, answer
    assert call(served, "DELETE", f"/v1/requests/{key}")[0] == 200


def test_sigterm_with_long_polls_open_answers_them_and_ends_promptly(
    tmp_path: Path, echo: str
) -> None:
    server = start_server(tmp_path)
    try:
        item = {"url": echo + "/delay/60000", "timeout_ms": 60000}
        status, answer = call(server, "POST", "/v1/requests", item)
        assert status == 202, answer
        key = json.loads(answer)["key"]
        socks = [open_long_poll(server, key, 60) for _ in range(3)]
        server.process.terminate()
        # The long-polls (60 s) must not hold the shutdown: they answer what is known now. (uvicorn
        # raises the signal again once it has shut down cleanly: -15.)
        assert server.process.wait(30) in (0, -15), server.output()
        assert "Application shutdown complete" in server.output()
        for sock in socks:
            with sock:
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 202"), answer
            assert b'"pending"' in answer or b'"running"' in answer
    finally:
        server.stop()


# -- what one tenant must not be able to do to another -------------------------------------------


def test_one_tenant_cannot_evict_another_tenants_values() -> None:
    # acme, beta and slow share one store (the same destination policy): a third of 4 MiB each.
    settings = Settings(policy=DestinationPolicy.public_only(), cache_max_bytes=4 << 20)
    with gateway_client(GatewayConfig(settings, KeyRing(TENANTS))) as gw:
        assert gw.put("/v1/cache/mine", content=b"a" * 1000, headers=A).status_code == 204
        for i in range(10):
            noise = gw.put(f"/v1/cache/noise-{i}", content=b"b" * (1 << 20), headers=B)
            assert noise.status_code == 204, noise.text
        assert gw.get("/v1/cache/mine", headers=A).content == b"a" * 1000
        # B's own values went instead: its share holds one of them.
        assert gw.get("/v1/cache/noise-9", headers=B).status_code == 200
        assert gw.get("/v1/cache/noise-0", headers=B).status_code == 410
        # A value larger than the tenant's whole share is refused, not stored and lost at once.
        too_big = gw.put("/v1/cache/huge", content=b"c" * (2 << 20), headers=B)
        assert too_big.status_code == 422, too_big.text
        assert "holds at most" in too_big.json()["error"]["message"]
        assert gw.get("/v1/cache/huge", headers=B).status_code == 404


@contextlib.contextmanager
def _b_long_polling(gw: Any, echo: str, count: int, setup: str) -> Iterator[tuple[str, str]]:
    """B's slow request and A's; ``count`` long-polls of B on B's, all waiting (``setup`` says
    why that many); afterwards both requests are cancelled and the polls have ended."""
    slow = {"url": echo + "/delay/5000", "timeout_ms": 6000}
    theirs = gw.post("/v1/requests", json=slow, headers=B).json()["key"]
    mine = gw.post("/v1/requests", json=slow, headers=A).json()["key"]
    path = f"/v1/requests/{theirs}?wait=5"
    polls = [
        threading.Thread(target=lambda: gw.get(path, headers=B), daemon=True) for _ in range(count)
    ]
    for poll in polls:
        poll.start()
    try:
        assert until(lambda: gw.app.state.gateway.waiters == count), setup
        yield theirs, mine
    finally:
        gw.delete(f"/v1/requests/{theirs}", headers=B)
        gw.delete(f"/v1/requests/{mine}", headers=A)
        for poll in polls:
            poll.join(10)


def test_one_tenant_cannot_take_every_long_poll_place(echo: str) -> None:
    settings = Settings(policy=DestinationPolicy.public_only())
    with (
        gateway_client(GatewayConfig(settings, KeyRing(TENANTS), max_waiters=2)) as gw,
        _b_long_polling(gw, echo, 2, "setup: B's polls") as (_theirs, mine),
    ):
        assert gw.get(f"/v1/requests/{mine}?wait=0.1", headers=A).status_code == 202


def test_long_poll_places_beyond_a_tenants_reserve_come_from_the_shared_pool(echo: str) -> None:
    settings = Settings(policy=DestinationPolicy.public_only())
    config = GatewayConfig(settings, KeyRing(TENANTS), max_waiters=2, tenant_waiters=1)
    with gateway_client(config) as gw:
        gateway = gw.app.state.gateway
        with _b_long_polling(gw, echo, 3, "B: its reserve of 1, and the pool's 2") as (
            theirs,
            mine,
        ):
            refused = gw.get(f"/v1/requests/{theirs}?wait=0.1", headers=B)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert gw.get(f"/v1/requests/{mine}?wait=0.1", headers=A).status_code == 202
        assert until(lambda: gateway.waiters == 0)
        assert gateway._tenant_waiters == {} and gateway._pooled_waiters == 0
