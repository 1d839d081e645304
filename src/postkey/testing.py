"""A local httpbin-like HTTP server for tests, demos and examples; not for production.

``with LocalServer() as server:`` serves on 127.0.0.1 (only) at ``server.url`` from a background
thread, and ``python -m postkey.testing [PORT]`` serves in the foreground and prints its URL.
Every route accepts every method (so a redirect that turns a POST into a GET still lands):

- ``/post``, ``/get``, ``/anything`` and any path not below: 200 with JSON describing the
  request: ``method``, ``url``, ``args`` (the query; a repeated field is a list), ``headers``
  (as received), ``data`` (the body as text), ``json`` (the body parsed, or null), ``origin``.
- ``/headers``: ``{"headers": {...}}``.
- ``/status/<code>``: the echo with that status (200 to 599; no body for 204 and 304).
- ``/delay/<ms>``: the echo after ``ms`` milliseconds (at most 600,000).
- ``/redirect/<n>``: a 302 chain of ``n`` hops ending at ``/anything``.
- ``/redirect-to?url=<url>&status=<3xx>``: one redirect to ``url`` (302 unless told).
- ``/bytes/<n>``: ``n`` bytes of ``x`` (at most 100 MiB), ``application/octet-stream``.
- ``/gzip``: the echo, gzip-compressed, with ``Content-Encoding: gzip``.

A malformed route argument (``/status/abc``) answers 400 with ``{"error": "..."}``. Each response
goes out in one write on a socket with ``TCP_NODELAY``, so keep-alive requests are not held up by
Nagle's algorithm meeting the client's delayed ACK (~40 ms a request).

``with LocalRedis() as redis_url:`` runs a ``redis-server`` of its own on a free loopback port
(without persistence, in a temporary directory) for trying or testing the shared store;
``with LocalRedisCluster() as url:`` a Redis Cluster of three of them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["LocalRedis", "LocalRedisCluster", "LocalServer"]

HOST = "127.0.0.1"
MAX_DELAY_MS = 600_000
MAX_BYTES = 100 * 1024 * 1024
MAX_REQUEST_BYTES = 64 * 1024 * 1024
_NO_BODY_STATUSES = (204, 304)


class _BadRoute(Exception):
    """A route argument out of range: answered 400 with the message."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "postkey-testing"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and demos print their own lines

    def __getattr__(self, name: str) -> Any:
        # http.server dispatches on do_<METHOD>: answer every method, standard or not.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def _read_body(self) -> bytes:
        """The request body, at most MAX_REQUEST_BYTES.

        Raises:
            ValueError: malformed framing, or a body over the limit.
        """
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while size := int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16):
                total += size
                if size < 0 or total > MAX_REQUEST_BYTES:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(64)
            while self.rfile.readline(8192).strip():  # trailers, up to the empty line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        """Send the status line, headers and body in ONE write (see the module docstring)."""
        reason = self.responses.get(status, ("",))[0]
        lines = [
            f"HTTP/1.1 {status} {reason}".rstrip(),
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
        ]
        if status in _NO_BODY_STATUSES:
            body = b""
        else:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD":
            self.wfile.write(head)
        elif len(body) > 65536:  # no copy of a large body; TCP_NODELAY sends both at once
            self.wfile.write(head)
            self.wfile.write(body)
        else:
            self.wfile.write(head + body)

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OverflowError) as exc:
            self.close_connection = True
            self._respond(400, json.dumps({"error": f"unreadable request body: {exc}"}).encode())
            return
        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s]
        route = segments[0] if segments else ""
        arg = segments[1] if len(segments) > 1 else None
        try:
            self._route(route, arg, parts.query, body)
        except _BadRoute as exc:
            self._respond(400, json.dumps({"error": str(exc)}).encode())

    def _route(self, route: str, arg: str | None, query: str, body: bytes) -> None:
        if route == "redirect":
            hops = _number(arg, 1, 100, "/redirect/<n> takes n from 1 to 100")
            location = f"/redirect/{hops - 1}" if hops > 1 else "/anything"
            self._respond(302, b"", "text/plain", {"Location": location})
        elif route == "redirect-to":
            fields = parse_qs(query)
            if "url" not in fields:
                raise _BadRoute("/redirect-to needs ?url=")
            code = _number(fields.get("status", ["302"])[0], 300, 399, "status must be 3xx")
            self._respond(code, b"", "text/plain", {"Location": fields["url"][0]})
        elif route == "bytes":
            size = _number(arg, 0, MAX_BYTES, f"/bytes/<n> takes n from 0 to {MAX_BYTES}")
            self._respond(200, b"x" * size, "application/octet-stream")
        elif route == "headers":
            self._respond(200, json.dumps({"headers": dict(self.headers.items())}).encode())
        elif route == "status":
            status = _number(arg, 200, 599, "/status/<code> takes a code from 200 to 599")
            self._respond(status, self._echo(query, body))
        elif route == "delay":
            delay = _number(arg, 0, MAX_DELAY_MS, f"/delay/<ms> takes 0 to {MAX_DELAY_MS} ms")
            time.sleep(delay / 1000.0)
            self._respond(200, self._echo(query, body))
        elif route == "gzip":
            payload = gzip.compress(self._echo(query, body))
            self._respond(200, payload, extra={"Content-Encoding": "gzip"})
        else:
            self._respond(200, self._echo(query, body))

    def _echo(self, query: str, body: bytes) -> bytes:
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except (ValueError, RecursionError):  # a test may send anything
            parsed = None
        args = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(query).items()}
        echo = {
            "args": args,
            "data": text,
            "headers": dict(self.headers.items()),
            "json": parsed,
            "method": self.command,
            "origin": self.client_address[0],
            "url": f"http://{self.headers.get('Host', '')}{self.path}",
        }
        return json.dumps(echo).encode()


