"""The validated request: everything is checked here, before a key is issued."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from ._errors import InvalidBody, InvalidMethod, InvalidRequest, InvalidTimeout, InvalidURL
from ._headers import HeaderPairs, parse_headers

MAX_URL_LENGTH = 8192
SCHEMES = frozenset({"http", "https"})
_METHOD_RE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
# CONNECT asks for a tunnel, not a request; TRACE reflects credentials back (cross-site tracing).
_REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
_COMMON_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_URL_BAD_CHAR_RE = re.compile(r"[\x00-\x20\x7f-\U0010ffff\\]")

Body = str | bytes | bytearray | memoryview | None
HTTP_VERSIONS = ("1.1", "2")


class ConnectionOptions(NamedTuple):
    """How to connect, per request, where it differs from the client's settings (None: the
    client's). Kept apart from `Request` because almost every request has none."""

    client_cert: str | None = None  # PEM file: the TLS client certificate (mTLS)
    client_key: str | None = None  # PEM file: its private key (None: in client_cert)
    http_version: str | None = None  # "1.1" pins HTTP/1.1; "2" requires HTTP/2


class Request:
    """One HTTP request, already validated. Build it with `build_request`."""

    __slots__ = ("body", "follow_redirects", "headers", "method", "options", "timeout_ms", "url")

    def __init__(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: HeaderPairs,
        timeout_ms: int,
        follow_redirects: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.body = body
        self.headers = headers
        self.timeout_ms = timeout_ms
        self.follow_redirects = follow_redirects
        self.options: ConnectionOptions | None = None

    def fingerprint(self) -> str:
        """A digest of what goes on the wire (method, URL, headers, body); not the timeout."""
        h = hashlib.blake2b(digest_size=16)
        for part in (self.method, self.url, repr(self.headers), repr(self.options)):
            h.update(part.encode())
            h.update(b"\0")
        h.update(self.body)
        return h.hexdigest()

    def __repr__(self) -> str:
        size = len(self.body)
        return f"<Request {self.method} {self.url} body={size}B timeout_ms={self.timeout_ms}>"


def build_request(
    method: object,
    url: object,
    body: object,
    headers: object,
    timeout_ms: object,
    *,
    max_timeout_ms: int,
    max_body_bytes: int,
    follow_redirects: object = False,
) -> Request:
    """Validate every part of a request and return it.

    What the caller gave is typed ``object`` here and in the checks: the compiled build (mypyc)
    checks annotated types on entry, and would raise a bare TypeError before the check that says
    what is wrong.

    Raises:
        InvalidMethod, InvalidURL, InvalidHeader, InvalidBody, InvalidTimeout: what is wrong, said
            in the message. Nothing is sent and no key is issued.
    """
    checked_method = check_method(method)
    checked_body = check_body(body, max_body_bytes)
    if checked_body and checked_method == "HEAD":
        # libcurl would send it, then wait until the deadline for a response body that an
        # answer to HEAD never has.
        raise InvalidBody(
            f"a HEAD request cannot carry a body (got {len(checked_body)} bytes):"
            " send it without one, or use GET"
        )
    return Request(
        checked_method,
        check_url(url),
        checked_body,
        parse_headers(headers),
        check_timeout(timeout_ms, max_timeout_ms),
        bool(follow_redirects),
    )


def check_options(
    client_cert: object = None, client_key: object = None, http_version: object = None
) -> ConnectionOptions | None:
    """Return the connection options (None when all are unset, the common case).

    Raises:
        InvalidRequest: a certificate or key that is not a readable file, a key without a
            certificate, or an ``http_version`` other than "1.1" and "2".
    """
    if client_cert is None and client_key is None and http_version is None:
        return None
    if http_version is not None and http_version not in HTTP_VERSIONS:
        raise InvalidRequest(f"http_version must be '1.1', '2' or None, not {http_version!r}")
    if client_key is not None and client_cert is None:
        raise InvalidRequest("client_key was given without client_cert")
    paths: list[str | None] = []
    for name, path in (("client_cert", client_cert), ("client_key", client_key)):
        if path is None:
            paths.append(None)
            continue
        if not isinstance(path, str | os.PathLike):
            raise InvalidRequest(f"{name} must be a path to a PEM file, not {type(path).__name__}")
        text = os.fsdecode(path)
        if not os.path.isfile(text) or not os.access(text, os.R_OK):
            raise InvalidRequest(f"{name} {text!r} is not a readable file")
        paths.append(text)
    return ConnectionOptions(paths[0], paths[1], http_version)


def check_method(method: object) -> str:
    """Return the method in upper case if it is an HTTP method token such as GET or post.

    Any case is accepted, as by curl's -X, httpx and requests, and sent in upper case: the
    methods postkey is asked for are the registered ones, whose names are upper case.

    Raises:
        InvalidMethod: not a str, not a token of letters, digits, '_' and '-' (at most 32,
            starting with a letter), or CONNECT / TRACE.
    """
    if type(method) is str and method in _COMMON_METHODS:
        return method
    # ASCII first: str.upper() maps a few other letters to ASCII ones ('ﬀ' -> 'FF').
    if (
        not isinstance(method, str)
        or not method.isascii()
        or _METHOD_RE.fullmatch(method.upper()) is None
    ):
        raise InvalidMethod(f"method {method!r} is not an HTTP method token like 'POST'")
    method = method.upper()
    if method in _REFUSED_METHODS:
        raise InvalidMethod(f"method {method} is not supported")
    return method


def check_url(url: object) -> str:
    """Return the URL if it is an absolute http(s) URL postkey can send.

    The guard reads the host with `urllib.parse` while libcurl parses the URL itself, so every
    authority the two could read differently is refused here (see `_check_authority`).

    Raises:
        InvalidURL: not a str, too long, raw spaces / control / non-ASCII characters or a
            backslash, a scheme other than http / https, no host, a bad port, or an authority
            (user info, host, port) that parsers could disagree on.
    """
    if not isinstance(url, str):
        raise InvalidURL(f"URL must be a str, not {type(url).__name__}")
    # Only short URLs are memoised: 4,096 URLs of 8 KB would pin 32 MiB; 512 characters keep
    # the memo near 2 MiB, and the long ones are rare and cheap to check next to their size.
    if len(url) <= _MEMO_MAX_URL:
        return _check_url_text(url)
    return _check_url_text.__wrapped__(url)


_MEMO_MAX_URL = 512


@lru_cache(maxsize=4096)
def _check_url_text(url: str) -> str:
    if not url:
        raise InvalidURL("URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"URL is {len(url)} characters long; the maximum is {MAX_URL_LENGTH}")
    bad = _URL_BAD_CHAR_RE.search(url)
    if bad is not None:
        raise InvalidURL(
            f"URL contains {bad.group()!r} at position {bad.start()}: spaces, control characters,"
            " backslashes and non-ASCII must be percent-encoded (use punycode for host names)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"malformed URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise InvalidURL(f"URL {url!r} has {shown}; only http and https are supported")
    if not parts.hostname:
        raise InvalidURL(f"URL {url!r} has no host")
    if port == 0:
        raise InvalidURL(f"URL {url!r} has port 0")
    _check_authority(url, parts.netloc)
    return url


# RFC 3986 user info without its delimiters: unreserved, sub-delims, percent-encoded bytes.
_USERINFO_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2}")


def _check_authority(url: str, authority: str) -> None:
    """Refuse an authority that `urlsplit` and libcurl (or other parsers) could read apart.

    Both end the authority at the first ``/``, ``?`` or ``#``; inside it, urlsplit takes the
    user info up to the *last* ``@`` and libcurl up to the *first*, libcurl decodes a
    percent-encoded host and uses an IPv6 zone id that urlsplit keeps in the host name, and
    urlsplit ignores text after ``]``. So the authority must be exactly
    ``[user[:password]@]host[:port]`` with a plain host name, an IPv4 form or a bracketed IPv6
    address. The differential test in tests/test_validation.py sends every accepted form
    through libcurl and checks that it goes where urlsplit says.

    Raises:
        InvalidURL: what is wrong, and how to write it instead.
    """
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        if "@" in userinfo:
            raise InvalidURL(
                f"URL {url!r} has more than one '@' in its authority; parsers disagree on"
                " which one ends the user info (percent-encode '@' in a user name or password"
                " as %40)"
            )
        if not userinfo:
            raise InvalidURL(f"URL {url!r} has an '@' with an empty user info before it")
        if userinfo.count(":") > 1:
            raise InvalidURL(
                f"URL {url!r} has more than one ':' in the user info (percent-encode ':' in"
                " a password as %3A)"
            )
        bad = _USERINFO_RE.sub("", userinfo.replace(":", "", 1))
        if bad:
            raise InvalidURL(f"URL {url!r} has {bad[0]!r} in the user info; percent-encode it")
    # CVE-2016-8624 shape: an '@' after a '?' or '#' that ends the host, where an older or
    # laxer parser reads the host from after the '@'.
    after = url[url.index("//") + 2 + len(authority) :]
    if after[:1] in ("?", "#") and "@" in after:
        raise InvalidURL(
            f"URL {url!r} has '@' after a '?' or '#' that ends the host; some parsers read"
            " the host from after the '@' (write a '/' after the host)"
        )
    if hostport.startswith("["):
        inside, _, rest = hostport[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise InvalidURL(f"URL {url!r} has {rest!r} after ']'; only ':port' may follow")
        if "%" in inside:
            raise InvalidURL(f"URL {url!r} has an IPv6 zone id; zone ids are not supported")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise InvalidURL(
                f"URL {url!r} has {inside!r} in brackets, which is not an IPv6 address"
            ) from None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        if "%" in host:
            raise InvalidURL(
                f"URL {url!r} has a malformed host {host!r}: percent-encoded host names are"
                " refused (libcurl would decode them; write the name itself)"
            )
        if _HOSTNAME_RE.fullmatch(host) is None:
            raise InvalidURL(f"URL {url!r} has a malformed host {host!r}")
    if port_text == "":
        raise InvalidURL(f"URL {url!r} has an empty port after ':' (leave out the ':')")


def check_body(body: object, max_bytes: int) -> bytes:
    """Return the body as bytes (a str is encoded as UTF-8; None is empty).

    Raises:
        InvalidBody: another type, or more than ``max_bytes`` bytes.
    """
    if type(body) is bytes:
        data = body
    elif body is None:
        data = b""
    elif isinstance(body, bytes):
        data = bytes(body)
    elif isinstance(body, str):
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidBody(f"body text cannot be encoded as UTF-8: {exc.reason}") from None
    elif isinstance(body, bytearray | memoryview):
        data = bytes(body)
    else:
        raise InvalidBody(f"body must be str or bytes, not {type(body).__name__}")
    if len(data) > max_bytes:
        raise InvalidBody(f"body is {len(data)} bytes; the maximum is {max_bytes}")
    return data


def check_timeout(timeout_ms: object, max_timeout_ms: int) -> int:
    """Return the timeout if it is an int in [1, max_timeout_ms].

    Raises:
        InvalidTimeout: a bool, float (NaN and inf included), str or other type, or out of range.
    """
    if type(timeout_ms) is not int:
        if isinstance(timeout_ms, float) and not math.isfinite(timeout_ms):
            raise InvalidTimeout(f"timeout_ms must be a finite integer, got {timeout_ms!r}")
        raise InvalidTimeout(
            f"timeout_ms must be an int number of milliseconds, not {type(timeout_ms).__name__}"
            f" ({timeout_ms!r})"
        )
    if not 1 <= timeout_ms <= max_timeout_ms:
        raise InvalidTimeout(
            f"timeout_ms is {timeout_ms}; it must be between 1 and {max_timeout_ms} milliseconds"
        )
    return timeout_ms
