"""Tenants and their API keys: a key is stored only as its SHA-256, bound to one tenant, whose
name makes the namespace every one of its result and cache keys lives in.

The keys file is TOML::

    [tenants.acme]
    keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    allow = ["10.0.0.7:8080"]   # destinations allowed besides public addresses
    rate_per_s = 200            # requests per second (0: no limit); burst: the bucket's size
    burst = 400
    admin = true                # may read /metrics (every tenant's figures)
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InvalidValue
from .._policy import parse_rule

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
_TENANT_FIELDS = frozenset({"keys", "allow", "rate_per_s", "burst", "admin"})


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who a request is from: a name, the destinations it may reach besides public ones, and its
    rate limit (``rate_per_s`` 0: none)."""

    name: str
    allow: tuple[str, ...] = ()
    rate_per_s: float = 0.0
    burst: int = 0
    admin: bool = False

    @property
    def namespace(self) -> str:
        """The prefix of this tenant's keys in the store. ``~`` never occurs in a tenant name, so
        no tenant's namespace plus a key can spell another tenant's."""
        return self.name + "~"


def hash_key(api_key: str) -> str:
    """The stored form of an API key: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_key() -> str:
    """A fresh API key: ``pk_`` and 192 random bits, URL-safe."""
    return "pk_" + secrets.token_urlsafe(24)


class KeyRing:
    """The API keys the gateway accepts, by hash. Looking a key up costs one SHA-256 the first
    time it matches."""

    def __init__(self, entries: Mapping[str, Tenant]) -> None:
        self._by_hash = dict(entries)
        # Keys that matched, so that a tenant's every call does not pay a SHA-256: only valid
        # keys enter, so it holds at most one entry per key in the file (a caller trying random
        # keys cannot grow it), and the ring never changes while it serves.
        self._seen: dict[str, Tenant] = {}

    def tenant_for(self, api_key: str) -> Tenant | None:
        """The tenant ``api_key`` belongs to, or None."""
        tenant = self._seen.get(api_key)
        if tenant is not None:
            return tenant
        if not api_key or len(api_key) > 512:
            return None
        tenant = self._by_hash.get(hash_key(api_key))
        if tenant is not None and len(self._seen) < len(self._by_hash):
            self._seen[api_key] = tenant
        return tenant

    @property
    def tenants(self) -> list[Tenant]:
        """Every tenant, once each, by name."""
        return sorted(set(self._by_hash.values()), key=lambda t: t.name)

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def single(cls, api_key: str, tenant: Tenant) -> KeyRing:
        """One key for one tenant (the generated key of ``postkey serve`` without a keys file)."""
        return cls({hash_key(api_key): tenant})

    @classmethod
    def from_file(
        cls, path: str | Path, default_rate: float = 0.0, default_burst: int = 0
    ) -> KeyRing:
        """Read a keys file (see the module docstring).

        Raises:
            InvalidValue: the file cannot be read, is not TOML, or holds a bad entry.
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidValue(f"keys file {str(path)!r}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidValue(f"keys file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, default_rate, default_burst, where=str(path))

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        default_rate: float = 0.0,
        default_burst: int = 0,
        where: str = "keys",
    ) -> KeyRing:
        """Build from the parsed form of a keys file.

        Raises:
            InvalidValue: a bad tenant name, key hash, allow rule or limit.
        """
        tenants = data.get("tenants")
        if not isinstance(tenants, Mapping) or set(data) - {"tenants"}:
            raise InvalidValue(f"{where}: expected only [tenants.NAME] tables")
        entries: dict[str, Tenant] = {}
        for name, spec in tenants.items():
            tenant, hashes = _tenant(name, spec, default_rate, default_burst, where)
            for digest in hashes:
                if digest in entries:
                    raise InvalidValue(f"{where}: a key hash appears twice ({digest[:15]}...)")
                entries[digest] = tenant
        if not entries:
            raise InvalidValue(f"{where}: no keys")
        return cls(entries)


def _tenant(
    name: object, spec: object, default_rate: float, default_burst: int, where: str
) -> tuple[Tenant, list[str]]:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidValue(
            f"{where}: tenant name {name!r} must be 1-32 of a-z, 0-9, '_', '-' (starting with a"
            " letter or digit)"
        )
    if not isinstance(spec, Mapping):
        raise InvalidValue(f"{where}: [tenants.{name}] must be a table")
    unknown = set(spec) - _TENANT_FIELDS
    if unknown:
        raise InvalidValue(f"{where}: [tenants.{name}] has unknown fields {sorted(unknown)}")
    hashes = spec.get("keys", [])
    if not isinstance(hashes, list) or not hashes:
        raise InvalidValue(f'{where}: [tenants.{name}] needs keys = ["sha256:...", ...]')
    for digest in hashes:
        if not isinstance(digest, str) or not _HASH_RE.fullmatch(digest):
            raise InvalidValue(
                f"{where}: [tenants.{name}] keys must be 'sha256:' and 64 lower-case hex digits"
            )
    allow = spec.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise InvalidValue(f"{where}: [tenants.{name}] allow must be a list of strings")
    for rule in allow:
        parse_rule(rule)  # InvalidValue names the bad rule
    rate = spec.get("rate_per_s", default_rate)
    burst = spec.get("burst", default_burst or max(1, int(rate * 2)))
    if type(rate) not in (int, float) or not 0 <= rate <= 1e9:
        raise InvalidValue(f"{where}: [tenants.{name}] rate_per_s must be a number >= 0")
    if type(burst) is not int or not 0 <= burst <= 10**9:
        raise InvalidValue(f"{where}: [tenants.{name}] burst must be an int >= 0")
    admin = spec.get("admin", False)
    if type(admin) is not bool:
        raise InvalidValue(f"{where}: [tenants.{name}] admin must be true or false")
    return Tenant(name, tuple(allow), float(rate), burst, admin), list(_unique(hashes))


def _unique(items: Iterable[str]) -> Iterable[str]:
    seen: set[str] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item
