"""Bad input gets a clear error, before a key is issued, and nothing is sent."""

from __future__ import annotations

import math

import pytest

import postkey
from postkey import Client, InvalidBody, InvalidHeader, InvalidMethod, InvalidTimeout, InvalidURL

BAD_URLS = [
    ("", "empty"),
    ("ftp://example.com/", "scheme 'ftp'"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://127.0.0.1:70/", "scheme 'gopher'"),
    ("//example.com/x", "no scheme"),
    ("/relative/path", "no scheme"),
    ("example.com", "no scheme"),
    ("http://", "no host"),
    ("http:///path", "no host"),
    ("http://exa mple.com/", "' '"),
    ("http://example.com/a b", "' '"),
    ("http://example.com/\r\nX-Injected: 1", "'\\r'"),
    ("http://example.com/\n", "'\\n'"),
    ("http://example.com/\x00", "'\\x00'"),
    ("http://example.com\\@evil.com/", "'\\\\'"),
    ("http://exämple.com/", "non-ASCII"),
    ("http://example.com:99999/", "Port out of range"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:abc/", "malformed URL"),
    ("http://[::1/", "malformed URL"),
    ("http://[zz::1]/", "IPv6"),
    ("http://exa%mple.com/", "malformed host"),
    ("http://" + "a" * 9000 + ".com/", "maximum is 8192"),
]


@pytest.mark.parametrize(("url", "says"), BAD_URLS)
def test_bad_urls_are_refused_with_a_reason(client: Client, url: str, says: str) -> None:
    with pytest.raises(InvalidURL, match=None) as info:
        client.post_async(url, "x")
    assert says.lower() in str(info.value).lower()
    assert client.cache_count() == 0


def test_url_must_be_a_string(client: Client) -> None:
    with pytest.raises(InvalidURL, match="must be a str"):
        client.post_async(b"http://example.com/", "x")  # type: ignore[arg-type]


BAD_HEADERS = [
    ("X-A: 1\r\nbroken line", "no colon"),
    ("X-A: 1\r\n continued", "folded"),
    ("X A: 1", "RFC 9110 token"),
    (": value", "RFC 9110 token"),
    ("X-A: a\rb", "'\\r'"),
    ("X-A: a\x00b", "'\\x00'"),
    ("X-A: a\x07b", "'\\x07'"),
    ("X-A: \u0100", "U+00FF"),
    ("Host: evil.com", "set by the transport"),
    ("Content-Length: 5", "set by the transport"),
    ("Transfer-Encoding: chunked", "set by the transport"),
    ("Connection: close", "set by the transport"),
    ({"X-A": "a\r\nX-B: b"}, "'\\r'"),
    ({"X-A\r\n": "b"}, "RFC 9110 token"),
    ([("X-A", "1", "extra")], "pairs"),
    ([("X-A", 1)], "must be str"),
    (b"X-A: 1", "not bytes"),
    ("\r\n".join(f"X-{i}: v" for i in range(101)), "maximum is 100"),
    ("X-Big: " + "v" * 40000, "maximum is 32768"),
]


@pytest.mark.parametrize(("headers", "says"), BAD_HEADERS)
def test_bad_headers_are_refused_with_a_reason(client: Client, headers: object, says: str) -> None:
    with pytest.raises(InvalidHeader) as info:
        client.post_async("http://127.0.0.1:9/", "x", headers)  # type: ignore[arg-type]
    assert says.lower() in str(info.value).lower()


BAD_TIMEOUTS = [0, -1, True, False, 1.5, math.nan, math.inf, -math.inf, "1000", None, 3_600_001]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS[:-2] + BAD_TIMEOUTS[-1:])
def test_bad_timeouts_are_refused(client: Client, timeout: object) -> None:
    with pytest.raises(InvalidTimeout, match="timeout_ms"):
        client.post_async("http://127.0.0.1:9/", "x", None, timeout)  # type: ignore[arg-type]


def test_none_timeout_means_the_default(client: Client) -> None:
    key = client.post_async("http://127.0.0.1:9/", "x", None, None)
    assert client.wait(key, 5).state == "failed"


@pytest.mark.parametrize("method", ["get", "GE T", "", "CONNECT", "TRACE", "X" * 40, 5])
def test_bad_methods_are_refused(client: Client, method: object) -> None:
    with pytest.raises(InvalidMethod):
        client.request_async(method, "http://127.0.0.1:9/")  # type: ignore[arg-type]


def test_bodies_must_be_text_or_bytes_and_within_the_cap() -> None:
    with Client(max_request_bytes=10) as c:
        with pytest.raises(InvalidBody, match="str or bytes"):
            c.post_async("http://127.0.0.1:9/", 42)  # type: ignore[arg-type]
        with pytest.raises(InvalidBody, match="maximum is 10"):
            c.post_async("http://127.0.0.1:9/", "x" * 11)
        with pytest.raises(InvalidBody, match="UTF-8"):
            c.post_async("http://127.0.0.1:9/", "\ud800")


def test_module_level_functions_validate_too() -> None:
    with pytest.raises(postkey.InvalidURL):
        postkey.post_async("gopher://x/", "")
    with pytest.raises(ValueError, match="timeout_ms"):
        postkey.request_async("GET", "http://127.0.0.1:9/", timeout_ms=-5)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(postkey.InvalidValue, match="max_in_flight"):
        postkey.Settings(max_in_flight=0)
    with pytest.raises(postkey.InvalidValue, match="unknown setting"):
        Client(no_such_setting=1)
    with pytest.raises(postkey.InvalidValue, match="bool"):
        postkey.Settings(verify_tls="yes")  # type: ignore[arg-type]


def test_settings_from_environment() -> None:
    s = postkey.Settings.from_env(
        {"POSTKEY_MAX_IN_FLIGHT": "12", "POSTKEY_DECOMPRESS": "true", "POSTKEY_PROXY": ""}
    )
    assert (s.max_in_flight, s.decompress, s.proxy) == (12, True, None)
    with pytest.raises(postkey.InvalidValue, match="POSTKEY_MAX_QUEUE"):
        postkey.Settings.from_env({"POSTKEY_MAX_QUEUE": "many"})
