"""What ``postkey serve`` does before serving: pick the API keys (a keys file, a key file of its
own, or a fresh key printed once) and refuse an unauthenticated gateway off loopback."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import InvalidValue
from .._settings import Settings
from ._config import GatewayConfig
from ._tenants import KeyRing, Tenant, new_api_key


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _key_from_file(path: Path, say: Callable[[str], None]) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = new_api_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
        say(f"a new API key for tenant 'default' is in {path} (readable by you only)")
        return key
    except OSError as exc:
        raise InvalidValue(f"--api-key-file {str(path)!r}: {exc.strerror}") from None
    if len(key) < 16:
        raise InvalidValue(f"--api-key-file {str(path)!r} holds a key shorter than 16 characters")
    say(f"API key for tenant 'default': from {path}")
    return key


def build_config(
    settings: Settings,
    host: str,
    *,
    keys_file: str | None,
    api_key_file: str | None,
    no_auth: bool,
    rate_per_s: float,
    burst: int,
    say: Callable[[str], None],
    **limits: Any,
) -> GatewayConfig:
    """The config ``postkey serve`` runs with; ``say`` prints a line for the operator.

    Raises:
        InvalidValue: contradictory options, ``--no-auth`` off loopback, a bad keys file.
    """
    if sum(bool(x) for x in (keys_file, api_key_file, no_auth)) > 1:
        raise InvalidValue("give one of --keys, --api-key-file and --no-auth")
    if no_auth:
        if not is_loopback(host):
            raise InvalidValue(
                f"--no-auth serves only on a loopback address (127.0.0.1, ::1), not {host!r}:"
                " anyone who can reach it could send requests through it"
            )
        say("auth is off (--no-auth): every request is tenant 'default'")
        return GatewayConfig(settings, None, auth=False, **limits)
    if keys_file:
        keys = KeyRing.from_file(keys_file, rate_per_s, burst)
        say(f"{len(keys.tenants)} tenant(s) from {keys_file}")
    else:
        default = Tenant("default", (), rate_per_s, burst or max(1, int(rate_per_s * 2)), True)
        if api_key_file:
            key = _key_from_file(Path(api_key_file), say)
        else:
            key = new_api_key()
            say(f"API key for tenant 'default' (this run only): {key}")
        keys = KeyRing.single(key, default)
    return GatewayConfig(settings, keys, **limits)
