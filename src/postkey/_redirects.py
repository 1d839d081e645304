"""Redirects: which request a 3xx response leads to, or why it is not followed.

The engine follows redirects itself, one transfer per hop under the request's one deadline,
instead of letting libcurl do it (FOLLOWLOCATION), because each hop is a new request to a new
host and must be treated as one:

- **per-hop name rules**: libcurl's open-socket hook only sees addresses; the guard pairs them
  with the host name it was given when the transfer was prepared. With FOLLOWLOCATION that stays
  the first URL's name for every hop, so ``public_only(allow=("api.internal",))`` would let a
  302 from api.internal to ``http://127.0.0.1/`` through. Here every hop is prepared with its
  own host, and `hop_refusal` applies the name rules to it before anything is sent.
- **per-hop resolver**: an injected resolver is asked for each hop's host; libcurl would look
  the new name up itself, out of the resolver's reach.
- **the same validation as a submit**: the next request is built by `build_request`, so a
  Location that postkey would refuse on submit (another scheme, an authority that parsers read
  apart, control characters) is refused on a hop too, with a message saying why.

`next_hop` is pure: no I/O, no engine state. Method changes follow the Fetch standard (what
browsers, curl and httpx do): 303 turns any method but HEAD into GET without a body; 301 and 302
turn POST into GET without a body; 307 and 308 keep method and body. When the body goes, so do
the headers that describe it; when the origin (scheme, host, port) changes, so do credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from ._errors import InvalidRequest, InvalidURL
from ._request import SCHEMES, Request, build_request, check_url
from ._result import ErrorKind
from ._urls import origin_of, target_of

if TYPE_CHECKING:
    from ._policy import DestinationPolicy

#: The responses whose Location is followed (300, 304, 305 and 306 are not redirects to follow).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Sent only with the origin they were given for (curl CVE-2018-1000007, urllib3 CVE-2024-37891).
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# They describe the body, so they go when the body goes (the Fetch standard's request-body
# header names, plus the other Content-* and digest fields).
_BODY_HEADERS = frozenset({"digest", "repr-digest"})
# Control characters and backslashes: urljoin would silently drop tabs and newlines, and
# browsers read a backslash as a slash; a Location carrying them is refused, not repaired.
_LOCATION_BAD_RE = re.compile(r"[\x00-\x1f\x7f\\]")
# Space and bytes above ASCII (Latin-1 decoded header bytes) are percent-encoded, as curl does.
_LOCATION_ENCODE_RE = re.compile(r"[ \x80-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class RedirectRefusal:
    """Why a redirect is not followed: the request ends ``failed`` with this kind and message.

    ``kind`` is `ErrorKind.PROTOCOL` (a Location postkey would not send: another scheme, a
    malformed URL), `ErrorKind.TOO_MANY_REDIRECTS` or `ErrorKind.BLOCKED` (the policy).
    """

    kind: ErrorKind
    message: str


def next_hop(
    request: Request,
    status: int,
    location: str | None,
    hop: int,
    max_redirects: int,
    *,
    policy: DestinationPolicy | None = None,
) -> Request | RedirectRefusal | None:
    """The request to send next after ``request`` got a ``status`` response with ``location``.

    ``hop`` is how many redirects were followed to get this response (0 for the response to the
    submitted request). ``location`` is the Location header value as `parse_response_head`
    decodes it (Latin-1, one character per byte), or None. With ``policy``, the next request's
    host is judged by `hop_refusal` too.

    Returns:
        None when there is nothing to follow: the request does not follow redirects, the status
        is not in `REDIRECT_STATUSES`, or there is no Location (the response is final). A
        `RedirectRefusal` when the redirect must not be followed. Otherwise the next `Request`,
        built by `build_request` (so validated exactly as a submit), with the same timeout.

    Raises:
        Nothing: every problem with the Location is a `RedirectRefusal`.
    """
    if not request.follow_redirects or status not in REDIRECT_STATUSES:
        return None
    if location is None or not location.strip(" \t"):
        return None
    if hop >= max_redirects:
        return RedirectRefusal(
            ErrorKind.TOO_MANY_REDIRECTS,
            f"too many redirects: {hop} followed and {request.url} answered {status} again"
            f" (max_redirects={max_redirects})",
        )
    target = _resolve(request.url, location.strip(" \t"))
    if isinstance(target, RedirectRefusal):
        return target
    method, body, headers = request.method, request.body, request.headers
    if status == 303 or (status in (301, 302) and method == "POST"):
        method = "HEAD" if status == 303 and method == "HEAD" else "GET"
        body = b""
        headers = tuple((n, v) for n, v in headers if not _describes_body(n))
    if origin_of(target) != origin_of(request.url):
        headers = tuple((n, v) for n, v in headers if n.lower() not in _CREDENTIAL_HEADERS)
    try:
        nxt = build_request(
            method,
            target,
            body,
            headers,
            request.timeout_ms,
            max_timeout_ms=request.timeout_ms,
            max_body_bytes=len(body),
            follow_redirects=True,
        )
    except InvalidRequest as exc:  # only the URL can be new; the rest was valid on submit
        return RedirectRefusal(ErrorKind.PROTOCOL, f"redirect refused: {exc}")
    nxt.options = request.options  # the client certificate and HTTP version go along
    if policy is not None:
        return hop_refusal(policy, nxt) or nxt
    return nxt


def hop_refusal(policy: DestinationPolicy, request: Request) -> RedirectRefusal | None:
    """Why ``policy`` refuses ``request``'s host before it is looked up, or None.

    Uses `DestinationPolicy.check_target` with the hop's own host and port: deny rules naming
    it, and a literal address judged at once. A host name is judged again, by address, when the
    hop connects.
    """
    host, port = target_of(request.url)
    refusal = policy.check_target(host, port)
    if refusal is None:
        return None
    return RedirectRefusal(ErrorKind.BLOCKED, f"redirect to {request.url} blocked: {refusal}")


def _resolve(current: str, location: str) -> str | RedirectRefusal:
    """The absolute URL ``location`` points to from ``current``, without its fragment."""
    bad = _LOCATION_BAD_RE.search(location)
    if bad is not None:
        return RedirectRefusal(
            ErrorKind.PROTOCOL,
            f"redirect refused: the Location contains {bad.group()!r} at position {bad.start()}",
        )
    location = _LOCATION_ENCODE_RE.sub(_percent_encode, location)
    try:
        parts = urlsplit(location)
        if parts.scheme and parts.scheme.lower() not in SCHEMES:
            return RedirectRefusal(
                ErrorKind.PROTOCOL,
                f"redirect to a {parts.scheme!r} URL refused; only http and https are followed",
            )
        # urljoin would read "//" and "http:///x" as the current host; they name no host.
        after_scheme = location[len(parts.scheme) + 1 :] if parts.scheme else location
        if after_scheme.startswith("//") and not parts.netloc:
            return RedirectRefusal(
                ErrorKind.PROTOCOL, f"redirect refused: the Location {location!r} has no host"
            )
        joined = urljoin(current, location)
    except ValueError as exc:
        return RedirectRefusal(
            ErrorKind.PROTOCOL, f"redirect refused: malformed Location {location!r}: {exc}"
        )
    try:
        check_url(joined)
    except InvalidURL as exc:
        return RedirectRefusal(ErrorKind.PROTOCOL, f"redirect refused: {exc}")
    # A fragment never goes on the wire; the next request is the URL without it.
    return joined.partition("#")[0]


def _percent_encode(match: re.Match[str]) -> str:
    char = match.group()
    data = bytes([ord(char)]) if ord(char) <= 0xFF else char.encode("utf-8")
    return "".join(f"%{byte:02X}" for byte in data)


def _describes_body(name: str) -> bool:
    lower = name.lower()
    return lower.startswith("content-") or lower in _BODY_HEADERS
