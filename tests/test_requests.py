"""Requests against the echo server: methods, bodies, headers, results, keys, redirects, TLS."""

from __future__ import annotations

import gzip
import json
import re
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

import postkey
from postkey import Client, KeyConflict, State

from .servers import HostileServer


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_the_server(client: Client, echo: str, method: str) -> None:
    key = client.request_async(method, echo + "/anything?x=1", "payload", timeout_ms=5000)
    result = client.wait(key, 10)
    assert result.state == State.DONE and result.status == 200
    echoed = result.json()
    assert echoed["method"] == method
    assert echoed["args"] == {"x": "1"}
    assert echoed["data"] == "payload"


def test_head_has_headers_and_no_body(client: Client, echo: str) -> None:
    result = client.wait(client.request_async("HEAD", echo + "/x", timeout_ms=5000), 10)
    assert result.status == 200 and result.body == b""
    assert int(result.headers["content-length"]) > 0


def test_body_bytes_arrive_exactly_and_no_content_type_is_invented(
    client: Client, echo: str
) -> None:
    body = bytes(range(256)) * 4
    result = client.wait(client.post_async(echo + "/p", body, None, 5000), 10)
    echoed = result.json()
    assert echoed["headers"]["Content-Length"] == "1024"
    assert "Content-Type" not in echoed["headers"]
    assert "Expect" not in echoed["headers"]


def test_headers_in_all_three_forms(client: Client, echo: str) -> None:
    forms: list[postkey._headers.HeadersInput] = [
        "X-One: 1\r\nX-Two:   two  \r\n",
        "X-One: 1\nX-Two: two",  # bare LF is accepted as CRLF
        {"X-One": "1", "X-Two": "two"},
        [("X-One", "1"), ("X-Two", "two")],
    ]
    for headers in forms:
        echoed = client.wait(client.post_async(echo, "", headers, 5000), 10).json()
        assert echoed["headers"]["X-One"] == "1"
        assert echoed["headers"]["X-Two"] == "two"


def test_latin_1_header_values_are_sent_as_latin_1_bytes(client: Client, echo: str) -> None:
    # Values up to U+00FF are accepted (above is refused): they go out as one byte each.
    result = client.wait(client.post_async(echo, "", {"X-Name": "café ÿ"}, 5000), 10)
    assert result.status == 200, result
    assert result.json()["headers"]["X-Name"] == "café ÿ"


def test_empty_header_value_is_sent_empty(client: Client, echo: str) -> None:
    echoed = client.wait(client.post_async(echo, "", "X-Empty:", 5000), 10).json()
    assert echoed["headers"]["X-Empty"] == ""


def test_result_fields(client: Client, echo: str) -> None:
    key = client.post_async(echo + "/status/404", "{}", "Content-Type: application/json", 5000)
    result = client.wait(key, 10)
    assert result.key == key
    assert result.state == "done" and result.status == 404 and not result.ok
    assert result.reason == "Not Found"
    assert result.http_version == "1.1"
    names = [name for name, _ in result.headers.items()]
    assert names[:2] == ["Server", "Date"]
    assert result.headers["CONTENT-TYPE"] == "application/json"
    assert result.text.startswith("{")
    assert result.timings is not None
    t = result.timings
    assert 0 <= t.dns_ms <= t.connect_ms <= t.first_byte_ms <= t.total_ms
    assert result.submitted_at is not None and result.finished_at is not None
    assert result.finished_at >= result.submitted_at
    assert result.attempts == 1
    assert result.error_kind is None
    as_dict = result.to_dict()
    assert as_dict["status"] == 404 and json.loads(as_dict["body"])["method"] == "POST"


def test_text_uses_the_charset_of_content_type() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=iso-8859-1"
    result = postkey.Result(
        "k", State.DONE, status=200, raw_head=raw, body="café".encode("latin-1")
    )
    assert result.charset == "iso-8859-1"
    assert result.text == "café"
    broken = postkey.Result("k", State.DONE, status=200, raw_head=b"HTTP/1.1 200 OK", body=b"\xff")
    assert broken.text == "\ufffd"


