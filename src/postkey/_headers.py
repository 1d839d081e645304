"""Header parsing: the caller's request headers (validated) and the response header block."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import InvalidHeader
from ._memo import remember

HeaderPairs = tuple[tuple[str, str], ...]
HeadersInput = str | Mapping[str, str] | Iterable[tuple[str, str]] | None

MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 32 * 1024

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 field-value: visible ASCII, SP, HTAB, obs-text (0x80-0xFF); no CR, LF, NUL, controls.
_BAD_VALUE_RE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
# Framing and hop-by-hop headers are the transport's business; a caller who could set them could
# desynchronise a connection that other requests reuse.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-connection",
        # libcurl drops Authorization and Cookie on a cross-origin redirect, but would pass this
        # one on; proxy credentials belong in the proxy URL.
        "proxy-authorization",
    }
)


def parse_headers(headers: Any) -> HeaderPairs:
    """Validate request headers given as a CRLF-joined string, a mapping or (name, value) pairs.

    In the string form, lines are separated by CRLF; a bare LF is accepted as CRLF, empty lines
    are ignored. Values are stripped of surrounding spaces and tabs.

    Raises:
        InvalidHeader: a line without a colon, a folded line, a name that is not an RFC 9110
            token, a value with CR, LF, NUL, another control character or a character above
            U+00FF, a framing header (Host, Content-Length, ...), or too many / too large headers.
    """
    if headers is None:
        return ()
    # The same headers are usually sent again and again: validate each distinct small set once
    # (and hand back the same tuple, which lets the transport skip re-sending it to libcurl).
    # Large blocks are not memoised: a memo of them would keep megabytes alive.
    if isinstance(headers, str):
        memoised = _text_memo.get(headers)
        if memoised is None:
            memoised = _parse_header_text(headers)
            if len(headers) <= _MEMO_MAX_CHARS:
                remember(_text_memo, headers, memoised)
        return memoised
    if type(headers) is dict:
        try:
            items = tuple(headers.items())
            memoised = _items_memo.get(items)
        except TypeError:  # an unhashable value; _check_pairs says what is wrong
            pass
        else:
            if memoised is None:
                memoised = _check_pairs(list(items))
                if sum(len(n) + len(v) for n, v in memoised) <= _MEMO_MAX_CHARS:
                    remember(_items_memo, items, memoised)
            return memoised
    if isinstance(headers, bytes | bytearray):
        raise InvalidHeader("headers must be a str, a mapping or (name, value) pairs, not bytes")
    # Any, not HeadersInput: what the caller gave is checked here, not on entry (the compiled
    # build would raise a bare TypeError for a pair that is not two str).
    pairs: list[tuple[Any, Any]] = []
    try:
        for item in headers.items() if isinstance(headers, Mapping) else headers:
            name, value = item
            pairs.append((name, value))
    except (TypeError, ValueError):
        raise InvalidHeader("headers must be (name, value) pairs of str") from None
    return _check_pairs(pairs)


_MEMO_MAX_CHARS = 2048


_text_memo: dict[str, HeaderPairs] = {}
_items_memo: dict[tuple[tuple[str, str], ...], HeaderPairs] = {}


def _parse_header_text(text: str) -> HeaderPairs:
    pairs: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line[0] in " \t":
            raise InvalidHeader(f"folded header line {line!r}: continuation lines are not allowed")
        name, sep, value = line.partition(":")
        if not sep:
            raise InvalidHeader(f"header line {line!r} has no colon (expected 'Name: value')")
        pairs.append((name, value))
    return _check_pairs(pairs)


def _check_pairs(pairs: list[tuple[Any, Any]]) -> HeaderPairs:
    if len(pairs) > MAX_HEADER_COUNT:
        raise InvalidHeader(f"{len(pairs)} headers; the maximum is {MAX_HEADER_COUNT}")
    out: list[tuple[str, str]] = []
    total = 0
    for name, raw_value in pairs:
        if not isinstance(name, str) or not isinstance(raw_value, str):
            raise InvalidHeader(
                f"header names and values must be str, got {type(name).__name__}"
                f" and {type(raw_value).__name__}"
            )
        if _TOKEN_RE.fullmatch(name) is None:
            raise InvalidHeader(f"invalid header name {name!r}: must be an RFC 9110 token")
        value = raw_value.strip(" \t")
        bad = _BAD_VALUE_RE.search(value)
        if bad is not None:
            raise InvalidHeader(
                f"header {name!r} value contains forbidden character {bad.group()!r}"
                " (CR, LF, NUL, control characters and characters above U+00FF are refused)"
            )
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidHeader(
                f"header {name!r} is set by the transport and cannot be given"
                " (put the host in the URL; the body length is computed)"
            )
        total += len(name) + len(value) + 4
        out.append((name, value))
    if total > MAX_HEADER_BYTES:
        raise InvalidHeader(f"headers take {total} bytes; the maximum is {MAX_HEADER_BYTES}")
    return tuple(out)


def format_header_text(pairs: Iterable[tuple[str, str]]) -> str:
    """Join header pairs into the CRLF form (the inverse of `parse_headers` on a string)."""
    return "".join(f"{name}: {value}\r\n" for name, value in pairs)


def parse_response_head(lines: Iterable[bytes]) -> tuple[str, int, str, list[tuple[str, str]]]:
    """Parse raw response header lines into (http_version, status, reason, headers).

    Only the last response block counts: informational (1xx) and redirect responses before it
    are skipped. Headers keep their order and duplicates; bytes are decoded as Latin-1.
    """
    block: list[str] = []
    status_line = ""
    block_start = True
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            block_start = True  # the blank line that ends a response block
        elif block_start and line.startswith("HTTP/"):
            # Only the first line of a block is a status line: a header named "HTTP/2" (which
            # libcurl passes on) must not start a block and hide the headers before it.
            status_line, block, block_start = line, [], False
        else:
            block.append(line)
            block_start = False
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    headers: list[tuple[str, str]] = []
    for line in block:
        if line[0] in " \t" and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip(" \t")))
    return version[5:], int(code) if code.isdigit() else 0, reason.strip(), headers
