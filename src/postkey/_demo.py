"""``postkey demo`` (the main job of ``make run``): the seed's scenario at scale, on postkey's
local test server, through the MyChat names."""

from __future__ import annotations

import time

from . import mychat as mc
from ._client import Client
from ._policy import DestinationPolicy
from ._settings import Settings
from ._stats import Summary
from .testing import LocalServer

SHOWN = 3  # requests whose key and result are logged in full


class ScenarioFailed(Exception):
    """Not every response came back by key with its own request id: the script fails."""


def run_demo(count: int, timeout_ms: int, settings: Settings) -> bool:
    """POST ``count`` JSON bodies asynchronously, read every one back by key; True if all came
    back with their own request id. Otherwise the script ends with ``Script error:`` saying how
    many did, never ``Script done successfully.``"""
    with LocalServer() as server:
        # Whatever POSTKEY_POLICY says, the demo may reach its own local server and nothing else
        # on this machine.
        policy = DestinationPolicy.public_only(allow=(f"127.0.0.1:{server.port}",))
        with Client(settings.replace(policy=policy)) as client:
            return mc.run_script(
                lambda: _scenario(client, server.url + "/post", count, timeout_ms),
                "PostMessageAsync",
                client,
            )


def _scenario(client: Client, url: str, count: int, timeout_ms: int) -> None:
    headers = "Content-Type: application/json" + mc.CRLF + "Accept: application/json"
    started = time.monotonic()
    sent: list[tuple[str, str]] = []
    for i in range(count):
        req_id = mc.CreateGUIDString()
        body = mc.Var("{}")
        mc.JSONSetString(body, "event", "user_login")
        mc.JSONSetString(body, "request_id", req_id)
        key = mc.HTTPSendPostMessageAsync(url, body, headers, timeout_ms)
        if i < SHOWN:
            mc.mLogScript(key, "Key")
        sent.append((key, req_id))
    submit_ms = (time.monotonic() - started) * 1000
    mc.mLogScript(f"{count} requests submitted in {submit_ms:.1f} ms", "HTTP POST ASYNC")

    matched = sum(_read_back(client, key, req_id, i < SHOWN, timeout_ms) for key, req_id in sent)
    elapsed = time.monotonic() - started
    summary = Summary().add_all(client.get(key) for key, _ in sent)
    p = summary.percentiles()
    read_back = f"{matched}/{count} responses read back by key with their own request_id"
    mc.mLogScript(
        f"{read_back}; states {dict(summary.states)}; latency p50 {p['p50']:.1f} ms,"
        f" p99 {p['p99']:.1f} ms; {count / elapsed:,.0f} req/s",
        "Summary",
    )
    if matched != count:
        raise ScenarioFailed(read_back)


def _read_back(client: Client, key: str, req_id: str, shown: bool, timeout_ms: int) -> bool:
    """Read one response by its key, as the seed does; True if it echoes its own request id."""
    # Push-based: woken when the result lands (the seed polls with ScriptSleep instead).
    client.wait(key, timeout_ms / 1000 + 1)
    if not mc.MemCacheExists(key):
        mc.mLogScript(f"no result for {key}", "HTTP POST ASYNC")
        return False
    result_text = mc.MemCacheGet(key)
    data, echoed = mc.Var(), mc.Var()
    if shown:
        mc.mLogScript(result_text, "Result")
    if not mc.JSONValid(result_text):
        mc.mLogScript("Invalid JSON: " + result_text, "HTTP POST ASYNC")
        return False
    if mc.JSONGetString(result_text, "data", data) != 0:
        return False
    if shown:
        mc.mLogScript("POST body accepted: " + data.value, "HTTP POST ASYNC")
    return mc.JSONGetString(data.value, "request_id", echoed) == 0 and echoed.value == req_id
