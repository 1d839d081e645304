"""The first hour with postkey, as a hostile reviewer tried it: each test pinned a defect found
in review (odd charsets, forged status lines, non-postkey errors, misleading hints, environment
surprises, leaking logs, async submits holding threads, a test server that kept answering, CLI
holes) and now holds the fix.

Real servers on 127.0.0.1 only (postkey.testing.LocalServer and a canned-bytes server below), no
mocks. Tests that run the CLI or touch the environment use a subprocess.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import postkey
from postkey import AsyncClient, Client, ClientClosed, Headers, QueueFull
from postkey.testing import LocalServer

DEAD = "http://127.0.0.1:9/"  # nothing is sent to it: every call below is refused on submit


class CannedServer:
    """Answers every connection with the same raw bytes; counts connections."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(self.payload)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    return subprocess.run(
        [sys.executable, "-m", "postkey", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


# -- 1. Result.text: a hostile charset --------------------------------------------------------


@pytest.mark.parametrize("charset", ["undefined", "idna", "punycode"])
def test_text_never_raises_for_a_charset_the_server_chose(charset: str) -> None:
    # README: `.text` is "the body decoded with the Content-Type charset"; the docstring says
    # undecodable bytes become U+FFFD. A server picks the charset: a Python codec that is not a
    # text encoding (or refuses errors="replace") must fall back, not raise UnicodeError.
    canned = CannedServer(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset="
        + charset.encode()
        + b"\r\nContent-Length: 4\r\n\r\n\xff\xfeab"
    )
    try:
        with Client() as client:
            result = client.wait(client.get_async(canned.url + "/"), 5)
        assert result.status == 200
        assert isinstance(result.text, str)
    finally:
        canned.close()


# -- 2. Headers: a header line that looks like a status line -----------------------------------


def test_a_header_named_like_a_status_line_does_not_hide_the_headers_before_it() -> None:
    # libcurl accepts "HTTP/2: ..." as a header line (it has a colon); parse_response_head takes
    # every line starting with "HTTP/" for a new response block, so the server can hide headers
    # (here Set-Cookie) and forge reason / http_version while raw_head still shows them.
    canned = CannedServer(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nHTTP/2: x 404 Fake\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        with Client() as client:
            result = client.wait(client.get_async(canned.url + "/"), 5)
        assert result.state == "done"
        assert result.headers.get_list("set-cookie") == ["a=1"]
        assert result.http_version == "1.1"
        assert result.reason == "OK"
    finally:
        canned.close()


def test_a_header_named_like_a_status_line_does_not_lift_the_stacked_encoding_limit() -> None:
    # The same reading in _transport._content_codings: the fake line resets the count, so three
    # stacked gzips (refused as `protocol` without it) are decoded.
    body = gzip.compress(gzip.compress(gzip.compress(b"three layers")))
    canned = CannedServer(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip, gzip\r\nHTTP/9: x\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    try:
        with Client(decompress=True) as client:
            result = client.wait(client.get_async(canned.url + "/"), 5)
        assert result.error_kind == "protocol", result.describe()
    finally:
        canned.close()


def test_headers_equality_with_a_non_str_keyed_mapping_is_false_not_an_error() -> None:
    assert (Headers([("A", "1")]) == {1: "x"}) is False


# -- 3. Input errors that are not PostkeyError ----------------------------------------------


def _deep(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.post_async(DEAD, data={"a": "\ud800"}), postkey.InvalidBody),
        (lambda c: c.post_async(DEAD, data={"\udc80": "x"}), postkey.InvalidBody),
        (lambda c: c.get_async(DEAD, params={"a": "\ud800"}), postkey.InvalidURL),
        (lambda c: c.post_async(DEAD, json=_deep(100_000)), postkey.InvalidBody),
        (lambda c: c.request_async(["GET"], DEAD), postkey.InvalidMethod),
    ],
    ids=["data-surrogate", "data-name-surrogate", "params-surrogate", "json-deep", "method-list"],
)
def test_bad_submit_input_raises_a_postkey_error(call, error) -> None:  # type: ignore[no-untyped-def]
    # README: "All input errors subclass both postkey.PostkeyError and ValueError". Today these
    # escape as UnicodeEncodeError, RecursionError and TypeError("unhashable type: 'list'").
    with Client() as client:
        with pytest.raises(error):
            call(client)
        assert client.cache_count() == 0


# -- 4. UnknownArgument ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_async(DEAD, body="x"),
        lambda c: c.post_async(DEAD, method="PUT"),
    ],
    ids=["get_async-body", "post_async-method"],
)
def test_unknown_argument_never_suggests_the_name_it_refused(call) -> None:  # type: ignore[no-untyped-def]
    # get_async(body=...) says "unknown argument 'body' (did you mean 'body'?)".
    with Client() as client, pytest.raises(postkey.UnknownArgument) as caught:
        call(client)
    message = str(caught.value)
    name = message.split("unknown argument ", 1)[1].split(maxsplit=1)[0]
    assert f"did you mean {name}" not in message


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_misspelled_setting_is_an_unknown_argument_with_the_closest_name(cls: type) -> None:
    # README: "a keyword argument a call does not take raises UnknownArgument (also a
    # TypeError), which names it and the closest real one". Client(max_inflight=8) raises
    # InvalidValue("unknown setting(s): max_inflight") with no hint.
    with pytest.raises(postkey.UnknownArgument, match="did you mean 'max_in_flight'"):
        cls(max_inflight=8)


