"""MyChat Server scripting names, spelled as in MyChat, translated onto postkey's default client.

Ported scripts keep their lines. Where MyChat passes an argument by reference (``var``), pass a
`Var` and read ``.value`` afterwards; every function also accepts a `Var` where it reads text.
"""

# MyChat's function and argument names are CamelCase; keeping them exact is the point of this
# module, so pep8-naming is silenced here and only here.
# ruff: noqa: N802, N803

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ._api import default_client
from ._client import Client
from ._encoders import load_json
from ._errors import InvalidValue, unknown_argument
from ._result import Result, State
from ._waits import MAX_WAIT_S

__all__ = [
    "CRLF",
    "CreateGUIDString",
    "HTTPSendDeleteMessageAsync",
    "HTTPSendGetMessageAsync",
    "HTTPSendHeadMessageAsync",
    "HTTPSendMessageAsync",
    "HTTPSendOptionsMessageAsync",
    "HTTPSendPatchMessageAsync",
    "HTTPSendPostMessageAsync",
    "HTTPSendPutMessageAsync",
    "JSONGetBoolean",
    "JSONGetInteger",
    "JSONGetString",
    "JSONSetBoolean",
    "JSONSetInteger",
    "JSONSetString",
    "JSONValid",
    "JSON_INVALID",
    "JSON_NOT_FOUND",
    "JSON_OK",
    "JSON_WRONG_TYPE",
    "MemCacheDelete",
    "MemCacheExists",
    "MemCacheGet",
    "MemCacheSet",
    "ScriptSleep",
    "Var",
    "error_text",
    "mLogScript",
    "run_script",
]

CRLF = "\r\n"

#: JSONGet* return codes (MyChat documents only 0 = success; the others are postkey's).
JSON_OK = 0
JSON_INVALID = 1  # the text is not valid JSON, or not a JSON object
JSON_NOT_FOUND = 2  # the object has no such name
JSON_WRONG_TYPE = 3  # the value is there but of another type

_client_var: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "postkey_mychat_client", default=None
)
_script_name: contextvars.ContextVar[str] = contextvars.ContextVar(
    "postkey_mychat_script", default="Script"
)


