"""A submit's JSON (``POST /v1/requests``, its batch form, the MyChat route) turned into a
validated submit for a tenant, or a refusal that says what is wrong. Nothing is sent here."""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any

from .._async_client import AsyncClient
from .._client import _Submit
from .._encoders import load_json
from .._errors import (
    ClientClosed,
    IdempotencyKeysFull,
    InvalidKey,
    KeyConflict,
    PostkeyError,
    QueueFull,
    StoreUnavailable,
)
from .._keys import MAX_KEY_LENGTH, check_key
from ._errors import STORE_DOWN, ApiError
from ._tenants import Tenant

#: The longest key a tenant may use: the store's longest, less the longest namespace.
MAX_KEY = MAX_KEY_LENGTH - 50

#: The fields of a request object, and the JSON types each takes.
FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "url": (str,),
    "headers": (dict, list, str),
    "body": (str,),
    "body_base64": (str,),
    "json": (object,),
    "data": (dict, list),
    "params": (dict, list),
    "timeout_ms": (int,),
    "key": (str,),
    "key_format": (str,),
    "follow_redirects": (bool,),
    "ttl_ms": (int,),
    "delivery": (str,),
    "http_version": (str,),
}
_TYPE_NAMES = {
    str: "a string",
    dict: "an object",
    list: "an array",
    int: "an integer",
    bool: "a boolean",
}
#: What a parsed JSON value was on the wire, for messages.
_JSON_KINDS = {
    str: "a string",
    dict: "an object",
    list: "an array",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), "a value")


#: The most strings and separators (``, : [ {`` outside strings) a JSON body may hold: about its
#: number of values. Parsed, a value costs up to ~250 bytes (``{},`` is 3 bytes on the wire and
#: 72 parsed), so a body of millions of tiny values would take ~25x its size in memory (850 MB
#: for 30 MiB) and seconds of the event loop; under this bound, ~15 MB at most.
MAX_JSON_VALUES = 200_000


def parse_json(raw: bytes) -> Any:
    """The JSON document in ``raw``.

    Raises:
        ApiError: 400 if it is not UTF-8 JSON; 413 if it holds more than `MAX_JSON_VALUES`
            values (checked before parsing).
    """
    if not _values_at_most(raw, MAX_JSON_VALUES):
        raise ApiError(
            413,
            f"the JSON body holds more than {MAX_JSON_VALUES} values and separators; send a large"
            " payload as body or body_base64 (one string), or in several calls",
            "too_large",
        )
    try:
        return load_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        message = (
            f"the body is not UTF-8 (byte {exc.start + 1} cannot start or continue a character)"
        )
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Unexpected UTF-8 BOM"):
            message = "the body starts with a byte order mark (BOM); send JSON without one"
        else:
            message = f"the body is not valid JSON: {exc}"
    except (ValueError, RecursionError) as exc:
        text = str(exc)
        if "integer string conversion" in text:  # Python's own bound on int() of a string
            limit = sys.get_int_max_str_digits()
            text = f"an integer has more than {limit} digits"
        message = f"the body is not valid JSON: {text}"
    raise ApiError(400, message, "invalid_json")


def _values_at_most(raw: bytes, limit: int) -> bool:
    # Every value but the first follows a ',' '[' '{' or ':' outside strings; a string is one
    # value. Counting those bytes everywhere gives an upper bound at C speed; only a body over
    # it is walked string by string (at most ``limit`` steps of a few C calls). Escaped
    # backslashes, then escaped quotes, are taken out first, so that every '"' left opens or
    # closes a string (a backslash outside a string is not JSON: the parser stops there).
    if len(raw) < limit:  # every mark counted below is a byte of its own
        return True
    if sum(raw.count(mark) for mark in b",[{:") + raw.count(b'"') // 2 < limit:
        return True
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_MARKS)
    count = pos = 0
    while True:
        opening = text.find(b'"', pos)
        count += text.count(b",", pos, len(text) if opening < 0 else opening)
        closing = text.find(b'"', opening + 1) if opening >= 0 else -1
        if closing < 0 or count > limit:
            return count <= limit
        count += 1
        pos = closing + 1


# ', [ { :' all as ',' (for one count per stretch between strings)
_MARKS = bytes.maketrans(b"[{:", b",,,")


def key_in(tenant: Tenant, key: str) -> str:
    """The store's name of ``tenant``'s ``key``.

    Raises:
        ApiError: 422 a malformed key, or one longer than `MAX_KEY` (200) characters.
    """
    if isinstance(key, str) and len(key) > MAX_KEY:
        raise ApiError(
            422, f"key is {len(key)} characters long; the maximum is {MAX_KEY}", "invalid_key"
        )
    try:
        check_key(key)
    except InvalidKey as exc:
        raise ApiError(422, str(exc), "invalid_key") from None
    return tenant.namespace + key


def _check_types(item: Mapping[str, Any], where: str) -> None:
    for name, value in item.items():
        kinds = FIELDS.get(name)
        if kinds is None:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ApiError(422, f"{where}unknown field {name!r}{hint}", "unknown_field")
        if value is None or kinds == (object,):
            continue
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            names = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise ApiError(422, f"{where}{name} must be {names}", "invalid_type")