def test_a_mychat_call_with_a_misspelled_argument_is_an_unknown_argument() -> None:
    from postkey import mychat

    with pytest.raises(postkey.UnknownArgument, match="ATimeOut"):
        mychat.HTTPSendPostMessageAsync(DEAD, "", "", ATimeout=100)  # type: ignore[call-arg]


# -- 5. The library reads the environment ------------------------------------------------------


def test_an_applications_own_postkey_variable_does_not_break_the_default_client() -> None:
    # The default client reads POSTKEY_* settings (so POSTKEY_STORE can point the MyChat names
    # at Redis); a POSTKEY_ variable that names no setting is the application's own: a warning,
    # not an error for every module-level call.
    code = textwrap.dedent(
        """
        import postkey
        from postkey.testing import LocalServer

        with LocalServer() as server:
            key = postkey.get_async(server.url + "/get", timeout_ms=3000)
            print(postkey.wait(key, timeout=5).status)
        """
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "POSTKEY_API_TOKEN": "the application's own setting"},
    )
    assert done.returncode == 0, done.stderr[-400:]
    assert done.stdout.strip() == "200"


# -- 6. DEBUG logging leaks URLs through error messages ---------------------------------------


def test_debug_end_lines_of_failed_redirects_hide_user_info_and_query(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    # README: "URLs are logged without user info and with the query replaced by ?…". The `end`
    # line carries Result.describe(), whose redirect errors hold whole URLs.
    with_auth = server.url.replace("http://", "http://alice:pw-SECRET@")
    allow_self = postkey.DestinationPolicy.public_only(allow=(f"127.0.0.1:{server.port}",))
    with caplog.at_level(logging.DEBUG, logger="postkey"):
        with Client(max_redirects=1) as client:
            too_many = client.get_async(
                with_auth + "/redirect/3?token=Q-SECRET", follow_redirects=True
            )
            refused = client.get_async(
                server.url + "/redirect-to?url=http://a@b@c/%3Ftoken%3DL-SECRET",
                follow_redirects=True,
            )
            results = client.wait_many([too_many, refused], 10)
        with Client(policy=allow_self) as client:
            blocked = client.get_async(
                server.url + "/redirect-to?url=http://127.0.0.2:9/x%3Ftoken%3DB-SECRET",
                follow_redirects=True,
            )
            results.append(client.wait(blocked, 10))
    assert [r.error_kind for r in results] == ["too_many_redirects", "protocol", "blocked"]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("postkey")]
    leaked = [line for line in lines if "SECRET" in line]
    assert leaked == []


# -- 7. AsyncClient: waiting for room on the loop's default executor ---------------------------


def _executor_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size


async def _full_client(url: str, queue_wait_ms: int) -> AsyncClient:
    client = AsyncClient(max_in_flight=1, max_per_host=1, max_queue=1, queue_wait_ms=queue_wait_ms)
    await client.get_async(url + "/delay/5000", timeout_ms=5000)
    await asyncio.sleep(0.05)  # on the wire
    await client.get_async(url + "/delay/5000", timeout_ms=5000)  # queued: the queue is full
    return client


