"""``/v1/mychat``: the gateway in MyChat's shape, for server scripts that use their own HTTP
functions: a submit answers the key as plain text, a read the text MemCacheGet would give."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ._auth import require_tenant
from ._cache import INERT, text_of
from ._gateway import gateway_of
from ._requests import json_body, submit
from ._submit import key_in, prepare

_TEXT = "text/plain; charset=utf-8"


async def send(request: Request) -> Response:
    """``POST /v1/mychat/send``: the JSON of ``POST /v1/requests``; 200 with the key as text, in
    MyChat's form ``http<method>_async{<guid>}<DDMMYYYYHHMMSSmmm>``."""
    tenant = require_tenant(request)
    gateway = gateway_of(request)
    gateway.limiter.take(tenant)
    item = await json_body(request, gateway)
    prepared = prepare(gateway.client(tenant), tenant, item, key_format="mychat")
    return PlainTextResponse(await submit(gateway, tenant, prepared))


async def get(request: Request) -> Response:
    """``GET /v1/mychat/get/{key}``: always 200, the text MemCacheGet gives: the response body
    (whatever its status), ``ERROR: <kind>`` for a failed request, '' while there is nothing."""
    tenant = require_tenant(request)
    gateway = gateway_of(request)
    gateway.limiter.take(tenant)
    stored = key_in(tenant, request.path_params["key"])
    value = await gateway.call(gateway.client(tenant).cache_get, stored)
    return Response("" if value is None else text_of(value), media_type=_TEXT, headers=INERT)


async def exists(request: Request) -> Response:
    """``GET /v1/mychat/exists/{key}``: ``true`` once there is a value or a finished request
    (MemCacheExists), else ``false``."""
    tenant = require_tenant(request)
    gateway = gateway_of(request)
    gateway.limiter.take(tenant)
    stored = key_in(tenant, request.path_params["key"])
    found = await gateway.call(gateway.client(tenant).cache_exists, stored)
    return Response("true" if found else "false", media_type=_TEXT)


def mychat_routes() -> list[BaseRoute]:
    """The routes under ``/v1/mychat``."""
    return [
        Route("/v1/mychat/send", send, methods=["POST"]),
        Route("/v1/mychat/get/{key}", get, methods=["GET"]),
        Route("/v1/mychat/exists/{key}", exists, methods=["GET"]),
    ]
