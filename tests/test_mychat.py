"""The MyChat facade: the seed example ported, key format, MemCache and JSON semantics."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

import postkey
from postkey import Client, mychat
from postkey._keys import parse_mychat_key
from postkey.mychat import (
    CRLF,
    CreateGUIDString,
    HTTPSendGetMessageAsync,
    HTTPSendMessageAsync,
    HTTPSendPostMessageAsync,
    JSONGetBoolean,
    JSONGetInteger,
    JSONGetString,
    JSONSetBoolean,
    JSONSetInteger,
    JSONSetString,
    JSONValid,
    MemCacheDelete,
    MemCacheExists,
    MemCacheGet,
    MemCacheSet,
    ScriptSleep,
    Var,
    mLogScript,
    run_script,
)

ROOT = Path(__file__).resolve().parents[1]
LINE = r"\[\d\d:\d\d:\d\d\] \((Log|Run) \"PostMessageAsync\"\): "


def test_the_seed_example_runs_line_for_line() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed_post_async.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5, lines
    assert re.fullmatch(
        LINE + r"\[Key\] httppost_async\{[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}"
        r"-[0-9a-f]{12}\}\d{17}",
        lines[0],
    )
    assert re.fullmatch(LINE + r"\[Result\] \{.*\"data\": .*\}", lines[1])
    assert re.fullmatch(
        LINE + r'\[HTTP POST ASYNC\] POST body accepted: \{"request_id":"\{[0-9A-F-]{36}\}",'
        r'"event":"user_login"\}',
        lines[2],
    )
    assert re.fullmatch(LINE + r"Script operation time: \d+ ms", lines[3])
    assert re.fullmatch(LINE + r"Script done successfully\.", lines[4])
    assert '"Content-Length": "76"' in lines[1]  # the same body, byte for byte, as the seed's


def test_key_is_the_mychat_form_with_local_submission_time(echo: str) -> None:
    before = datetime.now()
    key = HTTPSendPostMessageAsync(echo, "{}", "", 3000)
    parsed = parse_mychat_key(key)
    assert parsed is not None
    prefix, guid, when = parsed
    assert prefix == "httppost_async" and guid.version == 4
    assert str(guid) in key  # lower case
    assert abs((when - before).total_seconds()) < 2
    assert postkey.wait(key, 5).status == 200


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("HTTPSendGetMessageAsync", "httpget_async"),
        ("HTTPSendHeadMessageAsync", "httphead_async"),
        ("HTTPSendOptionsMessageAsync", "httpoptions_async"),
        ("HTTPSendPutMessageAsync", "httpput_async"),
        ("HTTPSendPatchMessageAsync", "httppatch_async"),
        ("HTTPSendDeleteMessageAsync", "httpdelete_async"),
    ],
)
def test_siblings_use_their_own_prefix(echo: str, name: str, prefix: str) -> None:
    fn = getattr(mychat, name)
    takes_body = "ABody" in inspect.signature(fn).parameters
    key = fn(echo, "x", "", 3000) if takes_body else fn(echo, "", 3000)
    assert key.startswith(prefix + "{")
    assert postkey.wait(key, 5).status == 200


def test_memcache_get_semantics(echo: str) -> None:
    slow = HTTPSendGetMessageAsync(echo + "/delay/1000", "", 3000)
    assert MemCacheGet(slow) == ""  # not there yet: empty, like a missing key
    ok = HTTPSendPostMessageAsync(echo + "/status/500", "body", "", 3000)
    failed = HTTPSendGetMessageAsync("http://127.0.0.1:9/", "", 3000)
    postkey.wait(ok, 5)
    postkey.wait(failed, 5)
    assert MemCacheExists(ok) and MemCacheExists(failed)
    assert '"data": "body"' in MemCacheGet(ok)  # a 5xx response still gives its body
    assert MemCacheGet(failed) == "ERROR: connect"
    assert not JSONValid(MemCacheGet(failed))
    assert MemCacheGet("never-issued") == "" and not MemCacheExists("never-issued")


def test_memcache_set_get_delete() -> None:
    MemCacheSet("mychat-k", "v1")
    assert MemCacheExists("mychat-k") and MemCacheGet("mychat-k") == "v1"
    MemCacheSet("mychat-k", "v2", 100)
    assert MemCacheGet("mychat-k") == "v2"
    time.sleep(0.15)
    assert not MemCacheExists("mychat-k")
    MemCacheSet("mychat-k", "v3")
    assert MemCacheDelete("mychat-k") and not MemCacheDelete("mychat-k")


def test_bad_input_raises_like_the_python_api() -> None:
    with pytest.raises(postkey.InvalidURL):
        HTTPSendPostMessageAsync("ftp://x/", "", "", 3000)
    with pytest.raises(postkey.InvalidHeader, match="no colon"):
        HTTPSendPostMessageAsync("http://127.0.0.1:9/", "", "Content-Type application/json", 3000)
    with pytest.raises(postkey.InvalidTimeout):
        HTTPSendPostMessageAsync("http://127.0.0.1:9/", "", "", 0)
    with pytest.raises(postkey.InvalidMethod):
        HTTPSendMessageAsync("GE T", "http://127.0.0.1:9/", "", "", 1000)


def test_guid_and_crlf() -> None:
    guid = CreateGUIDString()
    assert re.fullmatch(
        r"\{[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}\}", guid
    )
    assert CreateGUIDString() != guid
    assert CRLF == "\r\n"


def test_json_functions() -> None:
    body = Var("{}")
    JSONSetString(body, "event", "user_login")
    JSONSetString(body, "request_id", "{ID}")
    assert body.value == '{"request_id":"{ID}","event":"user_login"}'  # new names go first
    assert JSONSetString(body, "event", "logout") == '{"request_id":"{ID}","event":"logout"}'
    text = JSONSetInteger(JSONSetBoolean("{}", "ok", True), "n", 5)
    out = Var()
    assert JSONGetString(body, "event", out) == 0 and out.value == "logout"
    assert JSONGetInteger(text, "n", out) == 0 and out.value == 5
    assert JSONGetBoolean(text, "ok", out) == 0 and out.value is True
    assert JSONGetInteger(text, "ok", out) == mychat.JSON_WRONG_TYPE
    assert JSONGetString(text, "missing", out) == mychat.JSON_NOT_FOUND
    assert JSONGetString("[1]", "x", out) == mychat.JSON_INVALID
    assert JSONGetString("{not json", "x", out) == mychat.JSON_INVALID
    assert JSONValid('{"a": 1}') and JSONValid("5") and JSONValid('"s"') and JSONValid("[]")
    assert (
        not JSONValid("NaN")
        and not JSONValid("{")
        and not JSONValid("")
        and not JSONValid("ERROR: x")
        and not JSONValid("\ufeff{}")
        and not JSONValid(None)  # type: ignore[arg-type]  # a script's unset variable
        and not JSONValid(5)  # type: ignore[arg-type]
    )
    with pytest.raises(postkey.InvalidValue):
        JSONSetString("[1]", "a", "b")
    with pytest.raises(postkey.InvalidValue):
        JSONSetInteger("{}", "a", True)


def test_run_script_logs_like_mychat(capsys: pytest.CaptureFixture[str]) -> None:
    def script() -> None:
        mLogScript("hello", "Tag")
        ScriptSleep(20)

    assert run_script(script, "Demo")
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r'\[\d\d:\d\d:\d\d\] \(Log "Demo"\): \[Tag\] hello', lines[0])
    assert re.fullmatch(
        r'\[\d\d:\d\d:\d\d\] \(Run "Demo"\): Script operation time: \d+ ms', lines[1]
    )
    assert int(lines[1].split(": ")[-1].split()[0]) >= 20
    assert lines[2].endswith('(Run "Demo"): Script done successfully.')

    def broken() -> None:
        raise RuntimeError("oops")

    assert not run_script(broken, "Broken")
    assert "Script error: RuntimeError: oops" in capsys.readouterr().out


def test_run_script_can_use_its_own_client(echo: str) -> None:
    with Client() as own:
        keys: list[str] = []
        run_script(lambda: keys.append(HTTPSendPostMessageAsync(echo, "", "", 3000)), "X", own)
        assert own.wait(keys[0], 5).status == 200
        assert postkey.status(keys[0]) == "unknown"  # not on the default client


def test_script_sleep_takes_whole_milliseconds_only() -> None:
    for bad in (None, "5", 1.5, True, 10**20):
        with pytest.raises(postkey.InvalidValue, match="ScriptSleep"):
            ScriptSleep(bad)  # type: ignore[arg-type]
    started = time.monotonic()
    ScriptSleep(-5)  # no pause, as MyChat does for a time already past
    ScriptSleep(0)
    assert time.monotonic() - started < 0.5


def test_a_var_passes_its_value_as_it_is_not_as_its_repr(echo: str) -> None:
    # A Var holding bytes sent "b'{...}'" (its str()), and Var(None) was stored as "None".
    key = mychat.HTTPSendPostMessageAsync(
        echo + "/post", mychat.Var(b'{"a": 1}'), "Content-Type: application/json", 3000
    )
    assert postkey.wait(key, 5).json()["data"] == '{"a": 1}'
    with pytest.raises(postkey.InvalidValue):
        mychat.MemCacheSet("var-none", mychat.Var(None))
    assert not mychat.MemCacheExists("var-none")
    with pytest.raises(postkey.InvalidURL, match="NoneType"):
        mychat.HTTPSendPostMessageAsync(mychat.Var(None), "", "", 3000)
    with pytest.raises(postkey.InvalidValue, match="JSON text"):
        mychat.JSONSetString(mychat.Var(5), "a", "b")


def test_bad_by_reference_and_ttl_arguments_are_clear_errors() -> None:
    with pytest.raises(postkey.InvalidValue, match="AValue must be a Var"):
        mychat.JSONGetString('{"a": "b"}', "a", None)  # type: ignore[arg-type]
    with pytest.raises(postkey.InvalidValue, match="ATimeToLive"):
        mychat.MemCacheSet("ttl-bool", "v", False)
    with pytest.raises(postkey.InvalidValue, match="ATimeToLive"):
        mychat.MemCacheSet("ttl-bool", "v", -5)
    assert not mychat.MemCacheExists("ttl-bool")
