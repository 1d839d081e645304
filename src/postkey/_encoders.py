"""The submit shorthands httpx and requests users reach for: ``json=``, ``data=`` (a form) and
``params=`` (a query string), turned into the body, headers and URL that get validated."""

from __future__ import annotations

import json as jsonlib
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from ._errors import InvalidBody, InvalidRequest, InvalidURL
from ._headers import HeaderPairs, HeadersInput, parse_headers

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
_SCALARS = (str, int, float)


def load_json(text: str | bytes) -> Any:
    """Parse JSON as RFC 8259 has it: NaN and Infinity, which Python's parser accepts, are not.

    Raises:
        ValueError: not JSON (nested too deeply for the parser included).
    """
    # What json.loads does before it decodes, with its errors.
    if not isinstance(text, str):
        if not isinstance(text, bytes | bytearray):
            raise TypeError(
                f"the JSON object must be str, bytes or bytearray, not {type(text).__name__}"
            )
        text = text.decode(jsonlib.detect_encoding(text), "surrogatepass")
    elif text.startswith("\ufeff"):
        raise jsonlib.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # a body from anywhere: "[" * 100_000 is a parse error like any other
        raise ValueError("the JSON is nested too deeply to parse") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


# One encoder and one decoder for all: json.dumps / loads with options build a new one per call
# (a few microseconds of every submit with json=). Neither keeps state between calls.
_ENCODER = jsonlib.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_DECODER = jsonlib.JSONDecoder(parse_constant=_no_constants)


def encode_json(value: object) -> bytes:
    """``value`` as compact UTF-8 JSON.

    Raises:
        InvalidBody: it cannot be written as JSON (NaN and infinity included: JSON has none).
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidBody(f"json= cannot be encoded as JSON: {exc}") from None
    except RecursionError:
        raise InvalidBody("json= is nested too deeply to encode") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidBody(f"json= holds text that is not valid Unicode: {exc.reason}") from None


def encode_form(data: object) -> bytes:
    """A mapping or list of pairs as an ``application/x-www-form-urlencoded`` body.

    Raises:
        InvalidBody: anything else, or values that are not str / int / float / bool (or lists of
            them, sent as repeated fields).
    """
    if isinstance(data, str | bytes | bytearray | memoryview):
        raise InvalidBody("data= takes form fields (a dict or a list of pairs); use body= for raw")
    return _urlencoded(data, "data=", InvalidBody).encode("ascii")


def add_params(url: str, params: object) -> str:
    """``url`` with ``params`` (a mapping or list of pairs) appended to its query string,
    percent-encoded; a fragment stays at the end.

    Raises:
        InvalidURL: ``url`` is not a str, or ``params`` is not a mapping / list of pairs of
            str / int / float / bool values (or lists of them, sent as repeated fields).
    """
    if not isinstance(url, str):
        raise InvalidURL(f"URL must be a str, not {type(url).__name__}")
    query = _urlencoded(params, "params=", InvalidURL)
    if not query:
        return url
    base, hash_, fragment = url.partition("#")
    joiner = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
    return f"{base}{joiner}{query}{hash_}{fragment}"


def with_content_type(headers: HeadersInput, content_type: str) -> HeaderPairs:
    """``headers`` validated, plus ``Content-Type`` unless they name one already.

    Raises:
        InvalidHeader: the headers are malformed.
    """
    pairs = parse_headers(headers)
    if any(name.lower() == "content-type" for name, _ in pairs):
        return pairs
    return (*pairs, ("Content-Type", content_type))


def _urlencoded(fields: object, what: str, error: type[InvalidRequest]) -> str:
    if isinstance(fields, Mapping):
        items = list(fields.items())
    elif isinstance(fields, list | tuple):
        items = list(fields)
    else:
        raise error(f"{what} must be a dict or a list of (name, value) pairs, not {_kind(fields)}")
    flat: list[tuple[str, str]] = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise error(f"{what} items must be (name, value) pairs, not {item!r}")
        name, value = item
        if not isinstance(name, str):
            raise error(f"{what} names must be str, not {_kind(name)}")
        for one in value if isinstance(value, list | tuple) else (value,):
            flat.append((name, _field_text(one, what, error)))
    try:
        return urlencode(flat)
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise error(f"{what} holds text that is not valid Unicode: {exc.reason}") from None


def _field_text(value: Any, what: str, error: type[InvalidRequest]) -> str:
    if isinstance(value, bool):  # before int: True is an int
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{what} values must be finite numbers, not {value!r}")
    if isinstance(value, _SCALARS):
        return str(value)
    raise error(f"{what} values must be str, int, float or bool, not {_kind(value)}")


def _kind(value: object) -> str:
    return type(value).__name__
