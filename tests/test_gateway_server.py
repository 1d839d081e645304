"""The real ``postkey serve`` process over real sockets, on uvicorn and on granian: slow and
oversized clients are cut off, keys are generated or read as documented, and --no-auth stays on
loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postkey.gateway._protocol import COALESCE_MAX_BYTES, OneSendPerTurn

from .gateway_process import ServeProcess, keys_file

KEY = "pk_test_server_0123456789"
LIMIT = 1 << 20  # --max-body


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    if request.param == "granian":
        pytest.importorskip("granian")  # in the bench extra, which `make test` installs
    keys = keys_file(tmp_path_factory.mktemp("keys"), acme=KEY)
    server = ServeProcess(
        "--server",
        request.param,
        "--keys",
        str(keys),
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-body",
        str(LIMIT),
    ).wait_ready()
    yield server
    server.stop()


def connect(server: ServeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (the 10 s socket timeout bounds it)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def head_with_key(request_line: str, *headers: str) -> bytes:
    """A raw request head with the tenant's API key: the line, Host, Authorization, headers."""
    lines = [request_line, "Host: x", f"Authorization: Bearer {KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def drip_feed(sock: socket.socket, byte: bytes) -> None:
    """Sends ``byte`` every 50 ms, 100 times (5 s if nobody stops it), until the server hangs up."""
    try:
        for _ in range(100):
            sock.sendall(byte)
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass


def healthy(server: ServeProcess) -> bool:
    with urllib.request.urlopen(server.url + "/healthz", timeout=5) as answer:
        return bool(answer.status == 200)


def test_a_connection_that_sends_nothing_is_closed(served: ServeProcess) -> None:
    started = time.monotonic()
    with connect(served) as sock:
        answer = read_all(sock)
    assert time.monotonic() - started < 9  # closed by the 1 s head deadline, not our 10 s timeout
    if "--server granian" in " ".join(served.args):
        assert answer == b""  # granian hangs up without an answer
    else:
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"request_timeout"' in answer


def test_a_drip_fed_request_head_is_cut_off(served: ServeProcess) -> None:
    started = time.monotonic()
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        drip_feed(sock, b"X")  # a header byte at a time
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    assert time.monotonic() - started < 4.5  # cut off at the 1 s head deadline, not at 5 s


def test_many_slow_clients_at_once_are_cut_off_and_others_are_served(served: ServeProcess) -> None:
    socks = [connect(served) for _ in range(200)]
    for sock in socks:
        sock.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\n")
    assert healthy(served)  # served while 200 slow clients hang on
    answers = [read_all(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers)


def test_pipelined_and_keep_alive_requests_are_served(served: ServeProcess) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        time.sleep(0.3)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200") == 3 and b"408" not in answer


def test_a_slow_body_is_cut_off(served: ServeProcess) -> None:
    started = time.monotonic()
    with connect(served) as sock:
        sock.sendall(head_with_key("PUT /v1/cache/slow HTTP/1.1", "Content-Length: 1000"))
        drip_feed(sock, b"x")  # a body byte at a time
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    assert answer.count(b"HTTP/1.1 ") <= 1
    assert time.monotonic() - started < 4.5  # the 1 s body deadline, not the 5 s drip
    if answer:
        assert b"the request body did not arrive within 1 s" in answer, answer


def test_a_body_that_arrives_in_pieces_within_its_deadline_is_read(served: ServeProcess) -> None:
    with connect(served) as sock:
        for _ in range(2):  # twice on one keep-alive connection: no deadline is left behind
            sock.sendall(head_with_key("PUT /v1/cache/pieces HTTP/1.1", "Content-Length: 10"))
            for piece in (b"01234", b"56789"):
                time.sleep(0.3)
                sock.sendall(piece)
            # Idle past the 1 s body deadline once the body is complete (granian's 1 s
            # header-read timeout also covers an idle keep-alive connection: less there).
            time.sleep(0.5 if "--server granian" in " ".join(served.args) else 1.3)
        sock.sendall(head_with_key("GET /v1/cache/pieces HTTP/1.1", "Connection: close"))
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 2") == 3 and b"408" not in answer, answer
    assert answer.endswith(b"0123456789"), answer


def test_a_slow_body_after_an_early_answer_gets_no_second_answer(served: ServeProcess) -> None:
    # No API key: refused (401) before the body is read; the body then never comes.
    with connect(served) as sock:
        sock.sendall(b"PUT /v1/cache/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        drip_feed(sock, b"x")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer


def test_a_request_head_over_64_kib_is_refused(served: ServeProcess) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            sock.sendall(b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100) for i in range(700)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:100]


def test_a_declared_100_mb_body_is_refused_before_it_is_read(served: ServeProcess) -> None:
    with connect(served) as sock:
        sock.sendall(
            head_with_key(
                "POST /v1/requests HTTP/1.1",
                "Content-Type: application/json",
                "Content-Length: 104857600",
            )
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"connection: close" in answer.lower() and b'"too_large"' in answer


def test_a_streamed_100_mb_body_is_cut_off_at_the_limit(served: ServeProcess) -> None:
    sent = 0
    answer = bytearray()
    sock = connect(served)

    def reader() -> None:
        answer.extend(read_all(sock))

    thread = threading.Thread(target=reader)
    thread.start()
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
    try:
        sock.sendall(head_with_key("PUT /v1/cache/big HTTP/1.1", "Transfer-Encoding: chunked"))
        while sent < 100 << 20:
            sock.sendall(chunk)
            sent += 1 << 16
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    thread.join(15)
    sock.close()
    # The server read about the limit and hung up; what got further sat in socket buffers.
    assert sent < 32 << 20, f"{sent} bytes went in before the server hung up"
    assert not answer or answer.startswith(b"HTTP/1.1 413")
    assert healthy(served)


def test_a_submit_through_the_real_server(served: ServeProcess, echo: str) -> None:
    request = urllib.request.Request(
        served.url + "/v1/requests",
        data=json.dumps({"url": echo + "/get?real=1"}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        key = json.load(answer)["key"]
    read = urllib.request.Request(
        f"{served.url}/v1/requests/{key}?wait=10", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(read, timeout=15) as answer:
        assert json.load(answer)["status"] == 200


def _serve_output(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    return subprocess.run(
        [sys.executable, "-m", "postkey", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def test_no_auth_is_refused_off_loopback() -> None:
    done = _serve_output("--no-auth", "--host", "0.0.0.0", "--port", "1")
    assert done.returncode == 2
    assert "--no-auth serves only on a loopback address" in done.stderr


def test_without_keys_a_key_is_generated_and_printed(echo: str) -> None:
    server = ServeProcess().wait_ready()
    try:
        found = re.search(
            r"API key for tenant 'default' \(this run only\): (pk_\S+)", server.output()
        )
        assert found, server.output()
        request = urllib.request.Request(
            server.url + "/v1/cache/x", headers={"Authorization": f"Bearer {found.group(1)}"}
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 404  # authenticated: the key is simply not there
    finally:
        server.stop()


def test_an_api_key_file_is_written_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    server = ServeProcess("--api-key-file", str(path)).wait_ready()
    server.stop()
    key = path.read_text().strip()
    assert key.startswith("pk_") and key not in server.output()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ServeProcess("--api-key-file", str(path)).wait_ready()
    again.stop()
    assert path.read_text().strip() == key


def test_keys_and_bodies_never_reach_the_log(served: ServeProcess) -> None:
    # Runs after the module's other tests: they sent the key, bodies and queries.
    log = served.output()
    assert KEY not in log and "real=1" not in log and "xxxx" not in log
    assert "Traceback" not in log


#: For what our uvicorn protocol (GuardedHttpTools) does; granian reads heads and bodies itself,
#: and closes a connection half-closed right behind its request unanswered (docs/GATEWAY.md).
ON_UVICORN = pytest.mark.parametrize("served", ["uvicorn"], indirect=True)


def _pending_key(served: ServeProcess, echo: str) -> str:
    request = json.dumps({"url": echo + "/delay/20000"}).encode()
    with connect(served) as sock:
        sock.sendall(
            head_with_key(
                "POST /v1/requests HTTP/1.1",
                "Content-Type: application/json",
                f"Content-Length: {len(request)}",
                "Connection: close",
            )
            + request
        )
        answer = read_all(sock)
    key: str = json.loads(answer.split(b"\r\n\r\n", 1)[1])["key"]
    return key


def test_a_slow_pipelined_request_never_takes_the_place_of_an_earlier_answer(
    served: ServeProcess, echo: str
) -> None:
    # A long-poll, then on the same connection a POST whose body stops short: the long-poll
    # is answered first, and whatever ends the POST (its deadline counts from when it runs)
    # never arrives as the long-poll's answer.
    key = _pending_key(served, echo)
    with connect(served) as sock:
        started = time.monotonic()
        sock.sendall(
            head_with_key(f"GET /v1/requests/{key}?wait=2 HTTP/1.1")
            + head_with_key("POST /v1/requests HTTP/1.1", "Content-Length: 40")
            + b'{"url":'
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 202"), answer  # the long-poll's own answer (pending)
    assert time.monotonic() - started >= 1.9
    assert answer.count(b"HTTP/1.1 ") <= 2, answer


def test_a_slow_pipelined_head_is_refused_after_the_earlier_answer(
    served: ServeProcess, echo: str
) -> None:
    # A long-poll, then on the same connection half of a request head: the long-poll's answer
    # comes first; the head's deadline ends the connection after it (uvicorn: with a 408).
    key = _pending_key(served, echo)
    with connect(served) as sock:
        sock.sendall(head_with_key(f"GET /v1/requests/{key}?wait=2 HTTP/1.1") + b"GET /hea")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 202"), answer  # the long-poll's own answer (pending)
    assert answer.count(b"HTTP/1.1 ") <= 2, answer
    if "--server granian" not in " ".join(served.args):
        assert b"the request head did not arrive within 1 s" in answer, answer


@ON_UVICORN
def test_a_request_followed_at_once_by_a_half_close_is_answered(served: ServeProcess) -> None:
    # As `nc -N`, HTTP/1.0-style clients and scripts do: the request, then shutdown(SHUT_WR)
    # right behind it. The answer must still come (it once was written after the close).
    for _ in range(20):
        with connect(served) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock).startswith(b"HTTP/1.1 200")


@ON_UVICORN
def test_a_malformed_request_pipelined_behind_a_long_poll_gets_400_after_it(
    served: ServeProcess, echo: str
) -> None:
    key = _pending_key(served, echo)
    with connect(served) as sock:
        sock.sendall(
            head_with_key(f"GET /v1/requests/{key}?wait=1.5 HTTP/1.1") + b"NOT HTTP\r\n\r\n"
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 202"), answer  # the long-poll first
    assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 400" in answer, answer


@ON_UVICORN
def test_a_complete_pipelined_request_is_answered_before_a_later_slow_head_is_refused(
    served: ServeProcess, echo: str
) -> None:
    key = _pending_key(served, echo)
    with connect(served) as sock:
        sock.sendall(
            head_with_key(f"GET /v1/requests/{key}?wait=1.5 HTTP/1.1")
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # never finished
        )
        answer = read_all(sock)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answer)
    assert statuses == [b"202", b"200", b"408"], answer


@ON_UVICORN
def test_a_malformed_chunk_in_a_body_is_answered_400_and_the_connection_ends(
    served: ServeProcess,
) -> None:
    started = time.monotonic()
    with connect(served) as sock:
        sock.sendall(
            head_with_key(
                "POST /v1/requests HTTP/1.1",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            )
            + b"zz\r\n{}\r\n0\r\n\r\n"
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert time.monotonic() - started < 4  # not held until a deadline or the shutdown
    assert healthy(served)


def test_blank_lines_after_a_request_do_not_keep_an_idle_connection_open(
    served: ServeProcess,
) -> None:
    started = time.monotonic()
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += sock.recv(65536)
        sock.sendall(b"\r\n")  # ends the idle wait of keep-alive, starts no request
        read_all(sock)
    assert time.monotonic() - started < 8  # the 10 s socket timeout would mean never


def test_a_second_head_over_64_kib_on_a_kept_alive_connection_is_refused(
    served: ServeProcess,
) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += sock.recv(65536)
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100) for i in range(700))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + filler[:60_000])
            time.sleep(0.2)
            sock.sendall(filler[60_000:])
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:100]


@ON_UVICORN
def test_an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not(
    served: ServeProcess,
) -> None:
    # uvicorn's keep-alive timeout (5 s) from the last answer: the idle connection goes, the
    # one that asks every second stays however long it lasts.
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def answer(sock: socket.socket) -> bytes:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    with connect(served) as idle, connect(served) as busy:
        assert answer(idle).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for _ in range(8):
            assert answer(busy).startswith(b"HTTP/1.1 200")
            time.sleep(1)
        idle.settimeout(0.5)
        assert idle.recv(1) == b"", "the idle connection is still open"
        assert time.monotonic() - started > 5


# -- OneSendPerTurn: how the uvicorn protocol's writes reach the socket ---------------------------


class _Recorder(asyncio.Transport):
    """The socket end of OneSendPerTurn: what it was asked to send, call by call."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def _one_send(script: Callable[[OneSendPerTurn], None]) -> _Recorder:
    async def run() -> _Recorder:
        recorder = _Recorder()
        script(OneSendPerTurn(recorder, asyncio.get_running_loop()))
        await asyncio.sleep(0)  # the end of the turn the writes were made in
        await asyncio.sleep(0)
        return recorder

    return asyncio.run(run())


def test_a_head_and_a_small_body_written_in_one_turn_go_out_in_one_send() -> None:
    recorder = _one_send(lambda t: (t.write(b"HTTP/1.1 202 Accepted\r\n\r\n"), t.write(b"{}")))
    assert recorder.sent == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]


def test_a_large_body_is_not_held_and_order_is_kept() -> None:
    big = b"x" * COALESCE_MAX_BYTES
    recorder = _one_send(lambda t: (t.write(b"head"), t.write(big), t.write(b"tail")))
    assert recorder.sent == [b"head", big, b"tail"]


def test_what_is_held_is_sent_before_a_close_and_dropped_after_a_loss() -> None:
    recorder = _one_send(lambda t: (t.write(b"answer"), t.close()))
    assert recorder.sent == [b"answer"]
    assert recorder.closed

    def lost(t: OneSendPerTurn) -> None:
        t.write(b"answer")
        t._transport.close()  # the peer went away before the turn ended

    assert _one_send(lost).sent == []
