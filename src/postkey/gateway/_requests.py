"""``/v1/requests``: submit one or a batch, read or long-poll a result, cancel."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._async_client import AsyncClient
from .._client import _Submit
from .._errors import PostkeyError
from .._result import Result, State
from ._auth import require_tenant
from ._body import read_body
from ._errors import HANDLERS, ApiError
from ._gateway import Gateway, gateway_of
from ._submit import key_in, parse_json, prepare, refusal_of
from ._tenants import Tenant

_JSON = "application/json"
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?|\.[0-9]{1,20}", re.ASCII)


def admitted(request: Request) -> tuple[Tenant, Gateway]:
    """The caller's tenant and the gateway, once the tenant's rate limit let one request in.

    Raises:
        ApiError: 401 without a valid API key, 429 over the tenant's rate limit.
    """
    tenant = require_tenant(request)
    gateway = gateway_of(request)
    gateway.limiter.take(tenant)
    return tenant, gateway


def check_json_type(request: Request) -> None:
    """Refuse a body that is not declared as JSON.

    Raises:
        ApiError: 415.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _JSON and not content_type.endswith("+json"):
        raise ApiError(415, "send the request as Content-Type: application/json")


async def json_body(request: Request, gateway: Gateway) -> Any:
    """The JSON body of ``request``, read under the gateway's limits."""
    check_json_type(request)
    config = gateway.config
    return parse_json(await read_body(request, config.max_body_bytes, config.body_timeout_s))


async def submit(gateway: Gateway, tenant: Tenant, prepared: _Submit) -> str:
    """Submit a validated request; the tenant's form of its key.

    Raises:
        ApiError: 409 a caller key that names another request, 503 a full queue or no store.
    """
    client = gateway.client(tenant)
    namespace = tenant.namespace
    request = prepared.request
    method, url = request.method, request.url
    duplicate = False
    if prepared.key is not None:
        # The same caller key again sends nothing: count it once.
        state = await gateway.call(client.status, namespace + prepared.key)
        duplicate = state is not State.UNKNOWN and state is not State.EXPIRED
    on_done = None if duplicate else gateway.on_done(tenant, method, url)
    # Built field by field: NamedTuple._replace costs ~10x more, on every submit.
    _, caller_key, key_format, ttl_ms, _, delivery, in_ns = prepared
    with_callback = _Submit(request, caller_key, key_format, ttl_ms, on_done, delivery, in_ns)
    try:
        key = await client._submit_soon(with_callback)
    except PostkeyError as exc:
        raise refusal_of(exc, namespace) from None
    mine = key[len(namespace) :]
    if not duplicate:
        gateway.activity.submitted(tenant.name, mine, method, url)
        gateway.metrics.on_submit(method)
    return mine


async def create(request: Request) -> Response:
    """``POST /v1/requests``: 202 ``{"key": ...}``."""
    tenant, gateway = admitted(request)
    item = await json_body(request, gateway)
    prepared = prepare(gateway.client(tenant), tenant, item)
    key = await submit(gateway, tenant, prepared)
    return Accepted(key)


class Accepted(Response):
    """``202 {"key": ...}`` with the key's ``Location``, written directly: a key is ASCII
    letters, digits and ``_ - . : ~ { }`` only (`check_key`), so it needs no JSON encoder, and a
    submit's answer is made thousands of times a second."""

    def __init__(self, key: str) -> None:  # not Response.__init__: it would encode again
        raw = key.encode("ascii")
        self.body = b'{"key":"' + raw + b'"}'
        self.status_code = 202
        self.background = None
        self.raw_headers = [
            (b"content-length", b"%d" % len(self.body)),
            (b"content-type", b"application/json"),
            (b"location", b"/v1/requests/" + raw),
        ]


class SubmitShortcut:
    """ASGI middleware: ``POST /v1/requests``, the call every submit makes, goes straight to
    `create`, past Starlette's router and exception layers (a fifth of a submit's time in the
    gateway). The same handler and the same error handlers answer, so the answer is the same as
    through the router; every other request goes on through the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/requests" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await create(request)
        except Exception as exc:
            handler = next((HANDLERS[c] for c in type(exc).__mro__ if c in HANDLERS), None)
            if handler is None:
                raise  # a bug: ContainBugs, outside, answers 500
            response = await handler(request, exc)
        await response(scope, receive, send)


async def create_batch(request: Request) -> Response:
    """``POST /v1/requests/batch`` with ``{"requests": [...]}``: every request is validated
    first (one bad request: 422 naming its index, nothing sent), then all are submitted;
    202 ``{"keys": [...]}`` in order."""
    tenant = require_tenant(request)
    gateway = gateway_of(request)
    document = await json_body(request, gateway)
    if not isinstance(document, dict) or set(document) != {"requests"}:
        raise ApiError(422, 'send {"requests": [...]}', "invalid_type")
    items = document["requests"]
    if not isinstance(items, list) or not items:
        raise ApiError(422, "requests must be a non-empty array", "invalid_type")
    most = gateway.config.max_batch
    if len(items) > most:
        raise ApiError(422, f"a batch holds at most {most} requests, not {len(items)}", "too_many")
    gateway.limiter.take(tenant, len(items))
    client = gateway.client(tenant)
    prepared = [prepare(client, tenant, item, f"requests[{i}]: ") for i, item in enumerate(items)]
    _check_batch_keys(prepared)
    keys: list[str] = []
    for one in prepared:
        try:
            keys.append(await submit(gateway, tenant, one))
        except ApiError as exc:
            exc.extra = {"keys": keys}  # what was submitted before the refusal
            raise
    return JSONResponse({"keys": keys}, 202)


def _check_batch_keys(prepared: list[_Submit]) -> None:
    # One caller key for two different requests in the same batch: refused before anything is
    # sent (the same request twice is one idempotent submit, answered with its key twice).
    seen: dict[str, tuple[int, str]] = {}
    for i, one in enumerate(prepared):
        if one.key is None:
            continue
        fingerprint = one.request.fingerprint()
        first = seen.setdefault(one.key, (i, fingerprint))
        if first[1] != fingerprint:
            raise ApiError(
                422,
                f"requests[{i}]: key {one.key!r} names a different request in requests[{first[0]}]",
                "key_conflict",
            )


def result_json(result: Result, key: str) -> dict[str, Any]:
    """`Result.to_dict` with the tenant's form of the key (docs/GATEWAY.md lists the fields)."""
    out = result.to_dict()
    out["key"] = key
    return out


