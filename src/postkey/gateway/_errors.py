"""The gateway's one error format, ``{"error": {"code": ..., "message": ...}}``, and the handlers
that give every refusal (ours, Starlette's, an unexpected exception) that shape."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ClientClosed, PostkeyError, QueueFull, StoreUnavailable

log = logging.getLogger("postkey.gateway")

# The short code of each HTTP status the gateway answers with, when the raiser gives none.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    410: "expired",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """A refusal: an HTTP status, a short machine-readable code and a message for people."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The JSON response of a refusal, in the gateway's one error format."""
    error: dict[str, Any] = {"code": code or _CODES.get(status, "error"), "message": message}
    return JSONResponse({"error": error, **(extra or {})}, status, headers=headers)


def _count(request: Request, status: int) -> None:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is not None:
        gateway.metrics.rejected.labels(str(status)).inc()


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    _count(request, exc.status)
    return error_response(exc.status, exc.message, exc.code, exc.headers, exc.extra)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    _count(request, exc.status_code)
    message = {404: "no such route", 405: "method not allowed on this route"}.get(
        exc.status_code, str(exc.detail)
    )
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


#: Said instead of a StoreUnavailable's own message, which names the store's URL (and so
#: possibly its password).
STORE_DOWN = "the store did not answer, or refused the write (full, read-only); try again shortly"


async def _postkey_error(request: Request, exc: Exception) -> Response:
    # An error from the client outside a route's own handling: the store went away, the client
    # closed at shutdown, a queue filled. Input errors are caught (422) where they are raised.
    assert isinstance(exc, PostkeyError)
    retry = {"Retry-After": "1"}
    if isinstance(exc, StoreUnavailable):
        status, code, message = 503, "unavailable", STORE_DOWN
    elif isinstance(exc, ClientClosed):
        status, code, message = 503, "unavailable", "the gateway is shutting down"
    elif isinstance(exc, QueueFull):
        status, code, message = 503, "queue_full", str(exc)
    else:
        status, code, message, retry = 422, "invalid", str(exc), {}
    _count(request, status)
    return error_response(status, message, code, retry)


HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    PostkeyError: _postkey_error,
}

_INTERNAL = (
    b'{"error":{"code":"internal","message":"internal error"}}',
    [(b"content-type", b"application/json"), (b"connection", b"close")],
)


class ContainBugs:
    """ASGI middleware: an exception no handler took (a bug) is answered ``500 internal``
    without details and logged as its type and route only, never re-raised, so that no
    traceback (whose message could quote a request) reaches the server's log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error("unexpected %s on %s %s", type(exc).__name__, scope["method"], scope["path"])
            if not started:
                body, headers = _INTERNAL
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
