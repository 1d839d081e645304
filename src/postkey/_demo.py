"""``postkey demo`` (the main job of ``make run``): the seed's scenario at scale, on a local echo
server, through the MyChat names."""

from __future__ import annotations

import time

from . import mychat as mc
from ._client import Client
from ._echo import EchoServer
from ._policy import DestinationPolicy
from ._settings import Settings
from ._stats import Summary

SHOWN = 3  # requests whose key and result are logged in full


def run_demo(count: int, timeout_ms: int) -> bool:
    """POST ``count`` JSON bodies asynchronously, read every one back by key; True if all came
    back with their own request id."""
    with EchoServer() as echo:
        port = int(echo.url.rsplit(":", 1)[1])
        # Whatever POSTKEY_POLICY says, the demo may reach its own echo server and nothing else
        # on this machine.
        policy = DestinationPolicy.public_only(allow=(f"127.0.0.1:{port}",))
        with Client(Settings.from_env().replace(policy=policy)) as client:
            outcome: list[bool] = []
            mc.run_script(
                lambda: outcome.append(_scenario(client, echo.url + "/post", count, timeout_ms)),
                "PostMessageAsync",
                client,
            )
            return bool(outcome and outcome[0])


def _scenario(client: Client, url: str, count: int, timeout_ms: int) -> bool:
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

    matched = 0
    for i, (key, req_id) in enumerate(sent):
        # Push-based: woken when the result lands (the seed polls with ScriptSleep instead).
        client.wait(key, timeout_ms / 1000 + 1)
        if not mc.MemCacheExists(key):
            mc.mLogScript(f"no result for {key}", "HTTP POST ASYNC")
            continue
        result_text = mc.MemCacheGet(key)
        data, echoed = mc.Var(), mc.Var()
        if i < SHOWN:
            mc.mLogScript(result_text, "Result")
        if not mc.JSONValid(result_text):
            mc.mLogScript("Invalid JSON: " + result_text, "HTTP POST ASYNC")
            continue
        if mc.JSONGetString(result_text, "data", data) == 0:
            if i < SHOWN:
                mc.mLogScript("POST body accepted: " + data.value, "HTTP POST ASYNC")
            if mc.JSONGetString(data.value, "request_id", echoed) == 0 and echoed.value == req_id:
                matched += 1
    elapsed = time.monotonic() - started
    summary = Summary().add_all(client.get(key) for key, _ in sent)
    p = summary.percentiles()
    mc.mLogScript(
        f"{matched}/{count} responses read back by key with their own request_id;"
        f" states {dict(summary.states)}; latency p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms;"
        f" {count / elapsed:,.0f} req/s",
        "Summary",
    )
    return matched == count