def _wait_seconds(request: Request, gateway: Gateway) -> float | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    most = gateway.config.max_wait_s
    # Plain ASCII decimals only: float() also takes '1_0', ' 1 ', '1e1', 'inf' and non-ASCII
    # digits (Arabic-Indic, fullwidth).
    seconds = float(raw) if _DECIMAL.fullmatch(raw) else math.nan
    if not 0 <= seconds <= most:  # NaN too
        raise ApiError(422, f"wait must be a number of seconds from 0 to {most:g}", "invalid_wait")
    return seconds


async def read(request: Request) -> Response:
    """``GET /v1/requests/{key}``: 200 result, 202 pending / running, 404 unknown, 410 expired;
    ``?wait=SECONDS`` waits (push-based) for the result first."""
    tenant, gateway = admitted(request)
    key = request.path_params["key"]
    stored = key_in(tenant, key)
    seconds = _wait_seconds(request, gateway)
    client = gateway.client(tenant)
    if seconds:
        if not gateway.take_waiter_place(tenant):
            raise ApiError(503, "too many long-polls waiting", headers={"Retry-After": "1"})
        try:
            result = await _long_poll(request, gateway, client, stored, seconds)
        finally:
            gateway.give_waiter_place(tenant)
    else:
        result = await gateway.call(client.get, stored)
    return _result_response(result, key)


async def _long_poll(
    request: Request, gateway: Gateway, client: AsyncClient, stored: str, seconds: float
) -> Result:
    # The wait ends with the result, at its timeout, when the caller hangs up (its waiter must
    # not stay registered until the timeout) or when the server begins to stop (a long-poll
    # must not hold the shutdown for up to max_wait_s); in the last two cases with what is
    # known now.
    waiting = asyncio.ensure_future(client.wait(stored, seconds))
    gone = asyncio.ensure_future(_disconnected(request))
    stopping = asyncio.ensure_future(gateway.stopping.wait())
    try:
        await asyncio.wait({waiting, gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, gone, stopping):
            task.cancel()
        await asyncio.gather(waiting, gone, stopping, return_exceptions=True)
    if not waiting.cancelled():
        return waiting.result()  # its result, or the exception it raised
    return await gateway.call(client.get, stored)


async def _disconnected(request: Request) -> None:
    # Once the request's body has been read, the server's next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _result_response(result: Result, key: str) -> Response:
    state = result.state
    if state is State.UNKNOWN:
        raise ApiError(404, f"no request or result under key {key!r}", "unknown_key")
    if state is State.EXPIRED:
        raise ApiError(410, f"the result under key {key!r} has expired", "expired")
    if state in (State.PENDING, State.RUNNING):
        return JSONResponse({"key": key, "state": state.value}, 202, headers={"Retry-After": "1"})
    return JSONResponse(result_json(result, key))


async def cancel(request: Request) -> Response:
    """``DELETE /v1/requests/{key}``: ends a pending or running request as failed /
    cancelled (200 with the result); 409 if it had already ended, 404 / 410 as for reads."""
    tenant, gateway = admitted(request)
    key = request.path_params["key"]
    stored = key_in(tenant, key)
    client = gateway.client(tenant)
    before = await gateway.call(client.get, stored)
    if before.state in (State.PENDING, State.RUNNING):
        await _in_thread(client.cancel, stored)
        after = await client.wait(stored, 5.0)
        return _result_response(after, key)
    if before.state in (State.DONE, State.FAILED):
        raise ApiError(409, f"the request under key {key!r} has already ended", "already_ended")
    return _result_response(before, key)


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def request_routes() -> list[BaseRoute]:
    """The routes under ``/v1/requests``."""
    return [
        Route("/v1/requests", create, methods=["POST"]),
        Route("/v1/requests/batch", create_batch, methods=["POST"]),
        Route("/v1/requests/{key}", read, methods=["GET"]),
        Route("/v1/requests/{key}", cancel, methods=["DELETE"]),
    ]
