"""What operators and the dashboard read: ``/healthz``, ``/readyz``, ``/metrics`` and
``/v1/dashboard/stats``."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._errors import PostkeyError
from ._auth import require_tenant
from ._errors import ApiError
from ._gateway import gateway_of
from ._metrics import CONTENT_TYPE

READY_TIMEOUT_S = 2.0
_PROBE_KEY = "postkey-gateway-readyz"


async def healthz(_request: Request) -> Response:
    """``GET /healthz``: 200 while the process serves (no auth)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when every client's store answers (a Redis round trip), else 503
    (no auth: for load balancers)."""
    gateway = gateway_of(request)
    try:
        for client in gateway.clients:
            await asyncio.wait_for(gateway.call(client.cache_exists, _PROBE_KEY), READY_TIMEOUT_S)
            if client.closed:
                raise ApiError(503, "the gateway's client is closed", "not_ready")
    except (PostkeyError, TimeoutError, OSError):
        raise ApiError(503, "the store does not answer", "not_ready") from None
    return JSONResponse({"status": "ready", "store": gateway.config.settings.store.split(":")[0]})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text; every tenant's figures, so admin keys only."""
    tenant = require_tenant(request)
    if not tenant.admin:
        raise ApiError(403, "metrics are for API keys with admin = true", "forbidden")
    return Response(gateway_of(request).metrics.render(), media_type=CONTENT_TYPE)


async def dashboard_stats(request: Request) -> Response:
    """``GET /v1/dashboard/stats``: the tenant's activity (see docs/GATEWAY.md for the shape)."""
    tenant = require_tenant(request)
    snapshot = gateway_of(request).activity.snapshot(tenant.name)
    return JSONResponse(snapshot, headers={"Cache-Control": "no-store"})


def ops_routes() -> list[BaseRoute]:
    """Health, readiness, metrics and the dashboard's figures."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/dashboard/stats", dashboard_stats, methods=["GET"]),
    ]
