"""The gateway as an importable ASGI app for servers started by name (granian, uvicorn):
memory store, one tenant whose key is BENCH_KEY, loopback destinations allowed; and a bare
Starlette route for the framework's ceiling."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from postkey import DestinationPolicy, Settings
from postkey.gateway import GatewayConfig, KeyRing, Tenant, create_app

app = create_app(
    GatewayConfig(
        Settings(policy=DestinationPolicy.public_only(allow=("127.0.0.1",))),
        KeyRing.single(os.environ["BENCH_KEY"], Tenant("bench", admin=True)),
    )
)


async def _accept(request: Request) -> Response:
    await request.body()
    return JSONResponse({"key": "0" * 32}, 202)


#: The framework's ceiling on this machine: a Starlette route that reads the body and answers
#: 202 with a key, doing nothing else (no auth, no validation, nothing sent).
hello = Starlette(routes=[Route("/v1/requests", _accept, methods=["POST"])])
