"""The result of a request: state, status, headers, exact body bytes, timings, error."""

from __future__ import annotations

import base64
import codecs
import math
import re
import struct
from enum import StrEnum
from typing import Any, NamedTuple

from ._encoders import load_json
from ._errors import HTTPStatusError, NoResponse, RequestFailed
from ._headers import parse_response_head
from ._response_headers import Headers
from ._urls import redacted


class State(StrEnum):
    """Where a key is in its life. Compares equal to its lower-case name."""

    UNKNOWN = "unknown"  # never seen here, or gone long ago
    PENDING = "pending"  # accepted, waiting in the queue
    RUNNING = "running"  # on the wire
    DONE = "done"  # an HTTP response arrived, whatever its status code
    FAILED = "failed"  # no response: see Result.error_kind
    EXPIRED = "expired"  # there was a result; its TTL passed

    @property
    def terminal(self) -> bool:
        """True for done and failed: the key will not change any more."""
        return self is State.DONE or self is State.FAILED


class ErrorKind(StrEnum):
    """Why a request failed (state ``failed``)."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    NETWORK = "network"  # the connection broke mid-exchange (reset, closed early)
    PROTOCOL = "protocol"  # the server answered something that is not valid HTTP
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    INTERNAL = "internal"
    WORKER_LOST = "worker_lost"  # the sending process stopped before the request ended
    #: At-most-once delivery: its worker stopped mid-request, so it may or may not have been
    #: sent, and it is not sent again.
    UNKNOWN_OUTCOME = "unknown_outcome"
    #: Queued mode: the store did not answer, so the request was never queued (nor sent).
    NOT_QUEUED = "not_queued"


class Timings(NamedTuple):
    """libcurl's timings in milliseconds, each counted from the start of the transfer."""

    dns_ms: float
    connect_ms: float
    tls_ms: float
    first_byte_ms: float
    total_ms: float


# Submission and finish times (float64 epoch seconds) and the five timings (float32 ms) packed in
# one bytes object: 69 bytes instead of ~250 as two floats plus a tuple of five. Memory per
# cached result is a target (a cached 1 KB result must cost <= 1.6 KB).
_TIMES = struct.Struct("<2d5f")
_NAN = math.nan


def _opt(value: float) -> float | None:
    return None if math.isnan(value) else value  # NaN marks "not set"


_NO_HEADERS = Headers()
_NOT_TEXT = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})
_CHARSET_RE = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9_.:-]+)", re.IGNORECASE)


