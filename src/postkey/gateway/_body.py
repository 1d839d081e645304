"""Reading a request body under a size cap and a deadline: never more than the cap is read, and a
body that is too large or too slow ends its connection."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from ._errors import ApiError

# Sent with 408 / 413: the rest of the body is never read, so the connection cannot be reused.
_CLOSE = {"Connection": "close"}

#: An ASGI scope extension, ``{"seconds": S}``: the server itself ends a request whose body does
#: not arrive within S seconds of its head (`postkey serve` on uvicorn does; in process and on
#: granian, the app does).
SERVER_BODY_DEADLINE = "postkey.body_deadline"


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, if it is at most ``max_bytes`` and arrives within ``timeout_s`` seconds.

    Raises:
        ApiError: 413 over the cap (announced by Content-Length or counted while reading),
            408 too slow, 400 a bad Content-Length or a client that went away.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        # isascii: str.isdigit() is also true of '²' and other digits int() refuses.
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
            raise ApiError(400, "Content-Length is not a number", headers=_CLOSE)
        if int(declared) > max_bytes:
            raise ApiError(413, _too_large(max_bytes), headers=_CLOSE)
    extensions = request.scope.get("extensions")
    server_bound = extensions.get(SERVER_BODY_DEADLINE) if extensions else None
    try:
        if server_bound is not None and server_bound["seconds"] <= timeout_s:
            return await _read_capped(request, max_bytes)
        async with asyncio.timeout(timeout_s):
            return await _read_capped(request, max_bytes)
    except TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {timeout_s:g} s", headers=_CLOSE
        ) from None
    except ClientDisconnect:
        raise ApiError(400, "the client went away before its body arrived") from None


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    # The ASGI messages themselves, not request.stream(): an async generator per body costs more
    # than the read, and a submit's body is nearly always one message.
    kept: bytes | None = getattr(request, "_body", None)  # read before: Starlette keeps it
    if kept is not None:
        if len(kept) > max_bytes:
            raise ApiError(413, _too_large(max_bytes), headers=_CLOSE)
        return kept
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect  # http.disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, _too_large(max_bytes), headers=_CLOSE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # as request.body() would keep it, for any later reader
    return body


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than the gateway's limit of {max_bytes} bytes"
