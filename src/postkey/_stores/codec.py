"""One versioned record format for what a shared store keeps under a key.

A record is ``b"pk" + version + kind`` and a payload:

- ``P`` pending: JSON ``{"owner", "fingerprint", "submitted_at", "state"}`` (the process that
  sends the request, and whether it is pending or running);
- ``R`` a terminal Result: a fixed binary part (`RESULT_HEAD`: state, error kind, status,
  attempts, times and timings, lengths), the error message, fingerprint and URL, the raw
  response head, then the body bytes exactly;
- ``S`` / ``B`` a cache value (str as UTF-8, or bytes), the payload as is;
- ``J`` a queued request (a queue entry's payload): a fixed binary part (`JOB_HEAD`), method,
  fingerprint, URL, header lines, connection options (JSON), then the body bytes exactly.

A queued key's pending record also holds ``queued`` (its shard), ``delivery``, ``timeout_ms``,
``ttl_ms``, ``url`` and ``attempt``; Lua scripts read and rewrite it (cjson), and the scripts
that end a key write ``R`` records themselves (with `kind_code` numbers).

Decoding refuses what it does not know (another version, a truncated record) with `RecordError`
rather than guessing: a newer writer must not be misread by an older reader.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from .._result import ErrorKind, Result, State

VERSION = 1
_MAGIC = b"pk" + bytes([VERSION])
RECORD_MAGIC = _MAGIC  # how every record begins
_HEX = re.compile(r"[0-9a-f]{1,128}")
_REPLY_ID = re.compile(r"([0-9a-f]{1,128}\+b)?")  # a reply id (or none): nothing to escape


class RecordError(ValueError):
    """A record this version of postkey cannot read."""


def kind_of(record: bytes) -> bytes:
    """The record's kind: b"P", b"R", b"S" or b"B".

    Raises:
        RecordError: not a record of this version.
    """
    if len(record) < 4 or record[:3] != _MAGIC:
        raise RecordError(f"not a postkey v{VERSION} record: {record[:8]!r}")
    return record[3:4]


def encode_pending(
    owner: str, fingerprint: str | None, submitted_at: float, state: str, reply: str = ""
) -> bytes:
    """A pending (or running) key, owned by the process ``owner`` (a queued key's record is
    made by the ENQUEUE script instead, with its queue fields). ``reply``: the id of the
    owner's reply channels, on which a script that ends the key for someone else (a cancel)
    announces it (`redis_queue` ``settle``)."""
    if (
        _HEX.fullmatch(owner)
        and (fingerprint is None or _HEX.fullmatch(fingerprint))
        and _REPLY_ID.fullmatch(reply)
    ):
        # Every submit writes one: formatted directly (owner, fingerprint and reply id are hex
        # digests and a suffix, nothing to escape), several times cheaper than json.dumps.
        fp = "null" if fingerprint is None else f'"{fingerprint}"'
        text = (
            f'{{"owner":"{owner}","fingerprint":{fp},"submitted_at":{submitted_at!r},'
            f'"state":"{state}","reply":"{reply}"}}'
        )
        return _MAGIC + b"P" + text.encode()
    meta = {
        "owner": owner,
        "fingerprint": fingerprint,
        "submitted_at": submitted_at,
        "state": state,
        "reply": reply,
    }
    return _MAGIC + b"P" + json.dumps(meta, separators=(",", ":")).encode()


def pending_record_of(owner: str, reply: str = "") -> Callable[[float], bytes]:
    """`encode_pending` for ``owner``'s pending keys without a fingerprint, the record every
    submit of the shared store writes: its fixed parts made once (a quarter of the cost)."""
    head, found, tail = encode_pending(owner, None, 0.5, "pending", reply).partition(
        b'"submitted_at":0.5,'
    )
    if not found or not _HEX.fullmatch(owner):  # the general form: no fixed parts to reuse
        return lambda submitted_at: encode_pending(owner, None, submitted_at, "pending", reply)
    head += b'"submitted_at":'
    tail = b"," + tail
    return lambda submitted_at: head + repr(submitted_at).encode() + tail


def decode_pending(record: bytes) -> dict[str, Any]:
    """The metadata of a pending record.

    Raises:
        RecordError: not a pending record.
    """
    if kind_of(record) != b"P":
        raise RecordError("not a pending record")
    try:
        meta = json.loads(record[4:])
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested without end
        raise RecordError(f"a pending record that is not JSON: {exc}") from None
    # What the readers use, checked: a record written by something else must not reach them
    # with other types (a Redis is shared; anything may write under the prefix).
    if not isinstance(meta, dict):
        raise RecordError("a pending record that is not a JSON object")
    owner = meta.get("owner")
    if not isinstance(owner, str) or not owner.isprintable():
        raise RecordError("a pending record without an owner")
    if not _is_number(meta.get("submitted_at")):
        raise RecordError("a pending record without a time of submission")
    if not isinstance(meta.get("fingerprint"), str | None) or not isinstance(
        meta.get("state", ""), str
    ):
        raise RecordError("a pending record with a bad fingerprint or state")
    if meta.get("queued") and not (
        _is_number(meta.get("timeout_ms")) and isinstance(meta["timeout_ms"], int)
    ):
        raise RecordError("a queued record without a timeout")
    return meta


def _is_number(value: object) -> bool:
    """An int or a finite float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


