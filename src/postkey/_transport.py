"""The transport: how one request becomes a configured libcurl handle, and a handle a Result."""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING, Any

import pycurl

from ._headers import HeaderPairs, parse_response_head
from ._request import ConnectionOptions
from ._result import ErrorKind, Result, State
from ._wakeup import FD_SETSIZE

if TYPE_CHECKING:
    from ._job import Job
    from ._policy import DestinationPolicy
    from ._settings import Settings

_ERROR_KINDS: dict[int, ErrorKind] = {
    pycurl.E_COULDNT_RESOLVE_HOST: ErrorKind.DNS,
    pycurl.E_COULDNT_RESOLVE_PROXY: ErrorKind.DNS,
    pycurl.E_COULDNT_CONNECT: ErrorKind.CONNECT,
    pycurl.E_OPERATION_TIMEDOUT: ErrorKind.TIMEOUT,
    pycurl.E_SSL_CONNECT_ERROR: ErrorKind.TLS,
    pycurl.E_PEER_FAILED_VERIFICATION: ErrorKind.TLS,
    pycurl.E_SSL_CACERT_BADFILE: ErrorKind.TLS,
    pycurl.E_SSL_CERTPROBLEM: ErrorKind.TLS,
    pycurl.E_SSL_CIPHER: ErrorKind.TLS,
    pycurl.E_SSL_ISSUER_ERROR: ErrorKind.TLS,
    pycurl.E_SSL_PINNEDPUBKEYNOTMATCH: ErrorKind.TLS,
    pycurl.E_USE_SSL_FAILED: ErrorKind.TLS,
    pycurl.E_FILESIZE_EXCEEDED: ErrorKind.TOO_LARGE,
    100: ErrorKind.TOO_LARGE,  # CURLE_TOO_LARGE: header or field over libcurl's built-in limit
    pycurl.E_TOO_MANY_REDIRECTS: ErrorKind.TOO_MANY_REDIRECTS,
    pycurl.E_GOT_NOTHING: ErrorKind.NETWORK,
    pycurl.E_RECV_ERROR: ErrorKind.NETWORK,
    pycurl.E_SEND_ERROR: ErrorKind.NETWORK,
    pycurl.E_PARTIAL_FILE: ErrorKind.NETWORK,
    8: ErrorKind.PROTOCOL,  # CURLE_WEIRD_SERVER_REPLY (pycurl names it only for FTP)
    pycurl.E_HTTP2: ErrorKind.PROTOCOL,
    pycurl.E_BAD_CONTENT_ENCODING: ErrorKind.PROTOCOL,
    pycurl.E_UNSUPPORTED_PROTOCOL: ErrorKind.PROTOCOL,
}
_HTTP = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
E_TOO_LARGE = 100
E_BAD_FUNCTION_ARGUMENT = 43  # what libcurl 8 says of a client certificate without its key
# TLS alerts a server sends about the client certificate, as OpenSSL words them. Under TLS 1.3
# they arrive after the client's side of the handshake, so libcurl reports a receive error.
_CLIENT_CERT_ALERTS = {
    "alert certificate required": "the server requires a TLS client certificate",
    "alert unknown ca": "the server does not trust the TLS client certificate's issuer",
    "alert bad certificate": "the server refused the TLS client certificate",
    "alert certificate unknown": "the server refused the TLS client certificate",
    "alert unsupported certificate": "the server refused the TLS client certificate",
    "alert certificate expired": "the server refused the TLS client certificate as expired",
    "alert certificate revoked": "the server refused the TLS client certificate as revoked",
    "alert access denied": "the server denied access to the TLS client certificate",
}


def _curl_header_lines(pairs: HeaderPairs, has_body: bool) -> list[bytes]:
    lines = [f"{name}: {value}" if value else f"{name};" for name, value in pairs]
    # No "Expect: 100-continue" round trip before large bodies.
    lines.append("Expect:")
    # libcurl would label every body form-urlencoded; send no Content-Type unless given one.
    if has_body and not any(name.lower() == "content-type" for name, _ in pairs):
        lines.append("Content-Type:")
    # As bytes, Latin-1: values may hold U+0080 to U+00FF (`parse_headers` refuses above), and
    # pycurl encodes str lines as ASCII (such a request failed as `internal` before it left).
    return [line.encode("latin-1") for line in lines]