def test_duplicate_response_headers_are_kept_in_order() -> None:
    raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX: y\r\nSet-Cookie: b=2"
    result = postkey.Result("k", State.DONE, status=200, raw_head=raw)
    assert result.headers == [("Set-Cookie", "a=1"), ("X", "y"), ("Set-Cookie", "b=2")]


def test_unknown_key_is_not_pending(client: Client) -> None:
    assert client.status("never-issued") == State.UNKNOWN
    assert not client.exists("never-issued")
    assert client.wait("never-issued", 5).state == State.UNKNOWN


def test_states_go_pending_running_done(client: Client, hostile: str) -> None:
    key = client.get_async(hostile + "/hold", timeout_ms=5000)
    assert client.status(key) in (State.PENDING, State.RUNNING)
    assert not client.exists(key)
    assert client.wait(key, 5).state == State.DONE
    assert client.exists(key)


def test_default_keys_are_128_bit_hex(client: Client, echo: str) -> None:
    keys = {client.get_async(echo, timeout_ms=5000) for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)


def test_mychat_key_format(client: Client, echo: str) -> None:
    key = client.request_async("PATCH", echo, "x", key_format="mychat", timeout_ms=5000)
    assert re.fullmatch(r"httppatch_async\{[0-9a-f-]{36}\}\d{17}", key)
    assert client.wait(key, 10).status == 200


def test_same_key_same_request_sends_once(
    client: Client, hostile: str, hostile_server: HostileServer
) -> None:
    first = client.post_async(hostile + "/hold", "same", None, 5000, key="order-42")
    second = client.post_async(hostile + "/hold", "same", None, 5000, key="order-42")
    assert first == second == "order-42"
    client.wait("order-42", 5)
    third = client.post_async(hostile + "/hold", "same", None, 5000, key="order-42")
    assert third == "order-42"
    assert client.cache_count() == 1
    assert hostile_server.requests == 1


def test_same_key_different_request_raises(client: Client, echo: str) -> None:
    client.post_async(echo, "a", None, 5000, key="k-1")
    with pytest.raises(KeyConflict):
        client.post_async(echo, "b", None, 5000, key="k-1")
    client.cache_set("plain-value", "v")
    with pytest.raises(KeyConflict):
        client.post_async(echo, "a", None, 5000, key="plain-value")


def test_bad_caller_keys_are_refused(client: Client, echo: str) -> None:
    for bad in ["", "a b", "a/b", "k" * 251, "ключ"]:
        with pytest.raises(postkey.InvalidKey):
            client.post_async(echo, "a", None, 5000, key=bad)


def test_redirects_are_not_followed_unless_asked(client: Client, echo: str) -> None:
    not_followed = client.wait(client.get_async(echo + "/redirect/2", timeout_ms=5000), 10)
    assert not_followed.status == 302
    assert not_followed.headers["location"] == "/redirect/1"
    followed = client.get_async(echo + "/redirect/3", timeout_ms=5000, follow_redirects=True)
    result = client.wait(followed, 10)
    assert result.status == 200 and result.json()["url"].endswith("/anything")
    assert "location" not in result.headers  # the final response only


def test_redirect_hops_are_capped(echo: str) -> None:
    with Client(max_redirects=2, follow_redirects=True) as c:
        result = c.wait(c.get_async(echo + "/redirect/5", timeout_ms=5000), 10)
    assert result.state == "failed" and result.error_kind == "too_many_redirects"


def test_gzip_is_raw_unless_decompress_is_on(client: Client, echo: str) -> None:
    raw = client.wait(client.get_async(echo + "/gzip", timeout_ms=5000), 10)
    assert raw.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw.body))["method"] == "GET"
    with Client(decompress=True) as c:
        decoded = c.wait(c.get_async(echo + "/gzip", timeout_ms=5000), 10)
    assert decoded.json()["method"] == "GET"


