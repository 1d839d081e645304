"""Who may call the gateway: API keys on every route, tenants that cannot see each other's keys,
the browser's session cookie (GET / HEAD only), rate limits, and auth off on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.requests import Request

from postkey import Settings
from postkey.gateway import GatewayConfig, KeyRing, Tenant, authenticate

from .gateway_fixtures import KEY_A, SLOW, A, B, TestClient, gateway_client


@pytest.fixture(scope="module")
def gw() -> Iterator[TestClient]:
    with gateway_client() as client:
        yield client


ROUTES = [
    ("POST", "/v1/requests"),
    ("POST", "/v1/requests/batch"),
    ("GET", "/v1/requests/k"),
    ("DELETE", "/v1/requests/k"),
    ("GET", "/v1/cache/k"),
    ("PUT", "/v1/cache/k"),
    ("DELETE", "/v1/cache/k"),
    ("POST", "/v1/mychat/send"),
    ("GET", "/v1/mychat/get/k"),
    ("GET", "/v1/mychat/exists/k"),
    ("GET", "/v1/dashboard/stats"),
    ("GET", "/metrics"),
]
BAD_AUTH = [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {KEY_A}"},
    {"Authorization": KEY_A},
    {"Authorization": "Bearer " + "x" * 10_000},
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("headers", BAD_AUTH, ids=range(len(BAD_AUTH)))
def test_every_route_needs_an_api_key(
    gw: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = gw.request(method, path, headers=headers, json={"url": "http://127.0.0.1/"})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_health_readiness_and_the_document_are_public(gw: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert gw.get(path).status_code == 200


def test_metrics_are_for_admin_keys(gw: TestClient) -> None:
    assert gw.get("/metrics", headers=A).status_code == 200
    assert gw.get("/metrics", headers=B).json()["error"]["code"] == "forbidden"


def test_tenant_b_sees_none_of_tenant_as_keys(gw: TestClient, echo: str) -> None:
    key = gw.post("/v1/requests", json={"url": echo + "/get"}, headers=A).json()["key"]
    assert gw.get(f"/v1/requests/{key}?wait=10", headers=A).status_code == 200
    gw.post("/v1/requests", json={"url": echo + "/get", "key": "shared-name"}, headers=A)
    gw.put("/v1/cache/a-secret", content=b"for acme only", headers=A)
    probes = [
        ("GET", "/v1/requests/{}"),
        ("GET", "/v1/requests/{}?wait=0.01"),
        ("DELETE", "/v1/requests/{}"),
        ("GET", "/v1/cache/{}"),
        ("DELETE", "/v1/cache/{}"),
    ]
    for existing in (key, "shared-name", "a-secret"):
        for method, path in probes:
            theirs = gw.request(method, path.format(existing), headers=B)
            never = gw.request(method, path.format("never-existed"), headers=B)
            assert theirs.status_code == never.status_code == 404
            assert theirs.json() == {
                "error": {
                    **never.json()["error"],
                    "message": never.json()["error"]["message"].replace("never-existed", existing),
                }
            }
        assert gw.get(f"/v1/mychat/get/{existing}", headers=B).text == ""
        assert gw.get(f"/v1/mychat/exists/{existing}", headers=B).text == "false"
    # A's things are untouched, and B may use the same names for its own.
    assert gw.get("/v1/cache/a-secret", headers=A).content == b"for acme only"
    own = gw.post("/v1/requests", json={"url": echo + "/get?b=1", "key": "shared-name"}, headers=B)
    assert own.status_code == 202 and own.json()["key"] == "shared-name"
    assert gw.get("/v1/requests/shared-name?wait=10", headers=B).json()["url"].endswith("?b=1")
    assert "b=1" not in gw.get("/v1/requests/shared-name?wait=10", headers=A).json()["url"]
    stats_b = gw.get("/v1/dashboard/stats", headers=B).json()
    assert key not in {r["key"] for r in stats_b["recent"]}


# -- the browser's session cookie ----------------------------------------------------------------


def test_login_sets_a_strict_http_only_cookie_that_reads_but_cannot_write(
    gw: TestClient, echo: str
) -> None:
    gw.cookies.clear()
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = gw.post(
        "/login", content=f"api_key={KEY_A}".encode(), headers=form, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("postkey_session=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert gw.get("/v1/dashboard/stats").status_code == 200  # the cookie, on a GET
    assert gw.head("/v1/dashboard/stats").status_code == 200
    # A state change needs the bearer key: a cookie alone (a cross-site form) is refused.
    assert gw.post("/v1/requests", json={"url": echo + "/get"}).status_code == 401
    assert gw.put("/v1/cache/x", content=b"x").status_code == 401
    assert gw.delete("/v1/cache/x").status_code == 401
    out = gw.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and 'postkey_session=""' in out.headers["set-cookie"]
    gw.cookies.clear()
    assert gw.get("/v1/dashboard/stats").status_code == 401


def test_a_wrong_login_sets_no_cookie(gw: TestClient) -> None:
    gw.cookies.clear()
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = gw.post("/login", content=b"api_key=nope", headers=form, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/?login=failed"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"content-type": "application/json"}, b'{"api_key": "x"}', 415),
        ({"content-type": "application/x-www-form-urlencoded"}, b"a" * 5000, 413),
        ({"content-type": "application/x-www-form-urlencoded"}, b"api_key=%ff", 303),
        (
            {"content-type": "application/x-www-form-urlencoded", "origin": "http://evil.example"},
            f"api_key={KEY_A}".encode(),
            403,
        ),
    ],
)
def test_login_refusals(gw: TestClient, headers: dict[str, str], body: bytes, status: int) -> None:
    gw.cookies.clear()
    response = gw.post("/login", content=body, headers=headers, follow_redirects=False)
    assert response.status_code == status
    assert "set-cookie" not in response.headers


# -- rate limits ---------------------------------------------------------------------------------


def test_a_tenant_over_its_rate_gets_429_with_retry_after(gw: TestClient) -> None:
    answers = [gw.get("/v1/cache/k", headers=SLOW) for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 404, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert int(answers[2].headers["retry-after"]) >= 1
    assert gw.get("/v1/cache/k", headers=A).status_code == 404  # other tenants are not held up
    batch = gw.post(
        "/v1/requests/batch", json={"requests": [{"url": "http://127.0.0.1/"}] * 3}, headers=SLOW
    )
    assert batch.status_code == 422 and "burst" in batch.json()["error"]["message"]


# -- auth off ------------------------------------------------------------------------------------


def test_auth_off_makes_every_request_tenant_default(echo: str) -> None:
    off = GatewayConfig(Settings(), None, auth=False)
    with gateway_client(off) as client:
        key = client.post("/v1/requests", json={"url": echo + "/get"}).json()["key"]
        assert client.get(f"/v1/requests/{key}?wait=10").json()["status"] == 200
        assert client.get("/metrics").status_code == 200


def test_authenticate_takes_a_bearer_key_anywhere_and_the_cookie_on_get_only(
    gw: TestClient,
) -> None:
    def request(method: str, header: bytes, value: str) -> Request:
        scope = {
            "type": "http",
            "method": method,
            "headers": [(header, value.encode())],
            "app": gw.app,
        }
        return Request(scope)

    bearer = authenticate(request("POST", b"authorization", f"Bearer {KEY_A}"))
    assert bearer is not None and bearer.name == "acme" and bearer.admin
    cookie = authenticate(request("GET", b"cookie", f"postkey_session={KEY_A}"))
    assert cookie is not None and cookie.name == "acme"
    assert authenticate(request("POST", b"cookie", f"postkey_session={KEY_A}")) is None
    assert authenticate(request("GET", b"cookie", "postkey_session=wrong")) is None


def test_a_key_ring_remembers_only_keys_that_matched() -> None:
    ring = KeyRing.single("pk_right", Tenant("acme"))
    for _ in range(2):  # the second time from what it remembers
        tenant = ring.tenant_for("pk_right")
        assert tenant is not None and tenant.name == "acme"
    for i in range(1000):
        assert ring.tenant_for(f"pk_wrong_{i}") is None
    assert ring.tenant_for("pk_right ") is None and ring.tenant_for("") is None
    assert len(ring._seen) == 1  # wrong keys are never kept: guessing cannot grow it
