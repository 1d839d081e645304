"""schemathesis against the served OpenAPI document: generated requests (valid and not) to every
operation of a real uvicorn server answer as documented, and never with a server error. The
gateway under test can reach nothing: every address is denied and names resolve to loopback, so
generated URLs send no packet anywhere."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from postkey import DestinationPolicy, Settings
from postkey.gateway import GatewayConfig, KeyRing, Tenant, create_app, hash_key

from .gateway_process import free_port

KEY = "pk_test_schema_0123456789"
NOWHERE = DestinationPolicy("allow_all", deny=("0.0.0.0/0", "::/0"))


def _loopback(_name: str) -> list[str]:
    return ["127.0.0.1"]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    config = GatewayConfig(
        Settings(policy=NOWHERE, resolver=_loopback, default_timeout_ms=2000),
        KeyRing({hash_key(KEY): Tenant("fuzz", admin=True)}),
        max_body_bytes=1 << 20,
        max_wait_s=60,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(20)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_every_operation_answers_as_documented(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        def run(case: schemathesis.Case) -> None:
            if case.query and "wait" in case.query:
                case.query["wait"] = "0.01"  # long-polls are tested elsewhere; keep this run short
            case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS)

        run()
