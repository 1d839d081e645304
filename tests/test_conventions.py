"""What httpx / requests users reach for: reading a failed result, raise_for_status, headers as a
case-insensitive multi-map, the final URL, json= / data= / params=, methods in any case, unknown
arguments named, awaitable submits in AsyncClient, and request-level logging."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import postkey
from postkey import AsyncClient, Client, Headers, Result, State

DEAD = "http://127.0.0.1:9/"  # nothing listens on the discard port


# -- reading a result that holds no response --------------------------------------------------


def test_reading_a_failed_result_raises_request_failed_naming_the_cause(client: Client) -> None:
    result = client.wait(client.post_async(DEAD, "x", timeout_ms=5000), 10)
    assert result.state is State.FAILED and result.error_kind == "connect"
    for read in (lambda: result.text, result.json, result.raise_for_status):
        with pytest.raises(postkey.RequestFailed, match=r"^connect: ") as info:
            read()
        assert info.value.result is result
        assert isinstance(info.value, postkey.NoResponse)
        assert not isinstance(info.value, ValueError)  # never mistaken for bad JSON
    assert result.body == b""  # the raw attribute stays readable


def test_an_unknown_key_says_where_keys_live(client: Client) -> None:
    result = client.get("never-issued-here")
    assert result.state is State.UNKNOWN
    assert "process that issued them" in (result.error or "")
    assert result.to_dict()["error"] == result.error
    with pytest.raises(postkey.NoResponse, match="never-issued-here is unknown"):
        result.json()


def test_a_pending_result_has_no_body_to_read(client: Client, hostile: str) -> None:
    result = client.get(client.get_async(hostile + "/hold", timeout_ms=5000))
    assert result.state in (State.PENDING, State.RUNNING)
    with pytest.raises(postkey.NoResponse, match="no response yet") as info:
        _ = result.text
    assert not isinstance(info.value, postkey.RequestFailed)


# -- raise_for_status ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "says"), [(404, "client error 404 Not Found"), (503, "server error 503")]
)
def test_raise_for_status_raises_for_4xx_and_5xx(
    client: Client, echo: str, code: int, says: str
) -> None:
    url = f"{echo}/status/{code}"
    result = client.wait(client.get_async(url, timeout_ms=5000), 10)
    with pytest.raises(postkey.HTTPStatusError, match=says) as info:
        result.raise_for_status()
    assert url in str(info.value) and info.value.result is result
    assert not result.ok


@pytest.mark.parametrize("code", [200, 204, 302])
def test_raise_for_status_returns_the_result_below_400(
    client: Client, echo: str, code: int
) -> None:
    result = client.wait(client.get_async(f"{echo}/status/{code}", timeout_ms=5000), 10)
    assert result.raise_for_status() is result
    assert result.ok is (code < 300)


# -- headers ---------------------------------------------------------------------------------


def test_headers_are_case_insensitive_and_keep_duplicates_in_order() -> None:
    raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Type: text/plain\r\nSet-Cookie: b=2"
    headers = Result("k", State.DONE, status=200, raw_head=raw).headers
    assert isinstance(headers, Headers)
    assert headers["content-type"] == headers["CONTENT-TYPE"] == "text/plain"
    assert headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert headers["Set-Cookie"] == "a=1, b=2"  # joined, as httpx does
    assert headers.items() == [
        ("Set-Cookie", "a=1"),
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "b=2"),
    ]
    assert headers.keys() == ["set-cookie", "content-type"] == list(headers)
    assert len(headers) == 2 and "SET-COOKIE" in headers and "x" not in headers
    assert headers.get("x") is None and headers.get("x", "d") == "d"
    assert headers.get_list("x") == []
    with pytest.raises(KeyError):
        headers["x"]
    assert dict(zip(headers.keys(), headers.values(), strict=True)) == {
        "set-cookie": "a=1, b=2",
        "content-type": "text/plain",
    }
    assert headers == [("set-cookie", "a=1"), ("content-type", "text/plain"), ("SET-COOKIE", "b=2")]
    assert headers != [("Set-Cookie", "b=2"), ("Content-Type", "text/plain"), ("Set-Cookie", "a=1")]
    assert headers == {"Set-Cookie": "a=1, b=2", "content-type": "text/plain"}
    for other in ([1, 2], [("a",)], "a"):
        assert headers != other


def test_a_result_without_a_response_has_empty_headers(client: Client) -> None:
    result = client.wait(client.get_async(DEAD, timeout_ms=5000), 10)
    assert not result.headers and result.headers.items() == [] and len(result.headers) == 0


def test_url_is_the_final_url_after_redirects(client: Client, echo: str) -> None:
    first = echo + "/redirect/2"
    followed = client.wait(client.get_async(first, timeout_ms=5000, follow_redirects=True), 10)
    assert followed.status == 200 and followed.url == echo + "/anything"
    assert followed.to_dict()["url"] == followed.url
    not_followed = client.wait(client.get_async(first, timeout_ms=5000), 10)
    assert not_followed.status == 302 and not_followed.url == first
    failed = client.wait(client.get_async(DEAD, timeout_ms=5000), 10)
    assert failed.url == DEAD  # the URL that was tried
    assert client.get(failed.key).url == DEAD  # kept in the store


# -- json= / data= / params= -----------------------------------------------------------------


def test_json_is_sent_compact_with_a_content_type(client: Client, echo: str) -> None:
    key = client.post_async(echo + "/post", json={"event": "signup", "n": [1, 2], "é": None})
    echoed = client.wait(key, 10).json()
    assert echoed["json"] == {"event": "signup", "n": [1, 2], "é": None}
    assert echoed["data"] == '{"event":"signup","n":[1,2],"é":null}'
    assert echoed["headers"]["Content-Type"] == "application/json"


def test_a_content_type_given_is_kept(client: Client, echo: str) -> None:
    key = client.post_async(
        echo + "/post", headers={"content-type": "application/vnd.api+json"}, json=[1]
    )
    echoed = client.wait(key, 10).json()
    sent = {k.lower(): v for k, v in echoed["headers"].items()}
    assert sent["content-type"] == "application/vnd.api+json"
    assert echoed["json"] == [1]


def test_data_sends_a_form(client: Client, echo: str) -> None:
    key = client.post_async(echo + "/post", data={"a": "x y", "b": ["1", 2], "c": True})
    echoed = client.wait(key, 10).json()
    assert echoed["data"] == "a=x+y&b=1&b=2&c=true"
    assert echoed["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("path", "params", "query"),
    [
        ("/get", {"q": "a b&c", "n": 3}, "q=a+b%26c&n=3"),
        ("/get?x=1", [("q", "é"), ("q", "2")], "x=1&q=%C3%A9&q=2"),
        ("/get", {}, ""),
    ],
)
def test_params_are_encoded_into_the_query(
    client: Client, echo: str, path: str, params: object, query: str
) -> None:
    key = client.get_async(echo + path, params=params)
    result = client.wait(key, 10)
    assert result.url == echo + "/get" + ("?" + query if query else "")


def test_params_keep_a_fragment_at_the_end() -> None:
    from postkey._encoders import add_params

    assert add_params("http://h/p#frag", {"a": "1"}) == "http://h/p?a=1#frag"
    assert add_params("http://h/p?", {"a": "1"}) == "http://h/p?a=1"


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"json": {"a": 1}, "body": "x"}, postkey.InvalidBody, "one of body=, json= and data="),
        ({"json": [1], "data": {"a": 1}}, postkey.InvalidBody, "one of body="),
        ({"json": {1, 2}}, postkey.InvalidBody, "cannot be encoded as JSON"),
        ({"json": float("nan")}, postkey.InvalidBody, "cannot be encoded as JSON"),
        ({"data": "a=1"}, postkey.InvalidBody, "use body= for raw"),
        ({"data": {"a": object()}}, postkey.InvalidBody, "values must be str"),
        ({"params": "a=1"}, postkey.InvalidURL, "params= must be a dict"),
        ({"params": {"a": {"b": 1}}}, postkey.InvalidURL, "values must be str"),
        ({"params": [("a",)]}, postkey.InvalidURL, "pairs"),
        ({"http_version": "3"}, postkey.InvalidRequest, "http_version must be"),
        ({"client_cert": "/nonexistent.pem"}, postkey.InvalidRequest, "not a readable file"),
        ({"client_key": "/etc/hostname"}, postkey.InvalidRequest, "without client_cert"),
        ({"on_done": "print"}, postkey.InvalidRequest, "on_done must be callable"),
        ({"follow_redirects": "no"}, postkey.InvalidRequest, "follow_redirects must be"),
    ],
)
def test_bad_shorthands_are_refused_before_a_key(
    client: Client, options: dict[str, object], error: type[Exception], says: str
) -> None:
    body = options.pop("body", None)
    with pytest.raises(error, match=says):
        client.request_async("POST", DEAD, body, **options)  # type: ignore[arg-type]
    assert client.cache_count() == 0


# -- unknown arguments -----------------------------------------------------------------------


def test_unknown_arguments_are_named_in_postkeys_words(client: Client) -> None:
    calls = [
        lambda: client.post_async(DEAD, jsno={}),
        lambda: client.get_async(DEAD, jsno={}),
        lambda: client.request_async("GET", DEAD, jsno={}),
        lambda: postkey.post_async(DEAD, jsno={}),
        lambda: client.submit_many([{"url": DEAD, "jsno": {}}]),
    ]
    for call in calls:
        with pytest.raises(postkey.UnknownArgument, match=r"'jsno' \(did you mean 'json'\?\)") as e:
            call()
        assert isinstance(e.value, TypeError) and isinstance(e.value, postkey.InvalidRequest)
        assert "_ClientCore" not in str(e.value)
    assert client.cache_count() == 0


# -- methods in any case ---------------------------------------------------------------------


def test_methods_in_any_case_are_sent_in_upper_case(client: Client, echo: str) -> None:
    keys = [
        client.request_async("post", echo + "/anything", "x"),
        client.request_async("Patch", echo + "/anything", "x"),
        client.request_async("options", echo + "/anything"),
        *client.submit_many([{"method": "delete", "url": echo + "/anything"}]),
    ]
    methods = [r.json()["method"] for r in client.wait_many(keys, 10)]
    assert methods == ["POST", "PATCH", "OPTIONS", "DELETE"]
    mychat_key = client.request_async("put", echo, key_format="mychat")
    assert mychat_key.startswith("httpput_async{")


# -- AsyncClient: submits are coroutines -----------------------------------------------------


def test_async_submits_are_awaitable(echo: str) -> None:
    async def main() -> list[Result]:
        async with AsyncClient() as client:
            keys = [
                await client.post_async(echo + "/post", json={"i": 1}),
                await client.get_async(echo + "/get", params={"q": "1"}),
                await client.request_async("put", echo + "/anything", "x"),
                *await client.submit_many([{"url": echo + "/get"}, {"url": echo + "/get"}]),
            ]
            return await client.wait_many(keys, 10)

    results = asyncio.run(main())
    assert [r.status for r in results] == [200] * 5
    assert results[0].json()["json"] == {"i": 1}


def test_an_async_submit_waits_for_room_without_blocking_the_loop(hostile: str) -> None:
    # One transfer at a time and one queued: a third submit finds no room until the first
    # (held 300 ms by the server) ends. It must wait without stopping the loop.
    settings = {"max_in_flight": 1, "max_per_host": 1, "max_queue": 1, "queue_wait_ms": 5000}

    async def main() -> tuple[int, list[Result]]:
        async with AsyncClient(**settings) as client:
            first = await client.get_async(hostile + "/hold", timeout_ms=5000)
            await asyncio.sleep(0.05)  # the engine has it on the wire
            second = await client.get_async(hostile + "/hold", timeout_ms=5000)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            third = await client.get_async(hostile + "/hold", timeout_ms=5000)
            ticks_while_waiting = ticks
            task.cancel()
            return ticks_while_waiting, await client.wait_many([first, second, third], 10)

    ticks, results = asyncio.run(main())
    assert [r.status for r in results] == [200, 200, 200]
    assert ticks >= 5  # the loop ran while the submit waited for room (~250 ms)


def test_an_async_submit_without_queue_wait_is_refused_at_once(hostile: str) -> None:
    async def main() -> None:
        async with AsyncClient(max_in_flight=1, max_per_host=1, max_queue=1) as client:
            await client.get_async(hostile + "/hold", timeout_ms=5000)
            await asyncio.sleep(0.05)
            await client.get_async(hostile + "/hold", timeout_ms=5000)
            started = time.monotonic()
            with pytest.raises(postkey.QueueFull):
                await client.get_async(hostile + "/hold", timeout_ms=5000)
            assert time.monotonic() - started < 0.2

    asyncio.run(main())


# -- logging ---------------------------------------------------------------------------------


def test_debug_logs_each_request_without_bodies_or_credentials(
    echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = echo.replace("http://", "http://alice:s3cret@") + "/post?token=t0ken"
    with caplog.at_level(logging.DEBUG, logger="postkey"), Client() as client:
        key = client.post_async(url, "body-secret", {"Authorization": "Bearer hdr-secret"})
        client.wait(key, 10)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("postkey")]
    mine = [line for line in lines if key in line]
    assert [line.split()[0] for line in mine] == ["submit", "start", "end"]
    assert "POST" in mine[0] and "/post?…" in mine[0]
    assert "done: 200 OK" in mine[2] and " ms" in mine[2]
    for secret in ("s3cret", "alice", "t0ken", "body-secret", "hdr-secret"):
        assert not any(secret in line for line in lines)


def test_nothing_is_logged_at_info(echo: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="postkey"), Client() as client:
        client.wait(client.get_async(echo, timeout_ms=5000), 10)
    assert not [r for r in caplog.records if r.name.startswith("postkey")]
