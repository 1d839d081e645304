"""Destination policy: which addresses a request may connect to (the SSRF guard).

The check runs on the address libcurl is about to connect to (its open-socket hook), after
resolution, for every connection including redirect hops: numeric host forms, DNS rebinding and
redirects are all judged by the address really reached (the unspecified ``0.0.0.0`` and ``::``
as the loopback they reach). Name rules are judged with each hop's own host name
(`DestinationPolicy.check_target` before a hop, `check_address` when it connects). The built-in
deny list is written out here instead of relying on `ipaddress` flags, whose meaning changed
between Python releases.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from ._errors import InvalidValue

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, what it is). Order matters only for the name in refusal messages.
_DENIED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this-network / unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT (shared)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved / broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible IPv6"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64 (local use)"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:10::/28", "ORCHID"),
    ("2001:20::/28", "ORCHIDv2"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_DENIED_NETS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), what) for net, what in _DENIED
)
# Cloud metadata services. Allowing a whole range (say 169.254.0.0/16) does not open these:
# only an allow rule naming the exact address does.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)

Mode = Literal["allow_all", "public_only"]


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry: a network or a host name (``*.`` for subdomains), optional port."""

    text: str
    network: Network | None
    host: str | None
    port: int | None

    def matches(self, address: IPAddress | None, host: str, port: int) -> bool:
        """True if this rule covers a connection to ``address`` (for ``host``) on ``port``."""
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return (
                address is not None
                and address.version == self.network.version
                and (address in self.network)
            )
        assert self.host is not None
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def parse_rule(text: str) -> Rule:
    """Parse ``10.0.0.0/8``, ``127.0.0.1:8080``, ``[::1]:80``, ``api.internal``, ``*.corp:443``.

    Raises:
        InvalidValue: not a network, address or host name, or a bad port.
    """
    raw = text.strip()
    if not raw:
        raise InvalidValue("empty policy rule")
    spec, port = raw, None
    if raw.startswith("["):
        inside, _, rest = raw[1:].partition("]")
        spec = inside
        if rest:
            if not rest.startswith(":"):
                raise InvalidValue(f"policy rule {text!r}: expected [address]:port")
            port = _port(text, rest[1:])
    elif raw.count(":") == 1:
        spec, _, port_text = raw.partition(":")
        port = _port(text, port_text)
    try:
        network = ipaddress.ip_network(spec, strict=False)
    except ValueError:
        network = None
    if network is not None:
        return Rule(raw, network, None, port)
    host = spec.lower().rstrip(".")
    name = host[2:] if host.startswith("*.") else host
    if not name or not all(part and part.replace("-", "").isalnum() for part in name.split(".")):
        raise InvalidValue(f"policy rule {text!r} is not a network, address or host name")
    return Rule(raw, None, host, port)


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise InvalidValue(f"policy rule {text!r} has a bad port {value!r}")
    return int(value)


def classify(address: IPAddress) -> str | None:
    """What non-public range ``address`` is in (e.g. ``'loopback (127.0.0.0/8)'``), or None."""
    for network, what in _DENIED_NETS:
        if address.version == network.version and address in network:
            return f"{what} ({network})"
    return None