class Result:
    """What postkey knows about a key: a finished response, a failure, or a non-terminal state.

    ``status``, ``headers`` and ``body`` are set only when ``state`` is ``done``; ``error_kind``
    and ``error`` only when it is ``failed``.
    """

    __slots__ = (
        "_head",
        "_raw_head",
        "_times",
        "attempts",
        "body",
        "error",
        "error_kind",
        "fingerprint",
        "key",
        "state",
        "status",
        "url",
    )

    def __init__(
        self,
        key: str,
        state: State,
        *,
        status: int | None = None,
        raw_head: bytes = b"",
        body: bytes = b"",
        error_kind: ErrorKind | None = None,
        error: str | None = None,
        timings: Timings | tuple[float, float, float, float, float] | None = None,
        submitted_at: float | None = None,
        finished_at: float | None = None,
        attempts: int = 0,
        fingerprint: str | None = None,
        url: str | None = None,
    ) -> None:
        self.key = key
        self.state = state
        self.status = status
        self._raw_head = raw_head
        self._head: tuple[str, str, Headers] | None = None
        self.body = body
        self.error_kind = error_kind
        self.error = error
        t = timings if timings is not None else (_NAN, _NAN, _NAN, _NAN, _NAN)
        self._times = _TIMES.pack(
            _NAN if submitted_at is None else submitted_at,
            _NAN if finished_at is None else finished_at,
            *t,
        )
        self.attempts = attempts
        self.fingerprint = fingerprint
        #: The URL of the final response (after redirects), or the last one tried.
        self.url = url

    @classmethod
    def _restored(
        cls,
        key: str,
        state: State,
        status: int | None,
        raw_head: bytes,
        body: bytes,
        error_kind: ErrorKind | None,
        error: str | None,
        packed_times: bytes,
        attempts: int,
        fingerprint: str | None,
        url: str | None,
    ) -> Result:
        """A Result as a store keeps it, every field given (its times packed already): made
        without `__init__`'s defaults, for readers that decode tens of thousands a second."""
        result = cls.__new__(cls)
        result.key = key
        result.state = state
        result.status = status
        result._raw_head = raw_head
        result._head = None
        result.body = body
        result.error_kind = error_kind
        result.error = error
        result._times = packed_times
        result.attempts = attempts
        result.fingerprint = fingerprint
        result.url = url
        return result

    def cache_size(self) -> int:
        """Approximate bytes this result holds in a memory cache (for the cache's byte bound)."""
        return len(self.body) + len(self._raw_head) + 300

    @property
    def packed_times(self) -> bytes:
        """Submission and finish times and the timings, packed (36 bytes; for stores)."""
        return self._times

    @packed_times.setter
    def packed_times(self, value: bytes) -> None:
        if len(value) != _TIMES.size:
            raise ValueError(f"packed times are {_TIMES.size} bytes, not {len(value)}")
        self._times = value

    @property
    def submitted_at(self) -> float | None:
        """When the request was accepted (epoch seconds)."""
        return _opt(_TIMES.unpack(self._times)[0])

    @property
    def finished_at(self) -> float | None:
        """When the result was written (epoch seconds); None while not terminal."""
        return _opt(_TIMES.unpack(self._times)[1])

    @property
    def timings(self) -> Timings | None:
        """libcurl's timings (ms, float32 precision), when a transfer was attempted."""
        values = _TIMES.unpack(self._times)[2:]
        if math.isnan(values[0]):
            return None
        return Timings(*(round(v, 3) for v in values))

    # The header block is kept as raw bytes and parsed on first use: most results are stored
    # and never looked at, and a list of tuples costs several times the bytes it holds.
    def _parsed_head(self) -> tuple[str, str, Headers]:
        if self._head is None:
            version, _, reason, pairs = parse_response_head(
                self._raw_head.splitlines(keepends=True)
            )
            self._head = (version, reason, Headers(pairs))
        return self._head

    @property
    def ok(self) -> bool:
        """True if a response arrived with a 2xx status."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def reason(self) -> str:
        """The reason phrase of the status line ('' for HTTP/2 and for non-responses)."""
        return self._parsed_head()[1] if self._raw_head else ""

    @property
    def http_version(self) -> str:
        """'1.1', '2', ... ('' when there was no response)."""
        return self._parsed_head()[0] if self._raw_head else ""

    @property
    def headers(self) -> Headers:
        """Response headers: case-insensitive, duplicates kept in order (empty: no response)."""
        return self._parsed_head()[2] if self._raw_head else _NO_HEADERS

    @property
    def raw_head(self) -> bytes:
        """The final response's status line and header lines, as received."""
        return self._raw_head

    @property
    def charset(self) -> str:
        """The charset named in Content-Type, else 'utf-8'."""
        m = _CHARSET_RE.search(self.headers.get("content-type") or "")
        if m is not None:
            try:
                info = codecs.lookup(m.group(1))
            except LookupError:
                return "utf-8"
            # The server names the charset: only a text encoding may decode (not idna,
            # punycode, base64 or "undefined", which raise or are not text at all).
            if getattr(info, "_is_text_encoding", True) and info.name not in _NOT_TEXT:
                return m.group(1).lower()
        return "utf-8"

    @property
    def text(self) -> str:
        """The body decoded with `charset`; undecodable bytes become U+FFFD.

        Raises:
            RequestFailed: the request failed (the message names why).
            NoResponse: there is no response yet (pending, running) or any more (unknown,
                expired).
        """
        self._check_response()
        try:
            return self.body.decode(self.charset, "replace")
        except UnicodeError:  # a codec that fails whatever the error handler
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            RequestFailed, NoResponse: as for `text`.
            ValueError: the body is not valid JSON (RFC 8259: no NaN or Infinity; nested too
                deeply to parse included).
        """
        self._check_response()
        return load_json(self.body)

    def raise_for_status(self) -> Result:
        """Return this Result if a response arrived with a status below 400; raise otherwise.

        Raises:
            HTTPStatusError: a 4xx or 5xx response (the message has the status and URL).
            RequestFailed, NoResponse: as for `text`.
        """
        self._check_response()
        assert self.status is not None
        if self.status >= 400:
            kind = "client error" if self.status < 500 else "server error"
            reason = f" {self.reason}" if self.reason else ""
            # The URL without user info or query: these messages end up in applications' logs.
            where = redacted(self.url) if self.url else self.key
            raise HTTPStatusError(f"{kind} {self.status}{reason} for {where}", self)
        return self

    def _check_response(self) -> None:
        if self.state is State.DONE:
            return
        if self.state is State.FAILED:
            kind = self.error_kind.value if self.error_kind is not None else "failed"
            raise RequestFailed(f"{kind}: {self.error}", self)
        raise NoResponse(f"key {self.key} is {self.describe()}", self)

    def describe(self) -> str:
        """Where this result is, in a few words: ``done: 200 OK``, ``failed: dns: ...``."""
        if self.state is State.DONE:
            return f"done: {self.status} {self.reason}".rstrip()
        if self.state is State.FAILED:
            kind = self.error_kind.value if self.error_kind is not None else "failed"
            return f"failed: {kind}: {self.error}"
        return f"{self.state.value}: {self.error or 'no response yet; wait for it first'}"

    @property
    def elapsed_ms(self) -> float | None:
        """Time from submission to the end, in milliseconds (None while not terminal)."""
        submitted: float
        finished: float
        submitted, finished = _TIMES.unpack(self._times)[:2]
        if math.isnan(finished) or math.isnan(submitted):
            return None
        return (finished - submitted) * 1000.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the body is text when it is valid UTF-8, else base64 (`body_b64`)."""
        out: dict[str, Any] = {"key": self.key, "state": self.state.value}
        if self.state is State.DONE:
            out["status"] = self.status
            out["reason"] = self.reason
            out["http_version"] = self.http_version
            out["headers"] = [list(pair) for pair in self.headers.items()]
            try:
                out["body"] = self.body.decode("utf-8")
            except UnicodeDecodeError:
                out["body_b64"] = base64.b64encode(self.body).decode("ascii")
        if self.state is State.FAILED:
            out["error_kind"] = self.error_kind.value if self.error_kind else None
            out["error"] = self.error
        elif self.error:
            out["error"] = self.error  # why an unknown or expired key has nothing
        if self.timings is not None:
            out["timings"] = self.timings._asdict()
        if self.url is not None:
            out["url"] = self.url
        out["submitted_at"] = self.submitted_at
        out["finished_at"] = self.finished_at
        out["elapsed_ms"] = self.elapsed_ms
        out["attempts"] = self.attempts
        return out

    def __repr__(self) -> str:
        parts = [f"<Result key={self.key} state={self.state.value}"]
        if self.status is not None:
            parts.append(f" status={self.status}")
        if self.error_kind is not None:
            parts.append(f" error={self.error_kind.value}")
        if self.elapsed_ms is not None:
            parts.append(f" elapsed_ms={self.elapsed_ms:.0f}")
        return "".join(parts) + ">"