class Guard:
    """libcurl's open-socket hook for one handle: vets each address before a socket exists.

    Refusing returns CURL_SOCKET_BAD, so no packet is ever sent to a refused address; the
    reason is kept for the Result (libcurl itself only reports a connect failure).
    """

    __slots__ = ("host", "policy", "refusal")

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy
        self.host = ""
        self.refusal: str | None = None

    def open(self, purpose: int, address: Any) -> Any:
        ip, port = address.addr[0], address.addr[1]
        try:
            refusal = self.policy.check_address(ip, port, self.host)
        except ValueError:
            refusal = f"unparsable address {ip!r}"
        if refusal is not None:
            self.refusal = refusal
            return pycurl.SOCKET_BAD
        return socket.socket(address.family, address.socktype, address.protocol)


class DecodedMeter:
    """The write callback when bodies are decoded: counts decoded bytes against the cap (a
    compression bomb stops at the first chunk past it) and refuses more than two stacked
    Content-Encodings. libcurl's own size cap only sees wire bytes."""

    __slots__ = ("cap", "checked", "head_lines", "parts", "problem", "total")

    def __init__(self, parts: list[bytes], head_lines: list[bytes], cap: int) -> None:
        self.parts = parts
        self.head_lines = head_lines
        self.cap = cap
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.checked = False
        self.problem: tuple[ErrorKind, str] | None = None

    def write(self, chunk: bytes) -> int | None:
        if not self.checked:
            self.checked = True
            codings = _content_codings(self.head_lines)
            if len(codings) > MAX_STACKED_ENCODINGS:
                self.problem = (
                    ErrorKind.PROTOCOL,
                    f"{len(codings)} stacked Content-Encodings ({', '.join(codings)});"
                    f" at most {MAX_STACKED_ENCODINGS} are decoded",
                )
                return 0
        self.total += len(chunk)
        if self.total > self.cap:
            self.problem = (ErrorKind.TOO_LARGE, f"decoded response body exceeds {self.cap} bytes")
            return 0  # anything but len(chunk) makes libcurl abort the transfer
        self.parts.append(chunk)
        return None


MAX_STACKED_ENCODINGS = 2


def _content_codings(head_lines: list[bytes]) -> list[str]:
    # The final response block's headers, read by the one parser of response heads.
    headers = parse_response_head(head_lines)[3]
    return [
        coding.strip()
        for name, value in headers
        if name.lower() == "content-encoding"
        for coding in value.split(",")
        if coding.strip()
    ]


class Handle:
    """A libcurl easy handle and what postkey keeps with it between and during transfers.

    Kept beside the pycurl object, not as attributes on it: pycurl finds an attribute it does
    not define only after raising and clearing an AttributeError inside, ~0.6 us a read (a slot
    here: ~0.01 us), and a request read ~15 of them (13% of the engine thread's time).
    """

    __slots__ = (
        "body_parts",
        "conn",
        "curl",
        "guard",
        "head_lines",
        "header_pairs",
        "job",
        "meter",
        "shape",
    )

    def __init__(self, curl: pycurl.Curl, guard: Guard | None, decompress_cap: int | None) -> None:
        self.curl = curl
        #: The running job (None while idle).
        self.job: Job | None = None
        #: What the handle is configured for (see `Transport.prepare`); None: nothing yet.
        self.shape: tuple[str, bool, bool, ConnectionOptions | None] | None = None
        self.conn: ConnectionOptions | None = None
        self.header_pairs: HeaderPairs | None = None
        # The handle keeps its buffers; `result` empties them. Binding the callbacks once saves
        # two setopt calls per request.
        self.body_parts: list[bytes] = []
        self.head_lines: list[bytes] = []
        self.guard = guard
        self.meter = (
            DecodedMeter(self.body_parts, self.head_lines, decompress_cap)
            if decompress_cap is not None
            else None
        )