def _check_shapes(item: Mapping[str, Any], where: str) -> None:
    # The client checks these too, but words its refusals for Python callers ("must be str,
    # got str and int"); over HTTP they are said in JSON's terms.
    headers = item.get("headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if not isinstance(value, str):
                raise ApiError(
                    422,
                    f"{where}header {name!r} must be a string, not {_kind(value)}",
                    "invalid_header",
                )
    elif isinstance(headers, list):
        for i, pair in enumerate(headers):
            if (
                isinstance(pair, list)
                and len(pair) == 2
                and not all(isinstance(x, str) for x in pair)
            ):
                kinds = f"{_kind(pair[0])} and {_kind(pair[1])}"
                raise ApiError(
                    422,
                    f"{where}headers[{i}] must be [name, value], two strings, not {kinds}",
                    "invalid_header",
                )
    for field, code in (("data", "invalid_body"), ("params", "invalid_url")):
        fields = item.get(field)
        if isinstance(fields, dict):
            for name, value in fields.items():
                _check_field(value, f"{where}{field} {name!r}", code)
        elif isinstance(fields, list):
            for i, pair in enumerate(fields):
                if not (isinstance(pair, list) and len(pair) == 2):
                    continue  # refused by _pairs
                if not isinstance(pair[0], str):
                    raise ApiError(
                        422,
                        f"{where}{field}[{i}] name must be a string, not {_kind(pair[0])}",
                        code,
                    )
                _check_field(pair[1], f"{where}{field} {pair[0]!r}", code)


def _check_field(value: Any, what: str, code: str) -> None:
    # A form or query field: a string, number or boolean, or an array of them (repeated).
    for one in value if isinstance(value, list) else (value,):
        if isinstance(one, float) and not math.isfinite(one):
            raise ApiError(422, f"{what} is a number out of range", code)
        if not isinstance(one, str | int | float):  # bool is an int
            raise ApiError(
                422,
                f"{what} must be a string, number or boolean (or an array of them),"
                f" not {_kind(one)}",
                code,
            )


#: ``json=``, ``body=`` ...: the client's keyword arguments, named in its messages.
_KEYWORD = re.compile(r"\b(body|json|data|params)=(?=[ ,])")


def _api_words(exc: Exception) -> str:
    """The client's message, with its keyword arguments named as the API's fields."""
    return _KEYWORD.sub(r"\1", str(exc))


def _pairs(value: Any, name: str, where: str) -> Any:
    # JSON has no tuples: a list of [name, value] arrays becomes a list of pairs.
    if isinstance(value, list):
        if not all(isinstance(p, list) and len(p) == 2 for p in value):
            raise ApiError(422, f"{where}{name} as an array must hold [name, value] pairs")
        return [tuple(p) for p in value]
    return value


def _body(spec: dict[str, Any], where: str) -> str | bytes | None:
    body: str | bytes | None = spec.pop("body", None)
    encoded = spec.pop("body_base64", None)
    if encoded is None:
        return body
    if body is not None:
        raise ApiError(422, f"{where}give body or body_base64, not both", "invalid_body")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{where}body_base64 is not valid base64", "invalid_body") from None


def prepare(
    client: AsyncClient,
    tenant: Tenant,
    item: Any,
    where: str = "",
    *,
    key_format: str | None = None,
) -> _Submit:
    """Validate one request object for ``tenant`` (``where`` prefixes messages, e.g. a batch
    index); ``key_format`` forces a key form (the MyChat route).

    Raises:
        ApiError: 422 naming the field and what is wrong with it.
    """
    if not isinstance(item, dict):
        raise ApiError(422, f"{where}a request must be a JSON object", "invalid_type")
    _check_types(item, where)
    _check_shapes(item, where)
    spec = {k: v for k, v in item.items() if v is not None}
    method = spec.pop("method", "GET")
    url = spec.pop("url", None)
    if url is None:
        raise ApiError(422, f"{where}url is required", "invalid_url")
    headers = _pairs(spec.pop("headers", None), "headers", where)
    body = _body(spec, where)
    if "json" in item and item["json"] is None:
        spec["json"] = None
    for name in ("data", "params"):
        if name in spec:
            spec[name] = _pairs(spec[name], name, where)
    key = spec.pop("key", None)
    if key is not None:
        spec["key"] = key_in(tenant, key)[len(tenant.namespace) :]
    if key_format is not None:
        spec["key_format"] = key_format
    timeout_ms = spec.pop("timeout_ms", None)
    try:
        prepared = client._prepare(  # the gateway is one of the client's doors
            "request", method, url, body, headers, timeout_ms, spec
        )
    except PostkeyError as exc:
        raise ApiError(422, f"{where}{_api_words(exc)}", _code_of(exc)) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise ApiError(422, f"{where}{_api_words(exc)}", "invalid") from None
    if prepared.key_format not in ("hex", "mychat"):
        raise ApiError(422, f"{where}key_format must be 'hex' or 'mychat'", "invalid")
    ttl = prepared.ttl_ms
    if ttl is not None and not 1 <= ttl <= client._store.max_ttl_ms:
        raise ApiError(
            422,
            f"{where}ttl_ms must be between 1 and {client._store.max_ttl_ms}",
            "invalid",
        )
    # Built field by field: NamedTuple._replace costs ~10x more, on every submit.
    request, key, key_format, ttl_ms, on_done, delivery, _ = prepared
    return _Submit(request, key, key_format, ttl_ms, on_done, delivery, tenant.namespace)


def _code_of(exc: Exception) -> str:
    # InvalidURL -> invalid_url, KeyConflict -> key_conflict
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", type(exc).__name__).lower()


def refusal_of(exc: PostkeyError, namespace: str) -> ApiError:
    """The HTTP refusal for an error raised by a submit that passed validation (its message
    with the tenant's keys as the tenant knows them)."""
    message = str(exc).replace(namespace, "")
    if isinstance(exc, KeyConflict):
        return ApiError(409, message, "key_conflict")
    if isinstance(exc, IdempotencyKeysFull | QueueFull):
        return ApiError(503, message, "queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, STORE_DOWN, "unavailable", headers={"Retry-After": "1"})
    if isinstance(exc, ClientClosed):
        return ApiError(503, message, "unavailable", headers={"Retry-After": "1"})
    return ApiError(422, message, _code_of(exc))