class Var:
    """A by-reference argument: MyChat's ``var`` parameters write into ``.value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any = "") -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"Var({self.value!r})"


def _text(value: str | Var) -> Any:
    """A `Var`'s value as it is (never its str(): bytes would go out as "b'...'" and None as
    "None"); the checks it then meets say what is wrong with it."""
    return value.value if isinstance(value, Var) else value


def _client() -> Client:
    return _client_var.get() or default_client()


# -- asynchronous HTTP ---------------------------------------------------------------------------


def HTTPSendMessageAsync(
    AMethod: str, AURL: str | Var, ABody: str | Var, AHeaders: str | Var, ATimeOut: int
) -> str:
    """Send any method; return a key ``http<method>_async{<guid>}<DDMMYYYYHHMMSSmmm>`` at once.

    With a shared store (``POSTKEY_STORE``) the key is visible to every process when this
    returns, as a MyChat script expects of a key it may hand on at once.

    Raises:
        InvalidRequest: a bad URL, header line, method or timeout (no key is issued).
        StoreUnavailable: a shared store did not take the key.
    """
    client = _client()
    key = client.request_async(
        AMethod,
        _text(AURL),
        _text(ABody),
        _text(AHeaders),
        ATimeOut,
        key_format="mychat",
    )
    client.flush()
    return key


def HTTPSendPostMessageAsync(
    AURL: str | Var, ABody: str | Var, AHeaders: str | Var, ATimeOut: int
) -> str:
    """POST ``ABody`` to ``AURL``; return the key ``httppost_async{...}...`` at once."""
    return HTTPSendMessageAsync("POST", AURL, ABody, AHeaders, ATimeOut)


def HTTPSendPutMessageAsync(
    AURL: str | Var, ABody: str | Var, AHeaders: str | Var, ATimeOut: int
) -> str:
    """PUT; key prefix ``httpput_async``."""
    return HTTPSendMessageAsync("PUT", AURL, ABody, AHeaders, ATimeOut)


def HTTPSendPatchMessageAsync(
    AURL: str | Var, ABody: str | Var, AHeaders: str | Var, ATimeOut: int
) -> str:
    """PATCH; key prefix ``httppatch_async``."""
    return HTTPSendMessageAsync("PATCH", AURL, ABody, AHeaders, ATimeOut)


def HTTPSendDeleteMessageAsync(
    AURL: str | Var, ABody: str | Var, AHeaders: str | Var, ATimeOut: int
) -> str:
    """DELETE (the body may be empty); key prefix ``httpdelete_async``."""
    return HTTPSendMessageAsync("DELETE", AURL, ABody, AHeaders, ATimeOut)


def HTTPSendGetMessageAsync(AURL: str | Var, AHeaders: str | Var, ATimeOut: int) -> str:
    """GET; key prefix ``httpget_async``."""
    return HTTPSendMessageAsync("GET", AURL, "", AHeaders, ATimeOut)


def HTTPSendHeadMessageAsync(AURL: str | Var, AHeaders: str | Var, ATimeOut: int) -> str:
    """HEAD; key prefix ``httphead_async``; MemCacheGet gives '' (a HEAD response has no body)."""
    return HTTPSendMessageAsync("HEAD", AURL, "", AHeaders, ATimeOut)


def HTTPSendOptionsMessageAsync(AURL: str | Var, AHeaders: str | Var, ATimeOut: int) -> str:
    """OPTIONS; key prefix ``httpoptions_async``."""
    return HTTPSendMessageAsync("OPTIONS", AURL, "", AHeaders, ATimeOut)


# -- MemCache ------------------------------------------------------------------------------------


def error_text(result: Result) -> str:
    """The fixed text MemCacheGet gives for a failed request: ``ERROR: <kind>``, e.g.
    ``ERROR: timeout`` (not JSON, so JSONValid is false)."""
    kind = result.error_kind.value if result.error_kind is not None else "internal"
    return f"ERROR: {kind}"


def MemCacheExists(AKey: str | Var) -> bool:
    """True once a value is there: a finished request (done or failed) or a MemCacheSet value."""
    return _client().cache_exists(_text(AKey))


def MemCacheGet(AKey: str | Var) -> str:
    """The value as text: a response's body (whatever its status, 4xx / 5xx included), the fixed
    `error_text` for a failed request, a stored value, or '' if there is nothing (yet)."""
    value = _client().cache_get(_text(AKey))
    if value is None:
        return ""
    if isinstance(value, Result):
        return value.text if value.state is State.DONE else error_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def MemCacheSet(AKey: str | Var, AValue: str | Var, ATimeToLive: int = 0) -> None:
    """Store text under a key for ``ATimeToLive`` ms (0: the default result TTL).

    Raises:
        InvalidKey, InvalidValue, KeyConflict: see `Client.cache_set`.
    """
    if type(ATimeToLive) is not int or ATimeToLive < 0:
        raise InvalidValue(
            f"ATimeToLive must be an int of milliseconds (0: the default), not {ATimeToLive!r}"
        )
    _client().cache_set(_text(AKey), _text(AValue), ATimeToLive or None)


def MemCacheDelete(AKey: str | Var) -> bool:
    """Remove a key; True if it held a value."""
    return _client().cache_delete(_text(AKey))


# -- helpers -------------------------------------------------------------------------------------


def CreateGUIDString() -> str:
    """A new random GUID in Delphi's text form: upper case, in braces (as in the seed's output)."""
    return "{" + str(uuid.uuid4()).upper() + "}"


def _load(text: str | Var) -> Any:
    return load_json(_text(text))


def JSONValid(AJSON: str | Var) -> bool:
    """True if the text is valid JSON (RFC 8259: any value, scalars included; NaN is not)."""
    try:
        _load(AJSON)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _json_get(AJSON: str | Var, AName: str, AValue: Var, kind: type) -> int:
    if not isinstance(AValue, Var):
        raise InvalidValue(
            "AValue must be a Var (MyChat's var parameter) to receive the value, not"
            f" {type(AValue).__name__}"
        )
    try:
        data = _load(AJSON)
    except (ValueError, TypeError, RecursionError):
        return JSON_INVALID
    if not isinstance(data, dict):
        return JSON_INVALID
    if AName not in data:
        return JSON_NOT_FOUND
    value = data[AName]
    if type(value) is not kind:  # bool is an int subclass; JSON keeps them apart
        return JSON_WRONG_TYPE
    AValue.value = value
    return JSON_OK


def _json_set(AJSON: str | Var, AName: str, AValue: object) -> str:
    text = _text(AJSON)
    if not isinstance(text, str):
        raise InvalidValue(f"AJSON must be JSON text (a str), not {type(text).__name__}")
    try:
        data = load_json(text) if text.strip() else {}
    except (ValueError, RecursionError):
        raise InvalidValue(f"not valid JSON: {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise InvalidValue("JSONSet* needs a JSON object")
    if AName in data:
        data[AName] = AValue
    else:
        # As the seed's output shows ('event' set first, 'request_id' printed first), MyChat
        # puts a new name before the existing ones.
        data = {AName: AValue, **data}
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if isinstance(AJSON, Var):
        AJSON.value = text
    return text


def JSONGetString(AJSON: str | Var, AName: str, AValue: Var) -> int:
    """Read a string field into ``AValue.value``; 0 on success, else a JSON_* code."""
    return _json_get(AJSON, AName, AValue, str)


def JSONGetInteger(AJSON: str | Var, AName: str, AValue: Var) -> int:
    """Read an integer field into ``AValue.value``; 0 on success, else a JSON_* code."""
    return _json_get(AJSON, AName, AValue, int)


def JSONGetBoolean(AJSON: str | Var, AName: str, AValue: Var) -> int:
    """Read a boolean field into ``AValue.value``; 0 on success, else a JSON_* code."""
    return _json_get(AJSON, AName, AValue, bool)


def JSONSetString(AJSON: str | Var, AName: str, AValue: str | Var) -> str:
    """Set a string field. A `Var` is updated in place; the new JSON text is also returned.

    Raises:
        InvalidValue: the text is not a JSON object.
    """
    return _json_set(AJSON, AName, _text(AValue))


def JSONSetInteger(AJSON: str | Var, AName: str, AValue: int) -> str:
    """Set an integer field (see `JSONSetString`)."""
    if type(AValue) is not int:
        raise InvalidValue(f"JSONSetInteger needs an int, not {type(AValue).__name__}")
    return _json_set(AJSON, AName, AValue)


def JSONSetBoolean(AJSON: str | Var, AName: str, AValue: bool) -> str:
    """Set a boolean field (see `JSONSetString`)."""
    if not isinstance(AValue, bool):
        raise InvalidValue(f"JSONSetBoolean needs a bool, not {type(AValue).__name__}")
    return _json_set(AJSON, AName, AValue)


# -- script runtime ------------------------------------------------------------------------------


def _emit(kind: str, text: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    sys.stdout.write(f'[{stamp}] ({kind} "{_script_name.get()}"): {text}\n')
    sys.stdout.flush()


def mLogScript(AText: str | Var, ATag: str = "") -> None:
    """Log a line as MyChat does: ``[19:28:24] (Log "Name"): [Tag] text`` (on stdout)."""
    _emit("Log", f"[{ATag}] {_text(AText)}" if ATag else _text(AText))


def ScriptSleep(AMilliseconds: int) -> None:
    """Pause the calling script (only it: requests keep running). A negative time does not
    pause.

    Raises:
        InvalidValue: not a whole number of milliseconds up to 31 days.
    """
    if isinstance(AMilliseconds, bool) or not isinstance(AMilliseconds, int):
        raise InvalidValue(
            f"ScriptSleep takes whole milliseconds, not {type(AMilliseconds).__name__}"
        )
    if AMilliseconds > MAX_WAIT_S * 1000:
        raise InvalidValue(f"ScriptSleep takes at most {MAX_WAIT_S * 1000} ms (31 days)")
    time.sleep(max(AMilliseconds, 0) / 1000.0)


def run_script(
    script: Callable[[], Any], name: str = "Script", client: Client | None = None
) -> bool:
    """Run ``script()`` as MyChat runs a script: its mLogScript lines carry ``name``, and it ends
    with ``Script operation time: N ms`` and ``Script done successfully.`` (or the error).

    Returns True on success. ``client`` replaces the default client inside the script.
    """
    name_token = _script_name.set(name)
    client_token = _client_var.set(client)
    started = time.monotonic()
    try:
        script()
    except Exception as exc:
        _emit("Run", f"Script operation time: {_elapsed_ms(started)} ms")
        _emit("Run", f"Script error: {type(exc).__name__}: {exc}")
        return False
    else:
        _emit("Run", f"Script operation time: {_elapsed_ms(started)} ms")
        _emit("Run", "Script done successfully.")
        return True
    finally:
        _client_var.reset(client_token)
        _script_name.reset(name_token)


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _keywords_checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, raising UnknownArgument (with the closest real name) for a keyword it does not
    take, like the rest of postkey, instead of Python's bare TypeError."""
    names = tuple(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for name in kwargs:
            if name not in names:
                raise unknown_argument(fn.__name__, name, names)
        return fn(*args, **kwargs)

    return checked


for _name in __all__:
    _fn = globals()[_name]
    if inspect.isfunction(_fn):
        globals()[_name] = _keywords_checked(_fn)
