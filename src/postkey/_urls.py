"""Facts about a validated URL that the engine needs per request: its origin and host.

Memoised, because the same URLs come back again and again, but only for short URLs: a memo of
thousands of 8 KB URLs would keep megabytes alive after every client is gone.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from ._memo import remember

Origin = tuple[str, str, int]

_MEMO_MAX_URL = 512  # longer URLs are parsed every time (rare, and cheap next to their size)
_origins: dict[str, Origin] = {}


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of a validated URL: what connections and per-host caps are keyed on."""
    origin = _origins.get(url)
    if origin is None:
        origin = _origin(url)
        if len(url) <= _MEMO_MAX_URL:
            remember(_origins, url, origin)
    return origin


def target_of(url: str) -> tuple[str, int]:
    """The host name (lower case) and port a validated URL points at."""
    _scheme, host, port = origin_of(url)
    return host, port


def needs_lookup(url: str) -> bool:
    """False when the URL's host is an IP address literal (nothing to resolve)."""
    host = origin_of(url)[1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def redacted(url: str) -> str:
    """``url`` fit for a log line: no user info, and ``?…`` for the query (tokens live there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{query}"
