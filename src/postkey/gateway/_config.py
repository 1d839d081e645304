"""`GatewayConfig`: what `postkey serve` and `create_app` are told, with documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._errors import InvalidValue
from .._policy import DestinationPolicy
from .._settings import MiB, Settings
from ._tenants import KeyRing, Tenant

#: The tenant of every request when auth is off (``--no-auth``, loopback only).
ANONYMOUS = Tenant("default", admin=True)


def _default_settings() -> Settings:
    # A network-facing door: public destinations only unless told otherwise.
    return Settings(policy=DestinationPolicy.public_only())


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway behaves.

    Raises (on construction):
        InvalidValue: a limit out of range, or auth on without keys.
    """

    #: The client settings (store, policy, limits); the policy is every tenant's base policy.
    settings: Settings = field(default_factory=_default_settings)
    #: The API keys accepted; None only with ``auth=False``.
    keys: KeyRing | None = None
    #: False: no API key asked, every request is tenant ``default`` (for loopback use).
    auth: bool = True
    #: The largest request body read, in bytes; a larger one gets 413 and the connection closes.
    max_body_bytes: int = 32 * MiB
    #: How long a body may take to arrive, in seconds; slower gets 408.
    body_timeout_s: float = 30.0
    #: The longest ``?wait=`` long-poll, in seconds.
    max_wait_s: float = 60.0
    #: Long-polls waiting at once, shared by all tenants, beyond each tenant's reserve; more get
    #: 503 with Retry-After.
    max_waiters: int = 10_000
    #: Long-polls each tenant may always have waiting, whatever others hold (its reserve): one
    #: tenant cannot take every place. At most ``max_waiters + tenant_waiters * tenants`` wait.
    tenant_waiters: int = 100
    #: Requests in one batch at most.
    max_batch: int = 1_000
    #: Whether the session cookie is sent with ``Secure`` (set it behind TLS).
    secure_cookies: bool = False

    def __post_init__(self) -> None:
        if self.auth and (self.keys is None or len(self.keys) == 0):
            raise InvalidValue("the gateway needs API keys unless auth is off")
        for name in ("max_body_bytes", "max_waiters", "max_batch"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidValue(f"{name} must be an int >= 1, got {value!r}")
        if type(self.tenant_waiters) is not int or not 0 <= self.tenant_waiters <= 1_000_000:
            raise InvalidValue(
                f"tenant_waiters must be an int from 0 to 1000000, got {self.tenant_waiters!r}"
            )
        for name in ("body_timeout_s", "max_wait_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 86_400:
                raise InvalidValue(f"{name} must be a number of seconds in (0, 86400]")

    @property
    def tenants(self) -> list[Tenant]:
        """Every tenant the gateway serves."""
        if not self.auth or self.keys is None:
            return [ANONYMOUS]
        return self.keys.tenants
