"""A minimal ASGI app for the HTTP/2 test, served by hypercorn over TLS (h2 by ALPN)."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = f"http/{scope['http_version']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"h2")]})
    await send({"type": "http.response.body", "body": body})
