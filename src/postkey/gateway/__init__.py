"""The HTTP gateway (``postkey serve``): submit requests and read results over HTTP from any
language, with API keys bound to tenants, rate limits, metrics and the dashboard's figures.

Needs the ``gateway`` extra: ``pip install 'postkey[gateway]'``.
"""

from __future__ import annotations

from ._app import create_app
from ._auth import authenticate, require_tenant
from ._config import GatewayConfig
from ._tenants import KeyRing, Tenant, hash_key, new_api_key

__all__ = [
    "GatewayConfig",
    "KeyRing",
    "Tenant",
    "authenticate",
    "create_app",
    "hash_key",
    "new_api_key",
    "require_tenant",
]