@dataclass(frozen=True)
class DestinationPolicy:
    """Where requests may go.

    ``allow_all`` (the library default, as for curl) connects anywhere not denied by a rule;
    ``public_only`` (the default of network-facing modes) refuses every non-public address (see
    `classify`) unless an allow rule covers it. Deny rules win over allow rules.

    Raises (on construction):
        InvalidValue: an unknown mode or a malformed rule.
    """

    mode: Mode = "allow_all"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    _allow: tuple[Rule, ...] = field(default=(), init=False, repr=False, compare=False)
    _deny: tuple[Rule, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("allow_all", "public_only"):
            raise InvalidValue(f"policy mode must be allow_all or public_only, not {self.mode!r}")
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "deny", tuple(self.deny))
        object.__setattr__(self, "_allow", tuple(parse_rule(r) for r in self.allow))
        object.__setattr__(self, "_deny", tuple(parse_rule(r) for r in self.deny))

    @classmethod
    def allow_all(cls, deny: tuple[str, ...] = ()) -> DestinationPolicy:
        """Connect anywhere except what ``deny`` names."""
        return cls("allow_all", (), deny)

    @classmethod
    def public_only(
        cls, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()
    ) -> DestinationPolicy:
        """Connect only to public addresses, plus what ``allow`` names, minus ``deny``."""
        return cls("public_only", allow, deny)

    @property
    def has_name_rules(self) -> bool:
        """True if a deny rule names a host (checked before any lookup)."""
        return any(rule.host is not None for rule in self._deny)

    @property
    def checks_addresses(self) -> bool:
        """False when no connection can ever be refused (allow_all without deny rules)."""
        return self.mode != "allow_all" or bool(self._deny)

    def check_host(self, host: str, port: int) -> str | None:
        """Refusal reason for a host name before it is resolved (deny rules on names), or None."""
        name = host.lower().rstrip(".")
        for rule in self._deny:
            if rule.host is not None and rule.matches(None, name, port):
                return f"host {name} is denied by rule {rule.text!r}"
        return None

    def check_target(self, host: str, port: int) -> str | None:
        """Refusal reason for a URL's host and port before anything is looked up, or None.

        Call it for every request and every redirect hop, with that hop's own host (from
        `target_of`): deny rules naming the host refuse it, and a host that is an IP address in
        standard form is judged as `check_address` would judge the connection. Anything else is
        left to `check_address` at connect time, which the open-socket hook calls with the
        hop's host name, so name allow rules only ever cover the host they name.
        """
        refusal = self.check_host(host, port)
        if refusal is not None or not self.checks_addresses:
            return refusal
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None  # a name, or a numeric form libcurl normalises: judged when connecting
        return self.check_address(host, port, host)

    def check_address(self, ip: str, port: int, host: str) -> str | None:
        """Refusal reason for connecting to ``ip``:``port`` on behalf of ``host``, or None.

        The address is judged as the one the connection really reaches (see `reached`): deny
        rules refuse it when they cover either form, allow rules and the public_only list judge
        what is reached.

        Raises:
            ValueError: ``ip`` is not an IP address.
        """
        given = unmapped(ipaddress.ip_address(ip.split("%", 1)[0]))
        address = reached(given)
        shown = str(given) if address == given else f"{given} (which connects to {address})"
        name = host.lower().rstrip(".")
        for rule in self._deny:
            if rule.matches(address, name, port) or (
                address != given and rule.matches(given, name, port)
            ):
                return f"{shown} port {port} is denied by rule {rule.text!r}"
        for rule in self._allow:
            if rule.matches(address, name, port):
                exact = rule.network is not None and rule.network.num_addresses == 1
                if address in METADATA_ADDRESSES and not exact:
                    return (
                        f"{address} is a cloud metadata address; allow it only by naming it"
                        f" exactly (rule {rule.text!r} is wider)"
                    )
                return None
        if self.mode == "allow_all":
            return None
        what = classify(address)
        if what is None and address in METADATA_ADDRESSES:
            what = "cloud metadata"
        if what is None:
            return None
        if address != given:
            return f"{given} connects to {address}, which is {what}; the policy is public_only"
        return f"{address} is {what}; the policy is public_only"


_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


def unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as the IPv4 address the kernel uses."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reached(address: IPAddress) -> IPAddress:
    """The address a connection to ``address`` really reaches.

    Linux (and the BSDs) connect the unspecified addresses to loopback: ``0.0.0.0`` (and its
    mapped form ``::ffff:0.0.0.0``) to 127.0.0.1, ``::`` to ::1, so a rule on loopback must see
    through them. Checked with real listeners: the rest of 0.0.0.0/8 fails to connect, and the
    IPv4-compatible ``::127.0.0.1`` is routed off the host, so neither is taken for loopback
    (public_only refuses both ranges anyway).
    """
    address = unmapped(address)
    if address.is_unspecified:
        return _LOOPBACK_V4 if address.version == 4 else _LOOPBACK_V6
    return address
