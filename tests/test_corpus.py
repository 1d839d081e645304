"""A corpus of hostile inputs: every case is refused (an exception before a key is issued) or
bounded (a failed result of the expected kind), and no refused request ever reaches the canary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import postkey
from postkey import Client, PostkeyError
from postkey._policy import DestinationPolicy

from .servers import HostileServer

# -- SSRF address forms: all point at the canary's port on this machine --------------------------

LOOPBACK_FORMS = [
    "127.0.0.1",
    "127.0.0.1.",
    "127.1",
    "127.0.1",
    "127.000.000.001",
    "2130706433",
    "0177.0.0.1",
    "0177.0.0.01",
    "0x7f.0.0.1",
    "0x7f.1",
    "0x7f000001",
    "0x7F.0x0.0x0.0x1",
    "017700000001",
    "127.255.255.254",
    "0",
    "0.0.0.0",
    "localhost",
    "localhost.",
    "LOCALHOST",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::]",
    "[::127.0.0.1]",
    "user@127.0.0.1",
    "user:pass@127.0.0.1",
    "public.example@127.0.0.1",
]
NON_PUBLIC_LITERALS = [
    "169.254.169.254",
    "169.254.170.2",
    "100.100.100.200",
    "192.0.0.192",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "[fe80::1]",
    "[fc00::1]",
    "[fd00:ec2::254]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:a9fe:a9fe::]",
    "[::ffff:169.254.169.254]",
    "[2001:db8::1]",
    "[ff02::1]",
    "[100::1]",
]
MALFORMED_HOSTS = [
    "%31%32%37.0.0.1",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # full-width digits
    "127.0.0.1%00",
    "127.0.0.1\\@evil",
    "exa mple.com",
    "[::1",
    "[fe80::1%25eth0",
    "a..b",
]
# Authorities that urllib.parse (the guard's view) and libcurl could read as different hosts;
# {port} is the canary's. Each is refused on submit.
PARSER_CONFUSION = [
    "u@127.0.0.1:{port}@good.test",
    "good.test@127.0.0.1:{port}@good.test",
    "u%40x@127.0.0.1@good.test:{port}",
    "@127.0.0.1:{port}",
    "u:p:q@127.0.0.1:{port}",
    "u<x>@127.0.0.1:{port}",
    "[::1%25lo]:{port}",
    "[::ffff:127.0.0.1%25eth0]:{port}",
    "[::1]good.test:{port}",
    "[::1]%2e:{port}",
    "[v1.127.0.0.1]:{port}",
    "[127.0.0.1]:{port}",
    "[localhost]:{port}",
    "127.0.0.1%2e:{port}",
    "%6c%6f%63%61%6c%68%6f%73%74:{port}",
    "127.0.0.1%2f.good.test:{port}",
    "127.0.0.1:",
    "127.0.0.1::{port}",
    "::1:{port}",
    "127.0.0.1:{port}#@good.test",
    "127.0.0.1:{port}?@good.test",
    "good.test#@127.0.0.1:{port}",
    "good.test?@127.0.0.1:{port}",
]
SCHEMES = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_x",
    "dict://127.0.0.1:11211/stat",
    "ftp://127.0.0.1/",
    "ldap://127.0.0.1/",
    "data:text/plain,hi",
    "ws://127.0.0.1/",
    "wss://127.0.0.1/",
    "javascript:alert(1)",
    "//127.0.0.1/",
    "/relative",
    "",
    "http:/x",
    "httpx://127.0.0.1/",
    "jar:http://127.0.0.1!/",
]
PORTS = ["0", "65536", "99999", "-1", "abc", "80a", "1 2"]
RAW_CHARS = [" ", "\r", "\n", "\x00", "\t", "\x7f", "\r\nHost: evil"]


@pytest.fixture(scope="module")
def guarded() -> Iterator[Client]:
    c = Client(policy=DestinationPolicy.public_only())
    yield c
    c.close(drain=False)


@pytest.fixture
def canary(hostile_server: HostileServer) -> Iterator[int]:
    hostile_server.reset_counts()
    port = int(hostile_server.url.rsplit(":", 1)[1])
    yield port
    assert hostile_server.connections == 0, "a refused request reached the canary"


@pytest.mark.parametrize("host", LOOPBACK_FORMS + NON_PUBLIC_LITERALS)
def test_non_public_destinations_are_blocked(guarded: Client, canary: int, host: str) -> None:
    result = guarded.wait(guarded.get_async(f"http://{host}:{canary}/", timeout_ms=2000), 5)
    assert result.state == "failed" and result.error_kind == "blocked", result.error


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_malformed_hosts_are_refused(guarded: Client, canary: int, host: str) -> None:
    with pytest.raises(postkey.InvalidURL):
        guarded.get_async(f"http://{host}:{canary}/", timeout_ms=2000)


@pytest.mark.parametrize("authority", PARSER_CONFUSION)
def test_authorities_that_parsers_read_differently_are_refused(
    guarded: Client, canary: int, authority: str
) -> None:
    with pytest.raises(postkey.InvalidURL):
        guarded.get_async(f"http://{authority.format(port=canary)}/", timeout_ms=2000)


@pytest.mark.parametrize("url", SCHEMES)
def test_other_schemes_are_refused(guarded: Client, url: str) -> None:
    with pytest.raises(postkey.InvalidURL):
        guarded.get_async(url, timeout_ms=2000)


@pytest.mark.parametrize("port", PORTS)
def test_malformed_ports_are_refused(guarded: Client, port: str) -> None:
    with pytest.raises(postkey.InvalidURL):
        guarded.get_async(f"http://127.0.0.1:{port}/", timeout_ms=2000)


@pytest.mark.parametrize("char", RAW_CHARS)
@pytest.mark.parametrize("where", ["host", "path", "query"])
def test_raw_control_and_space_characters_in_urls_are_refused(
    guarded: Client, char: str, where: str
) -> None:
    url = {
        "host": f"http://exa{char}mple.com/",
        "path": f"http://example.com/a{char}b",
        "query": f"http://example.com/?q={char}",
    }[where]
    with pytest.raises(postkey.InvalidURL):
        guarded.get_async(url, timeout_ms=2000)


INJECTIONS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("header value CRLF", {"headers": {"X-A": "v\r\nHost: evil"}}, postkey.InvalidHeader),
    ("header value LF", {"headers": {"X-A": "v\nX-B: w"}}, postkey.InvalidHeader),
    ("header value CR", {"headers": {"X-A": "v\rX-B: w"}}, postkey.InvalidHeader),
    ("header value NUL", {"headers": {"X-A": "v\x00"}}, postkey.InvalidHeader),
    ("header name CRLF", {"headers": {"X-A\r\nHost": "evil"}}, postkey.InvalidHeader),
    ("header name space", {"headers": {"X A": "v"}}, postkey.InvalidHeader),
    ("header name colon", {"headers": [("X:A", "v")]}, postkey.InvalidHeader),
    ("header string fold", {"headers": "X-A: v\r\n Host: evil"}, postkey.InvalidHeader),
    ("header string no colon", {"headers": "X-A v"}, postkey.InvalidHeader),
    ("smuggled content-length", {"headers": "Content-Length: 0"}, postkey.InvalidHeader),
    (
        "smuggled transfer-encoding",
        {"headers": "Transfer-Encoding: chunked"},
        postkey.InvalidHeader,
    ),
    ("host override", {"headers": "Host: internal"}, postkey.InvalidHeader),
    ("proxy credentials", {"headers": "Proxy-Authorization: Basic eA=="}, postkey.InvalidHeader),
    ("method CRLF", {"method": "GET\r\nX: y"}, postkey.InvalidMethod),
    ("method space", {"method": "GET /x HTTP/1.1"}, postkey.InvalidMethod),
    ("method non-ascii", {"method": "PÖST"}, postkey.InvalidMethod),
    ("method ligature", {"method": "\ufb00"}, postkey.InvalidMethod),
    ("method CONNECT", {"method": "CONNECT"}, postkey.InvalidMethod),
    ("key CRLF", {"key": "k\r\nx"}, postkey.InvalidKey),
    ("key slash", {"key": "../../etc"}, postkey.InvalidKey),
    ("key too long", {"key": "k" * 300}, postkey.InvalidKey),
    ("timeout 0", {"timeout_ms": 0}, postkey.InvalidTimeout),
    ("timeout negative", {"timeout_ms": -1}, postkey.InvalidTimeout),
    ("timeout huge", {"timeout_ms": 2**64}, postkey.InvalidTimeout),
    ("timeout nan", {"timeout_ms": float("nan")}, postkey.InvalidTimeout),
    ("timeout inf", {"timeout_ms": float("inf")}, postkey.InvalidTimeout),
    ("timeout bool", {"timeout_ms": True}, postkey.InvalidTimeout),
    ("timeout str", {"timeout_ms": "1000"}, postkey.InvalidTimeout),
    ("timeout float", {"timeout_ms": 1000.0}, postkey.InvalidTimeout),
    ("oversized URL", {"url": "http://example.com/" + "a" * 9000}, postkey.InvalidURL),
    ("too many headers", {"headers": {f"X-{i}": "v" for i in range(150)}}, postkey.InvalidHeader),
    ("oversized header", {"headers": {"X-Big": "v" * 40000}}, postkey.InvalidHeader),
    ("oversized body", {"body": b"x" * (16 * 1024 * 1024 + 1)}, postkey.InvalidBody),
    ("body of the wrong type", {"body": {"a": 1}}, postkey.InvalidBody),
]


@pytest.mark.parametrize(("name", "change", "error"), INJECTIONS, ids=[c[0] for c in INJECTIONS])
def test_injection_and_absurd_values_are_refused(
    guarded: Client, name: str, change: dict[str, Any], error: type[Exception]
) -> None:
    args: dict[str, Any] = {"method": "POST", "url": "http://example.com/", "timeout_ms": 2000}
    args.update(change)
    before = guarded.cache_count()
    with pytest.raises(error):
        guarded.request_async(
            args.pop("method"),
            args.pop("url"),
            args.pop("body", None),
            args.pop("headers", None),
            args.pop("timeout_ms"),
            **args,
        )
    assert guarded.cache_count() == before


# -- hostile servers: each bounded, with its error kind -------------------------------------------

HOSTILE: list[tuple[str, str, bytes | None, str]] = [
    ("/silent", "GET", None, "timeout"),
    ("/drip", "GET", None, "timeout"),
    ("/drip800", "GET", None, "timeout"),
    ("/slow-reader", "POST", b"x" * (8 << 20), "timeout"),
    ("TLS", "GET", None, "timeout"),
    ("/reset", "GET", None, "network"),
    ("/forever", "GET", None, "too_large"),
    ("/huge-chunked", "GET", None, "too_large"),
    ("/huge", "GET", None, "too_large"),
    ("/gzip-bomb", "GET", None, "too_large"),
    ("/br-bomb", "GET", None, "too_large"),
    ("/stacked", "GET", None, "protocol"),
    ("/bad-status", "GET", None, "protocol"),
    ("/status-2000", "GET", None, "protocol"),
    ("/status-700", "GET", None, "protocol"),
    ("/continue-flood", "GET", None, "too_large"),
    ("/huge-header", "GET", None, "too_large"),
    ("/many-headers", "GET", None, "too_large"),
]


@pytest.fixture(scope="module")
def bounded() -> Iterator[Client]:
    c = Client(max_response_bytes=1 << 20, decompress=True)
    yield c
    c.close(drain=False)


@pytest.mark.parametrize(("path", "method", "body", "kind"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_servers_are_bounded(
    bounded: Client, hostile: str, path: str, method: str, body: bytes | None, kind: str
) -> None:
    url = hostile.replace("http:", "https:") + "/" if path == "TLS" else hostile + path
    started = time.monotonic()
    result = bounded.wait(bounded.request_async(method, url, body, None, 1500), 10)
    assert result.state == "failed" and result.error_kind == kind, result.error
    assert time.monotonic() - started < 1.5 + 0.5


# -- property-based: nothing crashes, leaks a key, or reaches a refused address -----------------

HOST_PARTS = st.sampled_from(
    LOOPBACK_FORMS
    + NON_PUBLIC_LITERALS
    + [a.split(":{port}")[0] for a in PARSER_CONFUSION]
    + ["rebind.test", "x.test"]
)
PATHS = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=20)
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x17F), max_size=60)


@pytest.fixture(scope="module")
def everything_is_loopback() -> Iterator[Client]:
    # Every name resolves to loopback: a name can never be a way around the guard.
    c = Client(policy=DestinationPolicy.public_only(), resolver=lambda host: ["127.0.0.1", "::1"])
    yield c
    c.close(drain=False)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    host=HOST_PARTS,
    path=PATHS,
    headers=HEADER_TEXT,
    scheme=st.sampled_from(["http", "https", "HTTP"]),
)
def test_fuzzed_requests_never_crash_leak_or_connect(
    everything_is_loopback: Client,
    hostile_server: HostileServer,
    host: str,
    path: str,
    headers: str,
    scheme: str,
) -> None:
    before = hostile_server.connections
    port = int(hostile_server.url.rsplit(":", 1)[1])
    client = everything_is_loopback
    try:
        key = client.post_async(f"{scheme}://{host}:{port}/{path}", "x", headers, 2000)
    except PostkeyError as exc:
        assert isinstance(exc, ValueError)  # refused input: a clear ValueError, no key
        return
    result = client.wait(key, 5)
    assert result.state == "failed" and result.error_kind == "blocked", result
    assert hostile_server.connections == before
