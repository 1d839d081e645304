"""One versioned record format for what a shared store keeps under a key.

A record is ``b"pk" + version + kind`` and a payload:

- ``P`` pending: JSON ``{"owner", "fingerprint", "submitted_at", "state"}`` (the process that
  sends the request, and whether it is pending or running);
- ``R`` a terminal Result: a fixed binary part (`RESULT_HEAD`: state, error kind, status,
  attempts, times and timings, lengths), the error message, fingerprint and URL, the raw
  response head, then the body bytes exactly;
- ``S`` / ``B`` a cache value (str as UTF-8, or bytes), the payload as is;
- ``J`` a queued request (a queue entry's payload): a 4-byte length header, JSON (method, URL,
  headers, timeout, options, TTL, delivery), then the request body bytes exactly.

A queued key's pending record also holds ``queued`` (its shard), ``delivery``, ``timeout_ms``,
``ttl_ms``, ``url`` and ``attempt``; Lua scripts read and rewrite it (cjson), and the scripts
that end a key write ``R`` records themselves (with `kind_code` numbers).

Decoding refuses what it does not know (another version, a truncated record) with `RecordError`
rather than guessing: a newer writer must not be misread by an older reader.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .._result import ErrorKind, Result, State

VERSION = 1
_MAGIC = b"pk" + bytes([VERSION])
_JOB_LENGTH = struct.Struct("<I")  # metadata length of a queued request


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
    owner: str,
    fingerprint: str | None,
    submitted_at: float,
    state: str,
    queued: dict[str, Any] | None = None,
) -> bytes:
    """A pending (or running) key, owned by the process ``owner`` ('' while a queued request
    waits for a worker; ``queued`` then holds its queue fields, see the module docstring)."""
    meta: dict[str, Any] = {
        "owner": owner,
        "fingerprint": fingerprint,
        "submitted_at": submitted_at,
        "state": state,
    }
    if queued is not None:
        meta.update(queued)
    return _MAGIC + b"P" + json.dumps(meta, separators=(",", ":")).encode()


def decode_pending(record: bytes) -> dict[str, Any]:
    """The metadata of a pending record.

    Raises:
        RecordError: not a pending record.
    """
    if kind_of(record) != b"P":
        raise RecordError("not a pending record")
    meta: dict[str, Any] = json.loads(record[4:])
    return meta


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
    error = bytes(view[at : at + n_error]).decode("utf-8", "surrogatepass") if n_error else None
    at += n_error
    fingerprint = bytes(view[at : at + n_fp]).decode() if n_fp else None
    at += n_fp
    url = bytes(view[at : at + n_url]).decode("utf-8", "surrogatepass") if n_url else None
    at += n_url
    result = Result(
        key,
        STATES[state],
        status=None if status < 0 else status,
        raw_head=record[at : at + n_head],
        body=record[at + n_head :],
        error_kind=ERROR_KINDS[kind - 1] if kind else None,
        error=error,
        attempts=attempts,
        fingerprint=fingerprint,
        url=url,
    )
    result.packed_times = times
    return result


def encode_job(meta: dict[str, Any], body: bytes) -> bytes:
    """A queued request: ``meta`` (JSON-able) and the body's exact bytes."""
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join((_MAGIC, b"J", _JOB_LENGTH.pack(len(meta_bytes)), meta_bytes, body))


def decode_job(record: bytes) -> tuple[dict[str, Any], bytes]:
    """The metadata and body of a queued request.

    Raises:
        RecordError: not a queued request, or a truncated one.
    """
    if kind_of(record) != b"J":
        raise RecordError("not a queued request")
    start = 4 + _JOB_LENGTH.size
    if len(record) < start:
        raise RecordError("truncated queued request")
    (meta_len,) = _JOB_LENGTH.unpack_from(record, 4)
    if len(record) < start + meta_len:
        raise RecordError("truncated queued request")
    try:
        meta = json.loads(record[start : start + meta_len])
    except ValueError as exc:
        raise RecordError(f"a queued request with bad metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise RecordError("a queued request with bad metadata")
    return meta, record[start + meta_len :]


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
        return record[4:].decode("utf-8", "surrogatepass")
    if kind == b"B":
        return record[4:]
    raise RecordError("not a value record")
