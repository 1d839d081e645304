"""``/v1/cache/{key}``: the general MemCache, in the tenant's namespace, with TTL."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .._errors import InvalidKey, InvalidValue, KeyConflict, PostkeyError
from .._result import Result, State
from ..mychat import error_text
from ._body import read_body
from ._errors import ApiError
from ._requests import admitted
from ._submit import key_in, refusal_of

_MISSING = object()

#: Sent with bytes that a caller stored or a target answered: a browser that opens them must
#: neither sniff them into a page (HTML, script) nor run anything in them.
INERT = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def text_of(value: object) -> str:
    """What MyChat's MemCacheGet gives for a cached value: a response's body text (any status),
    ``ERROR: <kind>`` for a failed request, a stored value as text."""
    if isinstance(value, Result):
        return value.text if value.state is State.DONE else error_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def get_value(request: Request) -> Response:
    """``GET /v1/cache/{key}``: the value as stored (bytes: application/octet-stream, text:
    text/plain); a request's key gives MemCacheGet's text. 404 none, 410 expired."""
    tenant, gateway = admitted(request)
    key = request.path_params["key"]
    stored = key_in(tenant, key)
    client = gateway.client(tenant)
    value = await gateway.call(client.cache_get, stored, _MISSING)
    if value is _MISSING:
        state = await gateway.call(client.status, stored)
        if state is State.EXPIRED:
            raise ApiError(410, f"the value under key {key!r} has expired", "expired")
        raise ApiError(404, f"no value under key {key!r}", "unknown_key")
    if isinstance(value, bytes):
        return Response(value, media_type="application/octet-stream", headers=INERT)
    return Response(text_of(value), media_type="text/plain; charset=utf-8", headers=INERT)


def _ttl(request: Request) -> int | None:
    raw = request.query_params.get("ttl_ms")
    if raw is None:
        return None
    # isascii: str.isdigit() is also true of '²' and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or int(raw) < 1:
        raise ApiError(422, "ttl_ms must be a positive integer (milliseconds)", "invalid_ttl")
    return int(raw)


async def put_value(request: Request) -> Response:
    """``PUT /v1/cache/{key}?ttl_ms=N``: store the body's bytes (204). 409 if the key names a
    request, 422 a bad key or TTL."""
    tenant, gateway = admitted(request)
    stored = key_in(tenant, request.path_params["key"])
    ttl = _ttl(request)
    config = gateway.config
    value = await read_body(request, config.max_body_bytes, config.body_timeout_s)
    try:
        await gateway.call(gateway.client(tenant).cache_set, stored, value, ttl)
    except (InvalidKey, InvalidValue) as exc:
        raise ApiError(422, str(exc).replace(tenant.namespace, ""), "invalid") from None
    except KeyConflict as exc:
        raise ApiError(409, str(exc).replace(tenant.namespace, ""), "key_conflict") from None
    except PostkeyError as exc:
        raise refusal_of(exc, tenant.namespace) from None
    return Response(status_code=204)


async def delete_value(request: Request) -> Response:
    """``DELETE /v1/cache/{key}``: 204 if there was a value, else 404."""
    tenant, gateway = admitted(request)
    key = request.path_params["key"]
    stored = key_in(tenant, key)
    if not await gateway.call(gateway.client(tenant).cache_delete, stored):
        raise ApiError(404, f"no value under key {key!r}", "unknown_key")
    return Response(status_code=204)


def cache_routes() -> list[BaseRoute]:
    """The routes under ``/v1/cache``."""
    return [
        Route("/v1/cache/{key}", get_value, methods=["GET"]),
        Route("/v1/cache/{key}", put_value, methods=["PUT"]),
        Route("/v1/cache/{key}", delete_value, methods=["DELETE"]),
    ]