# The terminal states and error kinds by number, in a fixed order (append only: the numbers
# are in records). A result's fixed part is one struct, so writing and reading one is a pack and
# an unpack, not a JSON document: workers and waiters handle tens of thousands a second.
STATES: tuple[State, ...] = (State.DONE, State.FAILED)
ERROR_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind.DNS,
    ErrorKind.CONNECT,
    ErrorKind.TLS,
    ErrorKind.TIMEOUT,
    ErrorKind.TOO_LARGE,
    ErrorKind.TOO_MANY_REDIRECTS,
    ErrorKind.NETWORK,
    ErrorKind.PROTOCOL,
    ErrorKind.CANCELLED,
    ErrorKind.BLOCKED,
    ErrorKind.INTERNAL,
    ErrorKind.WORKER_LOST,
    ErrorKind.UNKNOWN_OUTCOME,
    ErrorKind.NOT_QUEUED,
)
_STATE_CODE = {state: i for i, state in enumerate(STATES)}
_KIND_CODE = {kind: i + 1 for i, kind in enumerate(ERROR_KINDS)}  # 0: no error
# state, error kind, status (-1: none), attempts, the Result's packed times (submitted and
# finished at, five timings), then the lengths of error, fingerprint, URL and head.
RESULT_HEAD = struct.Struct("<BBhI36sIHII")


def kind_code(kind: ErrorKind) -> int:
    """An error kind's number in result records (for the Lua scripts that write failures)."""
    return _KIND_CODE[kind]


def encode_result(result: Result) -> bytes:
    """A terminal Result; the body goes in as the exact bytes."""
    error = result.error.encode("utf-8", "surrogatepass") if result.error else b""
    fingerprint = result.fingerprint.encode() if result.fingerprint else b""
    url = result.url.encode("utf-8", "surrogatepass") if result.url else b""
    head = result.raw_head
    kind = result.error_kind
    status = result.status
    fixed = RESULT_HEAD.pack(
        _STATE_CODE[result.state],
        0 if kind is None else _KIND_CODE[kind],
        -1 if status is None else status,
        result.attempts,
        result.packed_times,
        len(error),
        len(fingerprint),
        len(url),
        len(head),
    )
    return b"".join((_MAGIC, b"R", fixed, error, fingerprint, url, head, result.body))