class Transport:
    """Turns jobs into libcurl easy handles and finished handles into Results."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._policy = settings.policy
        self._guarded = settings.policy.checks_addresses
        #: True once libcurl opened a socket numbered >= FD_SETSIZE (see Engine._sleep).
        self.high_descriptors = False
        # Header lines of all response blocks (1xx, redirects) plus status lines and blank lines:
        # a cheap upper bound first; the exact count is only needed past it.
        self._max_head_lines = settings.max_response_headers + 2 * (settings.max_redirects + 2)
        #: The client's connection options (None: none set, the common case).
        self._conn = _connection(
            ConnectionOptions(settings.client_cert, settings.client_key, settings.http_version),
            None,
        )

    def new_handle(self) -> Handle:
        """A fresh easy handle (configured on first use by `prepare`)."""
        s = self._settings
        return Handle(
            pycurl.Curl(),
            Guard(self._policy) if self._guarded else None,
            s.max_response_bytes if s.decompress else None,
        )

    def refusal(self, job: Job) -> str | None:
        """Why the policy refuses ``job``'s host by name before any lookup (deny rules), or None."""
        _scheme, host, port = job.origin
        return self._policy.check_host(host, port)

    def prepare(self, handle: Handle, job: Job, timeout_ms: int) -> None:
        """Configure ``handle`` for ``job`` with ``timeout_ms`` left on its deadline.

        Handles are reused: options that depend only on the settings and on the request's
        "shape" (method, body or not, scheme, connection options) are set when the shape
        changes, the header list when it changes, and only URL, body and timeout every time:
        setopt is the costliest call on this path (measured with cProfile). A shape change
        resets the handle first, so a client certificate or HTTP version set for one job never
        carries over to the next job on the same handle.
        """
        req = job.request
        method = req.method
        body = req.body
        has_body = method == "POST" or bool(body)
        https = job.origin[0] == "https"
        options = req.options
        conn = self._conn if options is None else _connection(self._conn, options)
        shape = (method, has_body, https, conn)
        curl = handle.curl
        if handle.shape != shape:
            curl.reset()
            self._configure(handle, method, has_body, https, conn)
            handle.shape = shape
            handle.conn = conn
            handle.header_pairs = None
        setopt = curl.setopt
        setopt(pycurl.URL, req.url)
        if has_body:
            setopt(pycurl.POSTFIELDS, body)  # pycurl sets the size too: NUL bytes are safe
        setopt(pycurl.TIMEOUT_MS, timeout_ms)
        # Header validation hands back the same tuple for the same small header set, so the
        # identity check skips the costly setopt for repeated headers without a memo here.
        pairs = req.headers
        if handle.header_pairs is not pairs:
            setopt(pycurl.HTTPHEADER, _curl_header_lines(pairs, has_body))
            handle.header_pairs = pairs
        # The buffers are empty here: `result` and `release` empty them when a transfer ends.
        guard = handle.guard
        if guard is not None:
            guard.host = job.origin[1]
            guard.refusal = None
        if handle.meter is not None:
            handle.meter.reset()
        if job.addresses is not None:
            # The injected resolver's answer, pinned: libcurl connects to these addresses and
            # does no lookup of its own (the open-socket hook still vets each one).
            _scheme, host, port = job.origin
            addresses = ",".join(f"[{a}]" if ":" in a else a for a in job.addresses)
            setopt(pycurl.RESOLVE, [f"{host}:{port}:{addresses}"])

    def release(self, handle: Handle) -> None:
        """Drop what a handle received (a cancelled or abandoned transfer) before it is reused."""
        del handle.body_parts[:]
        del handle.head_lines[:]

    def _note_socket(self, fd: int, purpose: int) -> int:
        # Called once per new connection with the descriptor libcurl really uses.
        if fd >= FD_SETSIZE:
            self.high_descriptors = True
        return int(pycurl.SOCKOPT_OK)

    def _configure(
        self,
        handle: Handle,
        method: str,
        has_body: bool,
        https: bool,
        conn: ConnectionOptions | None,
    ) -> None:
        # No FOLLOWLOCATION: the engine follows redirects itself, one transfer per hop, so each
        # hop is validated, resolved and judged by the policy as a request of its own.
        s = self._settings
        setopt = handle.curl.setopt
        setopt(pycurl.NOSIGNAL, 1)
        setopt(pycurl.SOCKOPTFUNCTION, self._note_socket)
        meter = handle.meter
        setopt(pycurl.WRITEFUNCTION, meter.write if meter else handle.body_parts.append)
        setopt(pycurl.HEADERFUNCTION, handle.head_lines.append)
        if handle.guard is not None:
            setopt(pycurl.OPENSOCKETFUNCTION, handle.guard.open)
        setopt(pycurl.PROTOCOLS, _HTTP)
        setopt(pycurl.MAXFILESIZE_LARGE, s.max_response_bytes)
        http_version = None if conn is None else conn.http_version
        if http_version == "2":
            # HTTP/2 only. Over https ALPN then offers h2 alone (with 2TLS libcurl would fall
            # back to HTTP/1.1 and send the request before `result` could refuse it); over
            # http it is h2c with prior knowledge. A server that does not speak HTTP/2 fails
            # at its first frame, before any request reaches it as HTTP/1.1.
            setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
            setopt(pycurl.PIPEWAIT, 1)
        elif http_version == "1.1":
            # No PIPEWAIT: an HTTP/1.1 connection never multiplexes.
            setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        elif https:
            # libcurl's default (2TLS): HTTP/2 when ALPN agrees. Wait for a connection that may
            # multiplex rather than open more. Never on plain http: no h2c is offered, and
            # libcurl would queue every request to one slow host behind a single HTTP/1.1
            # connection.
            setopt(pycurl.PIPEWAIT, 1)
        if conn is not None and conn.client_cert is not None:
            # libcurl matches pooled connections and TLS sessions on the client certificate,
            # so a connection opened with one certificate serves no request with another or
            # none (tests/test_transport_options.py checks this against a real server).
            setopt(pycurl.SSLCERT, conn.client_cert)
            setopt(pycurl.SSLCERTTYPE, "PEM")
            setopt(pycurl.SSLKEY, conn.client_key or conn.client_cert)
            setopt(pycurl.SSLKEYTYPE, "PEM")
        # An empty proxy string makes libcurl ignore http_proxy / https_proxy / no_proxy.
        setopt(pycurl.PROXY, s.proxy or "")
        setopt(pycurl.USERAGENT, s.user_agent)
        if not s.verify_tls:
            setopt(pycurl.SSL_VERIFYPEER, 0)
            setopt(pycurl.SSL_VERIFYHOST, 0)
        if s.ca_file:
            setopt(pycurl.CAINFO, s.ca_file)
        if s.decompress:
            setopt(pycurl.ACCEPT_ENCODING, "")
        if has_body:
            if method != "POST":
                setopt(pycurl.CUSTOMREQUEST, method)
        elif method == "HEAD":
            setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            setopt(pycurl.CUSTOMREQUEST, method)

    def result(self, handle: Handle, job: Job, errno: int, message: str) -> Result:
        """Build the terminal Result of a finished transfer (``errno`` 0 means a response)."""
        info = handle.curl.getinfo
        # A plain tuple: Result packs it; building the NamedTuple here would be wasted work.
        timings = (
            info(pycurl.NAMELOOKUP_TIME) * 1000.0,
            info(pycurl.CONNECT_TIME) * 1000.0,
            info(pycurl.APPCONNECT_TIME) * 1000.0,
            info(pycurl.STARTTRANSFER_TIME) * 1000.0,
            info(pycurl.TOTAL_TIME) * 1000.0,
        )
        problem: tuple[ErrorKind, str] | None = None
        if errno == 0:
            if len(handle.head_lines) > self._max_head_lines:
                limit = self._settings.max_response_headers
                problem = (ErrorKind.TOO_LARGE, f"more than {limit} response headers")
            elif (
                handle.conn is not None
                and handle.conn.http_version == "2"
                and info(pycurl.INFO_HTTP_VERSION) != pycurl.CURL_HTTP_VERSION_2_0
            ):
                # A server that chose HTTP/1.1 by ALPN although only h2 was offered.
                problem = (ErrorKind.PROTOCOL, f"{_NO_H2}: it answered over another version")
        if errno == 0 and problem is None:
            raw_head = _final_head(handle.head_lines)
            if _STATUS_LINE.match(raw_head) is None:
                # libcurl 8.23 reads "HTTP/1.1 2000" as 200; RFC 9110 has three digits, 1xx-5xx.
                line = raw_head.split(b"\r\n", 1)[0][:80].decode("latin-1")
                problem = (ErrorKind.PROTOCOL, f"invalid status line {line!r}")
        if errno == 0 and problem is None:
            body = b"".join(handle.body_parts)
            # Emptied now, not at the next prepare: an idle handle must not pin a large body.
            del handle.body_parts[:]
            del handle.head_lines[:]
            return Result(
                job.key,
                State.DONE,
                status=info(pycurl.RESPONSE_CODE),
                raw_head=raw_head,
                body=body,
                timings=timings,
                submitted_at=job.submitted_at,
                finished_at=time.time(),
                attempts=1,
            )
        del handle.body_parts[:]
        del handle.head_lines[:]
        kind, message = problem or self._failure(handle, errno, message)
        return Result(
            job.key,
            State.FAILED,
            error_kind=kind,
            error=message or f"libcurl error {errno}",
            timings=timings,
            submitted_at=job.submitted_at,
            finished_at=time.time(),
            attempts=1,
        )

    def _failure(self, handle: Handle, errno: int, message: str) -> tuple[ErrorKind, str]:
        """The error kind and message of a transfer that got no response."""
        guard = handle.guard
        if guard is not None and guard.refusal is not None:
            return ErrorKind.BLOCKED, guard.refusal
        meter = handle.meter
        if meter is not None and meter.problem is not None:
            return meter.problem
        kind = _ERROR_KINDS.get(errno, ErrorKind.INTERNAL)
        if errno == E_TOO_LARGE or "too large response headers" in message.lower():
            # libcurl caps all response headers together (interim 1xx responses included)
            return (
                ErrorKind.TOO_LARGE,
                f"response headers exceed libcurl's 300 KiB limit {message}".rstrip(),
            )
        if kind is ErrorKind.TOO_LARGE:
            return kind, f"response body exceeds {self._settings.max_response_bytes} bytes"
        conn = handle.conn
        if "alert" in message:
            lowered = message.lower()
            unset = conn is None or conn.client_cert is None
            for alert, meaning in _CLIENT_CERT_ALERTS.items():
                if alert in lowered:
                    return ErrorKind.TLS, f"{meaning}{_NO_CERT if unset else ''}: {message}"
            if unset and "alert handshake failure" in lowered:
                # What a TLS 1.2 server says when it requires a certificate and got none, but
                # also when no cipher suite or version matched: a hint, not a verdict.
                return ErrorKind.TLS, f"{message} ({_MAYBE_CERT})"
        if conn is None:
            return kind, message
        if conn.http_version == "2" and "HTTP/2" in message:
            # "Remote peer returned unexpected data while we expected SETTINGS frame.
            # Perhaps, peer does not support HTTP/2 properly.": a send or receive error.
            return ErrorKind.PROTOCOL, f"{_NO_H2}: {message}"
        if conn.client_cert is not None and errno in (
            E_BAD_FUNCTION_ARGUMENT,
            pycurl.E_SSL_CERTPROBLEM,
        ):
            return ErrorKind.TLS, f"cannot use client_cert {conn.client_cert!r}: {message}"
        return kind, message


