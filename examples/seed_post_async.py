"""The seed page's example (HTTPSendPostMessageAsync), ported line by line.

Usage: python examples/seed_post_async.py [URL]   (default: postkey.testing's local server)

Two honest changes from the Pascal: `var` arguments are `Var` holders (sData), and sBody is a
`Var` so JSONSetString can update it in place, as MyChat's does.
"""

from __future__ import annotations

import sys

from postkey.mychat import (
    CRLF,
    CreateGUIDString,
    HTTPSendPostMessageAsync,
    JSONGetString,
    JSONSetString,
    JSONValid,
    MemCacheExists,
    MemCacheGet,
    ScriptSleep,
    Var,
    mLogScript,
    run_script,
)
from postkey.testing import LocalServer


def post_message_async(url: str) -> None:
    sData = Var()
    sReqID = CreateGUIDString()
    sBody = Var("{}")
    JSONSetString(sBody, "event", "user_login")
    JSONSetString(sBody, "request_id", sReqID)
    sKey = HTTPSendPostMessageAsync(
        url,
        sBody,
        "Content-Type: application/json" + CRLF + "Accept: application/json",
        3000,
    )
    mLogScript(sKey, "Key")
    # wait for the result to appear in the cache, maximum 3 seconds.
    # example code. Similar loops with ScriptSleep in production is a bad idea.
    for _i in range(1, 31):
        if MemCacheExists(sKey):
            sResult = MemCacheGet(sKey)
            mLogScript(sResult, "Result")
            if JSONValid(sResult):
                if JSONGetString(sResult, "data", sData) == 0:
                    mLogScript("POST body accepted: " + sData.value, "HTTP POST ASYNC")
            else:
                mLogScript("Invalid JSON: " + sResult, "HTTP POST ASYNC")
            break
        ScriptSleep(100)


def main() -> int:
    if len(sys.argv) > 1:
        ok = run_script(lambda: post_message_async(sys.argv[1]), "PostMessageAsync")
        return 0 if ok else 1
    with LocalServer() as server:
        ok = run_script(lambda: post_message_async(server.url + "/post"), "PostMessageAsync")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