def _number(text: str | None, lowest: int, highest: int, message: str) -> int:
    if text is None or not text.isascii() or not text.isdigit():
        raise _BadRoute(message)
    value = int(text)
    if not lowest <= value <= highest:
        raise _BadRoute(message)
    return value


class _HTTPServer(ThreadingHTTPServer):
    # The stdlib default backlog of 5 drops SYNs under a few hundred concurrent connects, which
    # shows up as 1 s / 3 s retransmission stalls on the client.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        # Open connections, so that stop() can end kept-alive ones too.
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Responses are one write each; without this a keep-alive client still waits for the
        # delayed ACK whenever a write follows an unacknowledged one.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.connections_lock:
            self.connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every open connection (their threads see EOF and finish)."""
        with self.connections_lock:
            open_now = list(self.connections)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a cancelled or timed-out request) is normal here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    """An httpbin-like server on 127.0.0.1 in a background thread, for tests, demos and examples.

    Not for production: it answers anyone who can reach the loopback interface and runs one
    thread per connection. Use as a context manager::

        with LocalServer() as server:
            postkey.post_async(server.url + "/post", json={"a": 1})

    Raises (on construction):
        OSError: the port is taken (port=0, the default, picks a free one).
    """

    def __init__(self, port: int = 0) -> None:
        self._httpd = _HTTPServer((HOST, port), _Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(0.05,),  # poll interval: stop() returns within ~50 ms
            name="postkey-testing-server",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The TCP port served on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> LocalServer:
        """Start serving in the background; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()  # a kept-alive connection must not go on answering

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalServer url={self.url}>"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRedis:
    """A ``redis-server`` process of its own on a free 127.0.0.1 port, for tests and examples.

    No persistence, a temporary working directory, stopped (and the directory removed) on exit;
    never the machine's own Redis. ``kill()`` and ``start()`` again are there for fault tests
    (the same port). Use as a context manager, which gives the URL::

        with LocalRedis() as url:
            client = postkey.Client(store=url)

    Raises (on start):
        FileNotFoundError: no ``redis-server`` on PATH (``apt-get install redis-server``).
        RuntimeError: it did not answer PING within 10 s.
    """

    def __init__(self, *args: str) -> None:
        self._args = args
        self._dir = tempfile.mkdtemp(prefix="postkey-redis-")
        self.port: int = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> LocalRedis:
        """Start the server (again, after `kill`) and wait until it answers; returns self."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        # Persistence off unless the caller's args turn it on (a fault test's appendonly).
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--dir", self._dir]
        argv += ["--save", "", "--appendonly", "no", *self._args]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {HOST}:{self.port} within 10 s")

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (to pin it to a CPU, say), else None."""
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """SIGKILL the server (it can be started again on the same port)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start().url

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalRedis url={self.url}>"


class LocalRedisCluster:
    """A Redis Cluster of ``masters`` ``redis-server`` processes on free 127.0.0.1 ports (no
    replicas; ``args`` go to each), its 16,384 slots spread evenly, for tests and examples. Use as
    a context manager, which gives the store URL (``redis+cluster://`` and the first node)::

        with LocalRedisCluster() as url:
            client = postkey.Client(store=url)

    ``nodes`` are `LocalRedis` servers, so a test can kill and start one again (its cluster
    config file stays in its directory, so it rejoins with its slots).

    Raises (on start):
        FileNotFoundError: no ``redis-server`` or ``redis-cli`` on PATH.
        RuntimeError: the cluster was not formed within 20 s.
    """

    def __init__(self, *args: str, masters: int = 3) -> None:
        # The bus port is given: by default Redis takes the port + 10,000, which a free port
        # above 55,535 cannot have.
        self.nodes = [
            LocalRedis(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(_free_port()),
                *args,
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<first node's port>``."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def start(self) -> LocalRedisCluster:
        """Start the nodes, join them, give out the slots and wait for ``cluster_state:ok``."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (apt-get install redis-tools)")
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
            subprocess.run(
                [cli, *create],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=20,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, seconds: float = 20.0) -> None:
        """Wait until every node says ``cluster_state:ok`` (after a start or a node's restart).

        Raises:
            RuntimeError: not within ``seconds``.
        """
        cli = shutil.which("redis-cli") or "redis-cli"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                try:
                    info = subprocess.run(
                        [cli, "-h", HOST, "-p", str(node.port), "cluster", "info"],
                        check=False,
                        capture_output=True,
                        text=True,
                        timeout=5,
                    ).stdout
                except subprocess.TimeoutExpired:
                    info = ""
                states.append("cluster_state:ok" in info)
            if all(states):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster on {self.url} was not ok within {seconds:.0f} s")

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> str:
        return self.start().url

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalRedisCluster url={self.url} masters={len(self.nodes)}>"


def main(argv: list[str] | None = None) -> None:
    """``python -m postkey.testing [PORT]``: print the base URL, then serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m postkey.testing",
        description="An httpbin-like server on 127.0.0.1, for tests, demos and examples.",
    )
    parser.add_argument("port", nargs="?", type=int, default=0, help="default: a free port")
    port = parser.parse_args(argv).port
    try:
        server = LocalServer(port)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        parser.exit(1, f"postkey.testing: cannot listen on {HOST}:{port}: {reason}\n")
    print(server.url, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
