"""Redirects end to end: the engine follows each hop itself, as a new transfer validated like a
submit, with the policy and the resolver consulted for every hop's host name."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from postkey import Client


class RecordingServer:
    """A small real HTTP/1.1 server on one loopback address that records what reaches it.

    A path whose last segment is ``redirect`` answers ``?status=`` (default 302) with the raw
    ``?location=`` as its Location header (no Location when the parameter is absent); ``loop``
    redirects to itself. Both wait ``?delay_ms=`` first. Any other path answers 200 with JSON
    describing the request: method, path, headers, body.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        owner = self
        self.connections = 0
        self.requests: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = {
                    "method": self.command,
                    "path": parts.path,
                    "headers": dict(self.headers.items()),
                    "body": body.decode("latin-1"),
                }
                owner.requests.append(seen)
                last = parts.path.rsplit("/", 1)[-1]
                if last in ("redirect", "loop"):
                    query = parse_qs(parts.query)
                    time.sleep(int(query.get("delay_ms", ["0"])[0]) / 1000)
                    self.send_response(int(query.get("status", ["302"])[0]))
                    location = self.path if last == "loop" else query.get("location", [None])[0]
                    if location is not None:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer  # noqa: N815

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                owner.connections += 1
                return super().get_request()

        self._server = Server((host, 0), Handler)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` or ``http://[::1]:54321``."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def redirect(self, location: str | None, status: int = 302, path: str = "/redirect") -> str:
        """A URL on this server answering ``status`` with ``Location: location``."""
        url = f"{self.url}{path}?status={status}"
        return url if location is None else f"{url}&location={quote(location, safe='')}"

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as s:
        yield s


@pytest.fixture
def other() -> Iterator[RecordingServer]:
    """A second server: another port, so another origin."""
    with RecordingServer() as s:
        yield s


def follow(client: Client, method: str, url: str, body: bytes | None = None, **kw: Any) -> Any:
    key = client.request_async(
        method, url, body, kw.pop("headers", None), 3000, follow_redirects=True, **kw
    )
    return client.wait(key, 10)


def test_a_relative_location_is_resolved_against_the_current_url(server: RecordingServer) -> None:
    with Client() as c:
        result = follow(c, "GET", server.redirect("../final?x=1", path="/a/b/redirect"))
    assert result.status == 200, result
    assert result.json()["path"] == "/a/final"
    assert [r["path"] for r in server.requests] == ["/a/b/redirect", "/a/final"]


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_post_redirected_by_301_302_or_303_becomes_a_get_without_body(
    server: RecordingServer, status: int
) -> None:
    headers = {"Content-Type": "application/json", "X-Kept": "yes"}
    with Client() as c:
        result = follow(c, "POST", server.redirect("/final", status), b'{"a": 1}', headers=headers)
    final = result.json()
    assert (final["method"], final["body"]) == ("GET", "")
    assert "Content-Type" not in final["headers"] and "Content-Length" not in final["headers"]
    assert final["headers"]["X-Kept"] == "yes"
    assert server.requests[0]["body"] == '{"a": 1}'


def test_a_303_turns_a_put_into_a_get_and_keeps_a_head_a_head(server: RecordingServer) -> None:
    with Client() as c:
        put = follow(c, "PUT", server.redirect("/final", 303), b"data").json()
        head = follow(c, "HEAD", server.redirect("/final", 303))
    assert (put["method"], put["body"]) == ("GET", "")
    assert head.status == 200
    assert server.requests[-1]["method"] == "HEAD"


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_307_and_308_keep_the_method_and_the_body(
    server: RecordingServer, status: int, method: str
) -> None:
    headers = {"Content-Type": "text/plain"}
    with Client() as c:
        final = follow(c, method, server.redirect("/final", status), b"payload", headers=headers)
    seen = final.json()
    assert (seen["method"], seen["body"]) == (method, "payload")
    assert seen["headers"]["Content-Type"] == "text/plain"


def test_credentials_are_dropped_across_origins_and_kept_within_one(
    server: RecordingServer, other: RecordingServer
) -> None:
    headers = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Kept": "yes"}
    with Client() as c:
        cross = follow(c, "GET", server.redirect(other.url + "/final"), headers=headers).json()
        same = follow(c, "GET", server.redirect(server.url + "/final"), headers=headers).json()
    assert "Authorization" not in cross["headers"] and "Cookie" not in cross["headers"]
    assert cross["headers"]["X-Kept"] == "yes"
    assert same["headers"]["Authorization"] == "Bearer s3cret"
    assert same["headers"]["Cookie"] == "sid=1"
    assert [r["path"] for r in other.requests] == ["/final"]


def test_too_many_redirects_fail_and_name_the_limit(server: RecordingServer) -> None:
    with Client(max_redirects=3) as c:
        result = follow(c, "GET", server.url + "/loop")
    assert result.state == "failed" and result.error_kind == "too_many_redirects", result
    assert "3" in (result.error or "")
    assert len(server.requests) == 4  # the request and three hops; the fourth is not followed


def test_a_redirect_to_ftp_is_refused_as_protocol(server: RecordingServer) -> None:
    with Client() as c:
        result = follow(c, "GET", server.redirect("ftp://127.0.0.1/file"))
    assert result.state == "failed" and result.error_kind == "protocol", result
    assert "ftp" in (result.error or "")
    assert len(server.requests) == 1


def test_every_hop_host_name_is_looked_up_through_the_resolver(server: RecordingServer) -> None:
    asked: list[str] = []

    def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    start = f"http://first.test:{server.port}/redirect?location=" + quote(
        f"http://second.test:{server.port}/final", safe=""
    )
    with Client(resolver=resolver) as c:
        result = follow(c, "GET", start)
    assert result.status == 200, result
    assert asked == ["first.test", "second.test"]
    assert [r["headers"]["Host"] for r in server.requests] == [
        f"first.test:{server.port}",
        f"second.test:{server.port}",
    ]


def test_a_redirect_without_location_is_the_final_response(server: RecordingServer) -> None:
    with Client() as c:
        result = follow(c, "GET", server.redirect(None, 302))
    assert result.state == "done" and result.status == 302


def test_hops_share_the_request_deadline(server: RecordingServer) -> None:
    # Each hop takes 400 ms and redirects again: five hops would take 2 s; the deadline is 1 s.
    with Client() as c:
        started = time.monotonic()
        key = c.get_async(server.url + "/loop?delay_ms=400", timeout_ms=1000, follow_redirects=True)
        result = c.wait(key, 10)
    assert result.state == "failed" and result.error_kind == "timeout", result
    assert time.monotonic() - started < 1.5
