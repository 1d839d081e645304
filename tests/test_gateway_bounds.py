"""The gateway at its bounds: a full queue (503 with the keys already submitted), the long-poll
cap, a store that stops answering (readyz 503), cookies marked Secure when asked, and a bug
answered 500 without details."""

from __future__ import annotations

import logging

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from postkey import DestinationPolicy, Settings
from postkey.gateway import GatewayConfig, KeyRing, Tenant, create_app, hash_key
from postkey.testing import LocalRedis

from .gateway_fixtures import TestClient, gateway_client

KEY = "pk_test_bounds_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
RING = KeyRing({hash_key(KEY): Tenant("bounded", allow=("127.0.0.1",))})


def test_a_full_queue_is_503_and_a_batch_says_what_went_in(echo: str) -> None:
    settings = Settings(
        policy=DestinationPolicy.public_only(), max_in_flight=1, max_per_host=1, max_queue=1
    )
    with gateway_client(GatewayConfig(settings, RING)) as gw:
        slow = {"url": echo + "/delay/3000", "timeout_ms": 10_000}
        response = gw.post("/v1/requests/batch", json={"requests": [slow] * 5}, headers=AUTH)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "queue_full"
        assert response.headers["retry-after"] == "1"
        went_in = response.json()["keys"]
        assert 1 <= len(went_in) < 5
        for key in went_in:
            gw.delete(f"/v1/requests/{key}", headers=AUTH)


@pytest.mark.parametrize(("reserve", "pool"), [(0, 1), (1, 0), (2, 3)])
def test_long_polls_past_the_cap_are_503(echo: str, reserve: int, pool: int) -> None:
    # A tenant's places: its reserve, then the shared pool; past both, 503.
    settings = Settings(policy=DestinationPolicy.public_only())
    config = GatewayConfig(settings, RING, max_waiters=max(pool, 1), tenant_waiters=reserve)
    with gateway_client(config) as gw:
        key = gw.post("/v1/requests", json={"url": echo + "/delay/100"}, headers=AUTH).json()["key"]
        gateway = gw.app.state.gateway
        tenant = RING.tenants[0]
        if pool == 0:  # the pool is not empty by config: another tenant holds its one place
            assert gateway.take_waiter_place(Tenant("other"))
            assert gateway.take_waiter_place(Tenant("other"))
        held = [gateway.take_waiter_place(tenant) for _ in range(reserve + pool)]
        assert all(held) and gateway.waiters == reserve + pool + (2 if pool == 0 else 0)
        refused = gw.get(f"/v1/requests/{key}?wait=5", headers=AUTH)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        gateway.give_waiter_place(tenant)
        assert gw.get(f"/v1/requests/{key}?wait=5", headers=AUTH).status_code == 200


def test_readyz_says_503_when_redis_stops_answering(echo: str) -> None:
    redis = LocalRedis().start()
    settings = Settings(policy=DestinationPolicy.public_only(), store=redis.url)
    try:
        with gateway_client(GatewayConfig(settings, RING)) as gw:
            assert gw.get("/readyz").json() == {"status": "ready", "store": "redis"}
            key = gw.post("/v1/requests", json={"url": echo + "/get"}, headers=AUTH).json()["key"]
            assert gw.get(f"/v1/requests/{key}?wait=10", headers=AUTH).json()["status"] == 200
            redis.stop()
            answer = gw.get("/readyz")
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "not_ready"
            # Every route that needs the store says 503, never 500.
            for method, path in [
                ("GET", f"/v1/requests/{key}"),
                ("GET", f"/v1/requests/{key}?wait=1"),
                ("DELETE", f"/v1/requests/{key}"),
                ("GET", "/v1/cache/k"),
                ("PUT", "/v1/cache/k"),
                ("DELETE", "/v1/cache/k"),
                ("GET", "/v1/mychat/get/k"),
                ("GET", "/v1/mychat/exists/k"),
                ("POST", "/v1/requests"),
            ]:
                body = {"url": echo + "/get", "key": "while-down"} if method == "POST" else None
                down = gw.request(method, path, headers=AUTH, json=body)
                assert down.status_code in (202, 503), (method, path, down.text)
                assert str(redis.port) not in down.text  # the store's URL is never shown
                if down.status_code == 503:
                    assert down.json()["error"]["code"] == "unavailable"
    finally:
        redis.stop()


def test_cookies_are_secure_when_asked() -> None:
    config = GatewayConfig(Settings(), RING, secure_cookies=True)
    with gateway_client(config) as gw:
        form = {"content-type": "application/x-www-form-urlencoded"}
        response = gw.post(
            "/login", content=f"api_key={KEY}".encode(), headers=form, follow_redirects=False
        )
        assert "Secure" in response.headers["set-cookie"]


def test_a_bug_is_a_500_without_details_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(_request: Request) -> Response:
        raise RuntimeError("secret-body-text")

    app = create_app(GatewayConfig(Settings(), RING))
    app.router.routes.append(Route("/boom", boom))
    with caplog.at_level(logging.DEBUG), TestClient(app) as gw:
        response = gw.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "secret-body-text" not in caplog.text and "Traceback" not in caplog.text
    assert "unexpected RuntimeError on GET /boom" in caplog.text