def test_on_done_runs_once_per_request_off_the_engine_thread(client: Client, echo: str) -> None:
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def on_done(result: postkey.Result) -> None:
        seen.append((result.key, threading.current_thread().name))
        if len(seen) == 20:
            done.set()

    keys = [client.get_async(echo, timeout_ms=5000, on_done=on_done) for _ in range(20)]
    assert done.wait(10)
    assert sorted(k for k, _ in seen) == sorted(keys)
    assert {name for _, name in seen} == {"postkey-callbacks"}


def test_a_raising_callback_does_not_break_anything(client: Client, echo: str) -> None:
    def boom(result: postkey.Result) -> None:
        raise RuntimeError("user bug")

    key = client.get_async(echo, timeout_ms=5000, on_done=boom)
    assert client.wait(key, 10).status == 200
    assert client.wait(client.get_async(echo, timeout_ms=5000), 10).status == 200


def test_submit_many_validates_all_before_sending(client: Client, echo: str) -> None:
    keys = client.submit_many(
        [{"method": "POST", "url": echo, "body": str(i), "timeout_ms": 5000} for i in range(5)]
    )
    assert [client.wait(k, 10).json()["data"] for k in keys] == [str(i) for i in range(5)]
    before = client.cache_count()
    with pytest.raises(postkey.InvalidURL, match="request #1"):
        client.submit_many([{"url": echo}, {"url": "ftp://x/"}])
    assert client.cache_count() == before


# -- TLS ------------------------------------------------------------------------------------------


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield f"https://localhost:{server.server_address[1]}/", ca_file
    server.shutdown()
    server.server_close()


def test_tls_is_verified(tls_server: tuple[str, Path]) -> None:
    url, ca_file = tls_server
    with Client() as untrusting:
        refused = untrusting.wait(untrusting.get_async(url, timeout_ms=5000), 10)
    assert refused.state == "failed" and refused.error_kind == "tls"
    with Client(ca_file=str(ca_file)) as trusting:
        result = trusting.wait(trusting.get_async(url, timeout_ms=5000), 10)
    assert result.status == 200 and result.body == b"hello"
    assert result.timings is not None and result.timings.tls_ms > 0


def test_tls_names_the_host_even_with_a_pinned_address(tls_server: tuple[str, Path]) -> None:
    # The injected resolver pins localhost to 127.0.0.1; the certificate is still checked
    # against "localhost" (SNI and host name), so the request succeeds only if both kept it.
    url, ca_file = tls_server
    calls: list[str] = []

    def resolver(host: str) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    with Client(ca_file=str(ca_file), resolver=resolver) as c:
        result = c.wait(c.get_async(url, timeout_ms=5000), 10)
    assert calls == ["localhost"]
    assert result.status == 200 and result.body == b"hello"


def test_http2_is_used_when_the_server_offers_it(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "tests.h2_app:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--certfile",
            str(tmp_path / "cert.pem"),
            "--keyfile",
            str(tmp_path / "key.pem"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        with Client(ca_file=str(tmp_path / "ca.pem")) as c:
            keys = [c.get_async(f"https://localhost:{port}/", timeout_ms=5000) for _ in range(5)]
            results = c.wait_many(keys, 10)
    finally:
        server.terminate()
        server.wait(10)
    assert all(r.status == 200 for r in results), results
    assert {r.http_version for r in results} == {"2"}
    assert {r.body for r in results} == {b"http/2"}
    assert results[0].headers["x-app"] == "h2"


@pytest.mark.parametrize(
    "body", [b'{"x": NaN}', b"[-Infinity]", b"[" * 100_000, b"\xff\xfe{", b"{} x"]
)
def test_result_json_is_rfc_8259_and_raises_only_value_error(body: bytes) -> None:
    # It was json.loads: NaN and Infinity parsed (while JSONValid said False), and a hostile
    # server's deep nesting raised RecursionError, not the documented ValueError.
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
    result = postkey.Result("k", postkey.State.DONE, status=200, raw_head=raw, body=body)
    with pytest.raises(ValueError):
        result.json()
    assert postkey.Result("k", postkey.State.DONE, status=200, body=b'{"a": [1]}').json() == {
        "a": [1]
    }