def decode_result(key: str, record: bytes) -> Result:
    """The Result a record holds.

    Raises:
        RecordError: not a result record, or a truncated or malformed one.
    """
    if kind_of(record) != b"R":
        raise RecordError("not a result record")
    start = 4 + RESULT_HEAD.size
    if len(record) < start:
        raise RecordError("truncated result record")
    state, kind, status, attempts, times, n_error, n_fp, n_url, n_head = RESULT_HEAD.unpack_from(
        record, 4
    )
    if len(record) < start + n_error + n_fp + n_url + n_head:
        raise RecordError("truncated result record")
    if state >= len(STATES) or kind > len(ERROR_KINDS):
        raise RecordError(f"a result record of an unknown state or kind ({state}, {kind})")
    view = memoryview(record)
    at = start
    try:
        error = bytes(view[at : at + n_error]).decode("utf-8", "surrogatepass") if n_error else None
        at += n_error
        fingerprint = bytes(view[at : at + n_fp]).decode() if n_fp else None
        at += n_fp
        url = bytes(view[at : at + n_url]).decode("utf-8", "surrogatepass") if n_url else None
        at += n_url
    except UnicodeDecodeError as exc:
        raise RecordError(f"a result record with bad text: {exc}") from None
    return Result._restored(
        key,
        STATES[state],
        None if status < 0 else status,
        record[at : at + n_head],
        record[at + n_head :],
        ERROR_KINDS[kind - 1] if kind else None,
        error,
        times,
        attempts,
        fingerprint,
        url,
    )


class QueuedRequest(NamedTuple):
    """What a queue entry holds: everything a worker needs to send a request."""

    method: str
    url: str
    headers: str  # "Name: value" lines joined by CRLF, validated again by the worker
    body: bytes
    timeout_ms: int
    ttl_ms: int
    follow_redirects: bool
    delivery: str
    fingerprint: str | None
    submitted_at: float
    options: list[Any] | None  # ConnectionOptions fields, or None


_DELIVERIES = ("at_least_once", "at_most_once")
# submitted at, timeout, TTL, follow, delivery, then the lengths of method, fingerprint, URL,
# headers and options (JSON); the body is the rest.
JOB_HEAD = struct.Struct("<dIIBBBHIIH")


def encode_job(job: QueuedRequest) -> bytes:
    """A queued request as one binary record (no JSON: clients queue tens of thousands a
    second)."""
    method = job.method.encode()
    fingerprint = job.fingerprint.encode() if job.fingerprint else b""
    url = job.url.encode()
    headers = job.headers.encode("latin-1")
    options = json.dumps(job.options).encode() if job.options else b""
    fixed = JOB_HEAD.pack(
        job.submitted_at,
        job.timeout_ms,
        job.ttl_ms,
        job.follow_redirects,
        _DELIVERIES.index(job.delivery),
        len(method),
        len(fingerprint),
        len(url),
        len(headers),
        len(options),
    )
    return b"".join((_MAGIC, b"J", fixed, method, fingerprint, url, headers, options, job.body))


def decode_job(record: bytes) -> QueuedRequest:
    """The queued request a record holds.

    Raises:
        RecordError: not a queued request, or a truncated or malformed one.
    """
    if kind_of(record) != b"J":
        raise RecordError("not a queued request")
    start = 4 + JOB_HEAD.size
    if len(record) < start:
        raise RecordError("truncated queued request")
    at, timeout, ttl, follow, delivery, n_method, n_fp, n_url, n_headers, n_options = (
        JOB_HEAD.unpack_from(record, 4)
    )
    end = start + n_method + n_fp + n_url + n_headers + n_options
    if len(record) < end or delivery >= len(_DELIVERIES):
        raise RecordError("truncated or malformed queued request")
    try:
        fields = []
        pos = start
        for n in (n_method, n_fp, n_url, n_headers, n_options):
            fields.append(record[pos : pos + n])
            pos += n
        method, fp, url, headers, options = fields
        return QueuedRequest(
            method.decode(),
            url.decode(),
            headers.decode("latin-1"),
            record[end:],
            timeout,
            ttl,
            bool(follow),
            _DELIVERIES[delivery],
            fp.decode() if fp else None,
            at,
            json.loads(options) if options else None,
        )
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise RecordError(f"a queued request with bad fields: {exc}") from None


def encode_value(value: str | bytes) -> bytes:
    """A cache value, keeping whether it was text or bytes."""
    if isinstance(value, str):
        return _MAGIC + b"S" + value.encode("utf-8", "surrogatepass")
    return _MAGIC + b"B" + value


def decode_value(record: bytes) -> str | bytes:
    """The cache value a record holds.

    Raises:
        RecordError: not a value record.
    """
    kind = kind_of(record)
    if kind == b"S":
        try:
            return record[4:].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise RecordError(f"a text value that is not UTF-8: {exc}") from None
    if kind == b"B":
        return record[4:]
    raise RecordError("not a value record")
