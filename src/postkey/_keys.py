"""Keys: unguessable default keys, the MyChat key form, and validation of caller-supplied keys."""

from __future__ import annotations

import os
import re
import threading
import uuid
from datetime import datetime

from ._errors import InvalidKey

MAX_KEY_LENGTH = 250
# Letters, digits and "_ - . : ~ { }": safe in Redis, in URL paths and in JSON without escaping,
# and wide enough for the MyChat form, which uses braces.
_KEY_RE = re.compile(rf"[A-Za-z0-9_.:~{{}}-]{{1,{MAX_KEY_LENGTH}}}")
_MYCHAT_KEY_RE = re.compile(
    r"(http[a-z]+_async)\{([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\}"
    r"(\d{17})"
)


_POOL_BYTES = 4096  # 256 keys per read of the OS CSPRNG


class _Pool(threading.local):
    """Random bytes read ahead, per thread (no lock), tagged with the fork generation."""

    def __init__(self) -> None:
        self.buf = b""
        self.at = 0
        self.generation = -1


_pool = _Pool()
_generation = 0


def _after_fork_in_child() -> None:
    # A child must never hand out the bytes its parent read ahead: the same keys twice.
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_key() -> str:
    """A fresh default key: 128 random bits from the OS CSPRNG as 32 lower-case hex digits.

    The bytes are read 4 KiB at a time: a system call per key (which also hands the GIL to
    another thread and waits to get it back) cost more than the rest of a submit's key."""
    pool = _pool
    at = pool.at
    if at >= len(pool.buf) or pool.generation != _generation:
        pool.buf, at, pool.generation = os.urandom(_POOL_BYTES), 0, _generation
    pool.at = at + 16
    return pool.buf[at : at + 16].hex()


def mychat_key(method: str, now: datetime | None = None) -> str:
    """Return a key in MyChat's form, e.g. ``httppost_async{<uuid4>}21032026192824156``.

    The prefix is ``http`` + the lower-cased method + ``_async``; the GUID is a lower-case uuid4
    (122 random bits); the 17 digits are the local time of submission as DDMMYYYYHHMMSSmmm.
    """
    t = now if now is not None else datetime.now()
    stamp = f"{t:%d%m%Y%H%M%S}{t.microsecond // 1000:03d}"
    return f"http{method.lower()}_async{{{uuid.uuid4()}}}{stamp}"


def parse_mychat_key(key: str) -> tuple[str, uuid.UUID, datetime] | None:
    """Split a MyChat-form key into (prefix, GUID, local submission time), or None if not one."""
    m = _MYCHAT_KEY_RE.fullmatch(key)
    if m is None:
        return None
    digits = m.group(3)
    try:
        when = datetime.strptime(digits[:14], "%d%m%Y%H%M%S").replace(
            microsecond=int(digits[14:]) * 1000
        )
    except ValueError:
        return None
    return m.group(1), uuid.UUID(m.group(2)), when


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid key.

    Raises:
        InvalidKey: not a str, empty, longer than 250 characters, or outside ``[A-Za-z0-9_.:~{}-]``.
    """
    if type(key) is not str:  # not a subclass either: reads refuse those (see _client._str_key)
        raise InvalidKey(f"key must be a str, not {type(key).__name__}")
    if _KEY_RE.fullmatch(key) is None:
        if not key:
            raise InvalidKey("key must not be empty")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidKey(f"key is {len(key)} characters long; the maximum is {MAX_KEY_LENGTH}")
        bad = next(c for c in key if not _KEY_RE.fullmatch(c))
        raise InvalidKey(f"key contains {bad!r}; allowed are letters, digits and _ - . : ~ {{ }}")
    return key
