"""A local echo server for the demo and the tests, in the spirit of httpbin.

Any method on any path answers 200 with JSON describing the request: ``method``, ``url``,
``args``, ``headers``, ``data`` (the body as text), ``json`` (the body parsed, or null),
``origin``. A few paths do more: ``/status/<code>``, ``/redirect/<n>``, ``/gzip``,
``/bytes/<n>``, ``/delay/<ms>``, ``/redirect-to?url=...&status=...``.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "postkey-echo"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo prints its own lines

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self) -> None:
        body = self._body()
        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s]
        head = segments[0] if segments else ""
        arg = segments[1] if len(segments) > 1 else ""
        extra: dict[str, str] = {}
        status = 200
        if head == "status" and arg.isdigit():
            status = int(arg)
        elif head == "redirect" and arg.isdigit():
            hops = int(arg)
            location = f"/redirect/{hops - 1}" if hops > 1 else "/anything"
            self._send(302, b"", "text/plain", {"Location": location})
            return
        elif head == "redirect-to":
            query = parse_qs(parts.query)
            code = int(query.get("status", ["302"])[0])
            self._send(code, b"", "text/plain", {"Location": query.get("url", ["/"])[0]})
            return
        elif head == "bytes" and arg.isdigit():
            self._send(200, b"x" * int(arg), "application/octet-stream", {})
            return
        elif head == "delay" and arg.isdigit():
            time.sleep(int(arg) / 1000.0)
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        echo = {
            "args": {k: v[0] for k, v in parse_qs(parts.query).items()},
            "data": text,
            "headers": dict(self.headers.items()),
            "json": parsed,
            "method": self.command,
            "origin": self.client_address[0],
            "url": f"http://{self.headers.get('Host', '')}{self.path}",
        }
        payload = json.dumps(echo).encode()
        if head == "gzip":
            payload = gzip.compress(payload)
            extra["Content-Encoding"] = "gzip"
        self._send(status, payload, "application/json", extra)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo  # noqa: N815


class _Server(ThreadingHTTPServer):
    # The stdlib default backlog of 5 drops SYNs under a few hundred concurrent connects, which
    # shows up as 1 s / 3 s retransmission stalls on the client.
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a cancelled or timed-out request) is normal here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class EchoServer:
    """The echo server on 127.0.0.1, in a background thread; use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> EchoServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve until interrupted; print the base URL first (``python -m postkey._echo [PORT]``)."""
    server = EchoServer(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(server.url, flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