_NO_CERT = " and none was set (client_cert)"
_MAYBE_CERT = (
    "the server ended the handshake; if it requires a TLS client certificate, set client_cert"
)
_NO_H2 = "the server did not speak HTTP/2, which http_version='2' requires"


def _connection(
    base: ConnectionOptions | None, options: ConnectionOptions | None
) -> ConnectionOptions | None:
    """The connection options in force: a request's own over the client's, field by field (a
    request's client_cert replaces the client's certificate and key together). None when none
    is set."""
    if options is None:
        merged = base
    elif base is None:
        merged = options
    else:
        cert, key = options.client_cert, options.client_key
        if cert is None:
            cert, key = base.client_cert, base.client_key
        merged = ConnectionOptions(cert, key, options.http_version or base.http_version)
    return None if merged is None or merged == _NO_OPTIONS else merged


_NO_OPTIONS = ConnectionOptions()


# A final response's status line as libcurl hands it over (HTTP/2 and 3 as "HTTP/2 200").
_STATUS_LINE = re.compile(rb"HTTP/[0-9](?:\.[0-9])? [1-5][0-9][0-9](?:[ \r]|$)")


def _final_head(lines: list[bytes]) -> bytes:
    """The last response block (after any 1xx or redirect responses), without the blank line."""
    raw = b"".join(lines)
    start = raw.rfind(b"\r\n\r\nHTTP/")
    if start >= 0:
        raw = raw[start + 4 :]
    return raw.rstrip(b"\r\n")
