"""Serving the gateway: on uvicorn (the default) with the guarded protocol of `_protocol` (a client
that sends its request line and headers too slowly, slowloris, or too many header bytes, is cut
off); or on granian, whose own header-read timeout and buffer cap do that."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from .._gc import tune_for_serving
from ._app import create_app
from ._config import GatewayConfig
from ._gateway import Gateway
from ._protocol import HEADER_TIMEOUT_S, MAX_HEADER_BYTES, guarded_protocol

#: Names the file that hands the config to granian's worker process (not POSTKEY_: every
#: postkey command refuses POSTKEY_ variables that name no setting).
CONFIG_FILE_ENV = "PK_GATEWAY_CONFIG_FILE"

#: At shutdown, how long requests being served may take to finish (a client that reads its
#: answer too slowly, say) before they are cancelled; bodies and long-polls end sooner.
SHUTDOWN_GRACE_S = 10
#: On granian, seconds from SIGTERM until its worker is killed (long-polls included).
GRANIAN_KILL_S = 20


@dataclass(frozen=True)
class ServeOptions:
    """Where the gateway listens and how it bounds request heads: the same on either server."""

    host: str = "127.0.0.1"
    port: int = 8080
    header_timeout_s: float = HEADER_TIMEOUT_S
    max_header_bytes: int = MAX_HEADER_BYTES
    log_level: str = "info"


def serve(config: GatewayConfig, options: ServeOptions, *, access_log: bool = False) -> None:
    """Run the gateway on uvicorn until SIGINT / SIGTERM. Access logs are off by default (their
    lines would carry keys); request bodies and API keys are never logged."""
    app = create_app(config)
    tune_for_serving()
    server = _Server(
        uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            http=guarded_protocol(
                options.header_timeout_s, options.max_header_bytes, config.body_timeout_s
            ),
            lifespan="on",
            ws="none",
            timeout_keep_alive=5,
            log_level=options.log_level,
            access_log=access_log,
            server_header=False,
            # Nothing here reads the client's address, so X-Forwarded-For is not taken from
            # anyone (uvicorn's default trusts it from 127.0.0.1); a middleware layer less too.
            proxy_headers=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
    )
    server.gateway = app.state.gateway
    server.run()


class _Server(uvicorn.Server):
    """uvicorn's server, which tells the gateway when it begins to shut down: long-polls then
    answer at once instead of holding the shutdown for up to ``max_wait_s``."""

    gateway: Gateway | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.gateway is not None:
            self.gateway.begin_shutdown()
        await super().shutdown(sockets)


def app_from_config_file() -> Starlette:
    """The app for granian's worker process, from the config `serve_on_granian` wrote."""
    with open(os.environ[CONFIG_FILE_ENV], "rb") as f:
        config = pickle.load(f)  # our own file, written by our parent, mode 0600
    app = create_app(config)
    tune_for_serving()
    return app


def serve_on_granian(config: GatewayConfig, options: ServeOptions) -> None:
    """Run the gateway on granian (one worker process) until SIGINT / SIGTERM. Its header-read
    timeout closes slow connections without an answer; a head over its buffer is refused."""
    from granian.constants import HTTPModes, Interfaces  # noqa: PLC0415  # only when chosen
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415
    from granian.server import Server  # noqa: PLC0415

    fd, path = tempfile.mkstemp(prefix="postkey-gateway-", suffix=".config")  # mode 0600
    with os.fdopen(fd, "wb") as f:
        pickle.dump(config, f)
    os.environ[CONFIG_FILE_ENV] = path
    try:
        Server(
            f"{__name__}:app_from_config_file",
            address=options.host,
            port=options.port,
            interface=Interfaces.ASGI,
            workers=1,
            http=HTTPModes.http1,
            websockets=False,
            http1_settings=HTTP1Settings(
                header_read_timeout=max(1, int(options.header_timeout_s * 1000)),
                max_buffer_size=options.max_header_bytes,
            ),
            log_level=LogLevels(options.log_level),
            log_access=False,
            factory=True,
            # granian waits for open requests (long-polls: up to max_wait_s) before the app
            # hears of the shutdown; past this, its worker is killed.
            workers_kill_timeout=GRANIAN_KILL_S,
        ).serve()
    finally:
        os.unlink(path)