def test_async_submits_waiting_for_room_each_give_up_after_queue_wait_ms(
    server: LocalServer,
) -> None:
    # Each waiting submit holds a thread of the loop's default executor for its whole wait, so
    # past its size submits queue behind each other (the last gives up after several times
    # queue_wait_ms) and unrelated run_in_executor work (loop.getaddrinfo, aclose) starves.
    wait_ms = 500
    count = 4 * _executor_workers()

    async def main() -> tuple[float, float]:
        client = await _full_client(server.url, wait_ms)
        try:
            started = time.monotonic()

            async def one() -> float:
                with pytest.raises(QueueFull):
                    await client.get_async(server.url + "/get", timeout_ms=5000)
                return time.monotonic() - started

            tasks = [asyncio.create_task(one()) for _ in range(count)]
            await asyncio.sleep(0.1)
            probe = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, lambda: None)
            probe_s = time.monotonic() - probe
            slowest = max(await asyncio.gather(*tasks))
            return slowest, probe_s
        finally:
            await client.aclose(drain=False)

    slowest, probe_s = asyncio.run(main())
    assert slowest < wait_ms / 1000 + 0.7, f"a submit waited {slowest:.2f} s for room"
    assert probe_s < 0.3, f"an unrelated executor job waited {probe_s:.2f} s"


def test_aclose_is_not_held_up_by_submits_waiting_for_room(server: LocalServer) -> None:
    count = 2 * _executor_workers()

    async def main() -> tuple[float, list[object]]:
        client = await _full_client(server.url, 3000)
        tasks = [
            asyncio.create_task(client.get_async(server.url + "/get", timeout_ms=5000))
            for _ in range(count)
        ]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await client.aclose(drain=False)
        closing = time.monotonic() - started
        return closing, await asyncio.gather(*tasks, return_exceptions=True)

    closing, outcomes = asyncio.run(main())
    assert closing < 1.0, f"aclose(drain=False) took {closing:.2f} s"
    assert all(isinstance(o, ClientClosed) for o in outcomes), outcomes


# -- 8. LocalServer.stop() --------------------------------------------------------------------


def test_local_server_answers_nothing_after_stop() -> None:
    # stop() closes the listening socket, but the handler thread of a kept-alive connection
    # (libcurl pools them) goes on serving: a "stopped" server still answers 200.
    server = LocalServer().start()
    with Client() as client:
        assert client.wait(client.get_async(server.url + "/get"), 5).status == 200
        server.stop()
        after = client.wait(client.get_async(server.url + "/get", timeout_ms=2000), 5)
    assert after.state == "failed", after.describe()


# -- 9. CLI --------------------------------------------------------------------------------------


def test_cli_request_refuses_a_non_ascii_method_like_the_python_api() -> None:
    # `request` upper-cases before validating: 'po\u017ft' (a long s) upper-cases to 'POST',
    # so the CLI sends a POST for a method the Python API refuses (check_method guards
    # against exactly this).
    canned = CannedServer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        done = _cli("request", "po\u017ft", canned.url + "/", "--allow-private", "--wait")
        assert done.returncode == 2, done.stdout + done.stderr
        assert canned.connections == 0
    finally:
        canned.close()


def test_cli_batch_of_a_file_that_is_not_utf8_exits_2_with_one_line(tmp_path: Path) -> None:
    canned = CannedServer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_bytes(b'{"url": "' + canned.url.encode() + b'/", "body": "caf\xe9"}\n')
        done = _cli("batch", str(jobs), "-o", "-", "--allow-private")
        assert done.returncode == 2, done.stderr[-400:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("postkey: error:"), done.stderr[-400:]
        assert canned.connections == 0
    finally:
        canned.close()


def test_cli_batch_reports_a_repeated_idempotent_line_as_done(
    server: LocalServer, tmp_path: Path
) -> None:
    # The same request under the same key twice is one request (README, Keys). The writer
    # deletes line 1's result once written, so line 2 reads "expired: its result's TTL passed"
    # and the batch exits 1 although every request got its response.
    line = json.dumps({"url": server.url + "/get", "key": "order-42"})
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line + "\n" + line + "\n")
    done = _cli("batch", str(jobs), "-o", "-", "--allow-private")
    rows = [json.loads(row) for row in done.stdout.splitlines() if row.startswith("{")]
    assert [row["state"] for row in rows] == ["done", "done"], rows
    assert done.returncode == 0
