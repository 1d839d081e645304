"""`create_app`: the gateway's Starlette application, its routes and its lifespan."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from ._auth import auth_routes
from ._cache import cache_routes
from ._config import GatewayConfig
from ._errors import HANDLERS, ContainBugs
from ._gateway import Gateway
from ._mychat import mychat_routes
from ._openapi import openapi_document
from ._ops import ops_routes
from ._requests import SubmitShortcut, request_routes


def _dashboard() -> list[BaseRoute]:
    # The dashboard (``/`` and ``/static/...``) lives in its own module, built separately; the
    # API works without it.
    try:
        module = importlib.import_module(f"{__package__}._dashboard")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}._dashboard":
            raise
        return []
    routes: list[BaseRoute] = module.dashboard_routes()
    return routes


class _Gateway(Starlette):
    """Starlette without its outermost ServerErrorMiddleware: ContainBugs, just inside it,
    already answers every exception the handlers do not take (without a traceback in the log),
    so that layer only cost every call a wrapper around each message sent."""

    gateway: Gateway

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if isinstance(stack, ServerErrorMiddleware) and isinstance(stack.app, ContainBugs):
            return stack.app
        return stack


def create_app(config: GatewayConfig) -> Starlette:
    """The gateway as an ASGI application. Its clients start with the app's lifespan and close
    (requests in flight get a few seconds) when it ends.

    Raises:
        InvalidValue: a bad setting in ``config``.
    """
    gateway = Gateway(config)
    document = openapi_document(config.max_wait_s, config.max_batch, config.settings.max_timeout_ms)

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        gateway.start()
        try:
            yield {}
        finally:
            await gateway.aclose()

    routes: list[BaseRoute] = [
        *request_routes(),
        *cache_routes(),
        *mychat_routes(),
        *ops_routes(),
        *auth_routes(),
        Route("/openapi.json", openapi, methods=["GET"]),
        # ---- the dashboard's routes (gateway/_dashboard.py): "/" and "/static/..." ----
        *_dashboard(),
    ]
    app = _Gateway(
        routes=routes,
        exception_handlers=HANDLERS,
        middleware=[Middleware(ContainBugs), Middleware(SubmitShortcut)],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.gateway = gateway  # what gateway_of reads
    return app
