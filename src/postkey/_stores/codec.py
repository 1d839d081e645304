"""One versioned record format for what a shared store keeps under a key.

A record is ``b"pk" + version + kind`` and a payload:

- ``P`` pending: JSON ``{"owner", "fingerprint", "submitted_at", "state"}`` (the process that
  sends the request, and whether it is pending or running);
- ``R`` a terminal Result: a 6-byte length header, JSON metadata (state, status, error, timings,
  times, attempts, fingerprint, URL), the raw response head, then the body bytes exactly;
- ``S`` / ``B`` a cache value (str as UTF-8, or bytes), the payload as is;
- ``J`` a queued request (a queue entry's payload): a 4-byte length header, JSON (method, URL,
  headers, timeout, options, TTL, delivery), then the request body bytes exactly.

A queued key's pending record also holds ``queued`` (its shard), ``delivery``, ``timeout_ms``,
``enqueued_ms`` (Redis time) and ``attempt``; Lua scripts read and rewrite it (cjson), and the
scripts that end a key write ``R`` records themselves, with the metadata fields they know.

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
_LENGTHS = struct.Struct("<HI")  # metadata length, head length
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


def encode_result(result: Result) -> bytes:
    """A terminal Result; the body goes in as the exact bytes."""
    timings = result.timings
    meta = {
        "state": result.state.value,
        "status": result.status,
        "error_kind": result.error_kind.value if result.error_kind is not None else None,
        "error": result.error,
        "timings": list(timings) if timings is not None else None,
        "submitted_at": result.submitted_at,
        "finished_at": result.finished_at,
        "attempts": result.attempts,
        "fingerprint": result.fingerprint,
        "url": result.url,
    }
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    head = result.raw_head
    return b"".join(
        (_MAGIC, b"R", _LENGTHS.pack(len(meta_bytes), len(head)), meta_bytes, head, result.body)
    )


def decode_result(key: str, record: bytes) -> Result:
    """The Result a record holds.

    Raises:
        RecordError: not a result record, or a truncated one.
    """
    if kind_of(record) != b"R":
        raise RecordError("not a result record")
    start = 4 + _LENGTHS.size
    if len(record) < start:
        raise RecordError("truncated result record")
    meta_len, head_len = _LENGTHS.unpack_from(record, 4)
    if len(record) < start + meta_len + head_len:
        raise RecordError("truncated result record")
    meta = json.loads(record[start : start + meta_len])
    head = record[start + meta_len : start + meta_len + head_len]
    body = record[start + meta_len + head_len :]
    # Results a Lua script wrote carry only the fields it knows: the rest read as absent.
    get = meta.get
    try:
        return Result(
            key,
            State(meta["state"]),
            status=get("status"),
            raw_head=head,
            body=body,
            error_kind=ErrorKind(get("error_kind")) if get("error_kind") else None,
            error=get("error"),
            timings=tuple(get("timings")) if get("timings") else None,
            submitted_at=get("submitted_at"),
            finished_at=get("finished_at"),
            attempts=get("attempts") or 0,
            fingerprint=get("fingerprint"),
            url=get("url"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"a result record with bad metadata: {exc}") from None


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
