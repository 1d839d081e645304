"""A gateway for in-process tests: four tenants, a Starlette TestClient over its app."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

with warnings.catch_warnings():
    # Starlette asks for httpx2 instead of httpx; httpx serves these tests the same.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from postkey import DestinationPolicy, Settings
from postkey.gateway import GatewayConfig, KeyRing, Tenant, create_app, hash_key

__all__ = ["A", "B", "PLAIN", "SLOW", "TestClient", "config", "gateway_client"]

KEY_A = "pk_test_acme_0123456789"
KEY_B = "pk_test_beta_0123456789"
KEY_SLOW = "pk_test_slow_0123456789"
KEY_PLAIN = "pk_test_plain_0123456789"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
SLOW = {"Authorization": f"Bearer {KEY_SLOW}"}
PLAIN = {"Authorization": f"Bearer {KEY_PLAIN}"}

TENANTS = {
    hash_key(KEY_A): Tenant("acme", allow=("127.0.0.1",), admin=True),
    hash_key(KEY_B): Tenant("beta", allow=("127.0.0.1",)),
    hash_key(KEY_SLOW): Tenant("slow", allow=("127.0.0.1",), rate_per_s=0.01, burst=2),
    hash_key(KEY_PLAIN): Tenant("plain"),  # public destinations only
}


def config(**limits: Any) -> GatewayConfig:
    settings = Settings(policy=DestinationPolicy.public_only())
    return GatewayConfig(settings, KeyRing(TENANTS), **limits)


@contextmanager
def gateway_client(cfg: GatewayConfig | None = None) -> Iterator[TestClient]:
    with TestClient(create_app(cfg or config(max_batch=50, max_body_bytes=1 << 20))) as client:
        yield client
