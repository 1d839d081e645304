"""Bad input gets a clear error, before a key is issued, and nothing is sent."""

from __future__ import annotations

import ipaddress
import math
import socket
import socketserver
import threading
from collections.abc import Iterator

import pycurl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import postkey
from postkey import Client, InvalidBody, InvalidHeader, InvalidMethod, InvalidTimeout, InvalidURL
from postkey._request import _check_url_text, check_url
from postkey._urls import target_of


class CurlView:
    """What libcurl makes of a URL: its host and port, read off a real transfer.

    libcurl is pointed at a recording HTTP proxy on 127.0.0.1, so it sends the host and port
    it parsed (the Host header of a proxied GET, the target of a CONNECT) without resolving
    anything.
    """

    def __init__(self) -> None:
        view = self
        self.heads: list[list[str]] = []

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                view.heads.append(data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n"))
                self.request.sendall(
                    b"HTTP/1.1 403 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.proxy = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._curl = pycurl.Curl()

    def close(self) -> None:
        self._curl.close()
        self._server.shutdown()
        self._server.server_close()

    def target(self, url: str) -> tuple[str, int] | None:
        """(host, port) libcurl sent for ``url``, or None if libcurl refused the URL."""
        curl = self._curl
        curl.reset()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.PROXY, self.proxy)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.WRITEFUNCTION, lambda chunk: None)
        curl.setopt(pycurl.TIMEOUT_MS, 3000)
        seen = len(self.heads)
        try:
            curl.perform()
        except pycurl.error:
            pass  # a refused CONNECT (https) is expected; what was sent is recorded
        if len(self.heads) == seen:
            return None
        head = self.heads[-1]
        method, target, _ = head[0].split(" ")
        if method == "CONNECT":
            authority, default = target, 443
        else:
            host_lines = [line for line in head if line.lower().startswith("host:")]
            authority, default = host_lines[0][5:].strip(), 80
        if authority.startswith("["):
            host, _, rest = authority[1:].partition("]")
            port = rest[1:]
        else:
            host, _, port = authority.partition(":")
        return host, int(port) if port else default

    def same_target(self, url: str) -> bool:
        """True if libcurl sent ``url`` to the host and port the guard reads from it."""
        sent = self.target(url)
        ours_host, ours_port = target_of(url)
        if sent is None or sent[1] != ours_port:
            return False
        host = sent[0].lower()
        if host == ours_host:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        try:
            return address == ipaddress.ip_address(ours_host)
        except ValueError:
            pass
        # libcurl writes the numeric IPv4 forms (0x7f.1, 2130706433, 127.0.0.1.) as the dotted
        # quad that inet_aton reads from them; the guard judges that address when connecting.
        try:
            return socket.inet_aton(ours_host.removesuffix(".")) == address.packed
        except OSError:
            return False


@pytest.fixture(scope="module")
def curl_view() -> Iterator[CurlView]:
    view = CurlView()
    yield view
    view.close()


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

# Authorities that urllib.parse and libcurl (or other parsers) could read differently: the guard
# would judge one host while libcurl connects to another.
AMBIGUOUS_AUTHORITIES = [
    ("http://u@127.0.0.1:8080@good.test/", "more than one '@'"),
    ("http://a@b@c/", "more than one '@'"),
    ("http://u%40x@a@b/", "more than one '@'"),
    ("http://@good.test/", "empty user"),
    ("http://u:p:q@good.test/", "more than one ':' in the user info"),
    ("http://u[x]@good.test/", "malformed URL"),
    ("http://u<x>@good.test/", "user info"),
    ("http://u{x}@good.test/", "user info"),
    ("http://good.test:/", "empty port"),
    ("http://[::1]:/", "empty port"),
    ("http://good.test::80/", "malformed URL"),
    ("http://good.test:80:90/", "malformed URL"),
    ("http://::1/", "malformed URL"),
    ("http://[127.0.0.1]/", "malformed URL"),
    ("http://[v1.x]/", "IPv6"),
    ("http://[good.test]/", "IPv6"),
    ("http://[::1%25eth0]/", "zone"),
    ("http://[fe80::1%25lo]:8080/", "zone"),
    ("http://[::1]evil.test/", "after ']'"),
    ("http://[::1]%20/", "after ']'"),
    ("http://%67ood.test/", "percent-encoded"),
    ("http://good%2etest/", "percent-encoded"),
    ("http://127.0.0.1%2f.good.test/", "percent-encoded"),
    ("http://good.test?@127.0.0.1/", "'@' after"),
    ("http://good.test#@127.0.0.1/", "'@' after"),
    ("http://good.test?x=a@b", "'@' after"),
]
BAD_URLS += AMBIGUOUS_AUTHORITIES


@pytest.mark.parametrize(("url", "says"), BAD_URLS)
def test_bad_urls_are_refused_with_a_reason(client: Client, url: str, says: str) -> None:
    with pytest.raises(InvalidURL, match=None) as info:
        client.post_async(url, "x")
    assert says.lower() in str(info.value).lower()
    assert client.cache_count() == 0


TRICKY_BUT_SOUND = [
    "http://good.test/",
    "HTTP://GOOD.TEST/",
    "http://good.test./",
    "http://under_score.test:8080/",
    "http://u@good.test/",
    "http://u:p@good.test:81/",
    "http://u%40x:p%3Aq@good.test/",
    "http://u!$&'()*+,;=~:p@good.test/",
    "http://127.0.0.1%2f@good.test/",
    "http://:p@good.test/",
    "http://good.test:080/",
    "http://good.test:65535/",
    "http://good.test/?email=a@b.test",
    "http://good.test/@127.0.0.1",
    "http://good.test?x=1",
    "http://good.test#frag",
    "https://good.test/",
    "https://good.test:8443/x",
    "http://[::1]/",
    "http://[::1]:81/",
    "http://u:p@[::1]:81/",
    "http://[::FFFF:127.0.0.1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::1.2.3.4]/",
    "http://127.0.0.1/",
    "http://127.0.0.1./",
    "http://127.1/",
    "http://0x7f.1/",
    "http://0X7F.0.0.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://00000127.0.0.1/",
    "http://0/",
    "http://4294967296/",
    "http://1.2.3.256/",
]


@pytest.mark.parametrize("url", TRICKY_BUT_SOUND)
def test_libcurl_connects_where_the_guard_looks_for_sound_urls(
    curl_view: CurlView, url: str
) -> None:
    assert check_url(url) == url
    assert curl_view.same_target(url), (url, curl_view.target(url), target_of(url))


@pytest.mark.parametrize(("url", "says"), AMBIGUOUS_AUTHORITIES)
def test_libcurl_would_read_refused_authorities_differently_or_refuse_them(
    curl_view: CurlView, url: str, says: str
) -> None:
    # Why each is refused: libcurl rejects it or reads another host / port than urllib.parse
    # (the zone-id, empty-port and '@'-after-'?' forms happen to agree today; they are refused
    # because other parsers, older libcurl among them, read them differently).
    agrees = {
        "http://@good.test/",
        "http://u:p:q@good.test/",
        "http://u<x>@good.test/",
        "http://u{x}@good.test/",
        "http://good.test:/",
        "http://[::1]:/",
        "http://good.test?@127.0.0.1/",
        "http://good.test#@127.0.0.1/",
        "http://good.test?x=a@b",
    }
    try:
        same = curl_view.same_target(url)
    except ValueError:
        same = False  # urllib.parse cannot even read it
    assert same == (url in agrees), (url, curl_view.target(url))


# Pieces of authorities: mostly sound, with every delimiter the two parsers might split on.
_PIECES = st.sampled_from(
    [
        *("u", "p", "good.test", "h", "127.0.0.1", "::1", "0x7f", "1", "80", "8080", "x_y"),
        *("@", ":", "[", "]", ".", "-", "%40", "%2e", "%3a", "%25", "%", "?", "#", "/", "!"),
        *(";", "=", "~", "[::1]", "[::1%25lo]", "v1.x"),
    ]
)


_HOSTS = st.sampled_from(
    [
        *("good.test", "GOOD.test.", "h", "127.0.0.1", "127.1", "0x7f.1", "2130706433", "0"),
        *("x_y", "[::1]", "[::ffff:127.0.0.1]", "[0:0::1]", "[::1.2.3.4]", "1.2.3.256"),
        "4294967296",
    ]
)
# [user[:password]@]host[:port] with delimiters and escapes sprinkled into each part.
_STRUCTURED = st.tuples(
    st.one_of(
        st.just(""), st.lists(_PIECES, min_size=1, max_size=3).map(lambda p: "".join(p) + "@")
    ),
    st.lists(st.one_of(_HOSTS, _PIECES), min_size=1, max_size=2).map("".join),
    st.sampled_from(["", ":", ":80", ":8080", ":080", ":65535", ":1:2", ":%38%30"]),
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    authority=st.one_of(st.lists(_PIECES, min_size=1, max_size=7).map("".join), _STRUCTURED),
    scheme=st.sampled_from(["http", "https", "HTTP"]),
    rest=st.sampled_from(["", "/", "/p?q=1#f", "?q", "#f"]),
)
def test_every_accepted_url_is_read_by_libcurl_as_the_guard_reads_it(
    curl_view: CurlView, authority: str, scheme: str, rest: str
) -> None:
    url = f"{scheme}://{authority}{rest}"
    try:
        check_url(url)
    except InvalidURL:
        return
    # libcurl may still refuse a URL (it fails closed); if it sends, it goes where we look.
    target = curl_view.target(url)
    assert target is None or curl_view.same_target(url), (url, target, target_of(url))


def test_long_urls_are_checked_but_not_memoised() -> None:
    # The memo holds short URLs only: 4,096 URLs of 8 KB would pin 32 MiB.
    _check_url_text.cache_clear()
    long_url = "http://good.test/" + "a" * 2000
    assert check_url(long_url) == long_url
    assert _check_url_text.cache_info().currsize == 0
    assert check_url("http://good.test/short") == "http://good.test/short"
    assert _check_url_text.cache_info().currsize == 1
    with pytest.raises(InvalidURL, match="more than one '@'"):
        check_url("http://a@b@c/" + "a" * 2000)


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


@pytest.mark.parametrize(
    "method", ["GE T", "", "CONNECT", "trace", "X" * 40, 5, "PÖST", "\ufb00", "1GET"]
)
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
    with pytest.raises(postkey.InvalidValue, match="unknown argument"):
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


def test_bad_arguments_to_reads_waits_flush_close_and_cancel_raise_postkey_errors(
    echo: str,
) -> None:
    # Each says what is wrong (never a bare TypeError), on the pure and the compiled build.
    from postkey import InvalidKey, InvalidRequest, InvalidValue

    with postkey.Client() as c:
        for bad_key in (123, b"k", 1.5):
            with pytest.raises(InvalidKey, match="key must be a str"):
                c.get_async(echo + "/get", key=bad_key)

        class Named(str):
            pass

        with pytest.raises(InvalidKey):
            c.get_async(echo + "/get", key=Named("abc"))  # reads refuse str subclasses too
        for bad_keys in (None, 5, "abc", b"ab"):
            with pytest.raises(InvalidValue, match="keys must be a list"):
                c.wait_many(bad_keys, 1)  # type: ignore[arg-type]
        for bad_requests in (5, None, "abc", {"url": echo}):
            with pytest.raises(InvalidRequest, match="submit_many takes a list"):
                c.submit_many(bad_requests)  # type: ignore[arg-type]
        for bad_timeout in ("x", -1, float("nan"), float("inf"), [1]):
            with pytest.raises(InvalidValue, match="timeout"):
                c.flush(bad_timeout)  # type: ignore[arg-type]
        key = c.get_async(echo + "/delay/2000", timeout_ms=5000)
        with pytest.raises(InvalidValue, match="timeout"):
            c.cancel(key, "1")  # type: ignore[arg-type]
        assert c.status(key) in (postkey.State.PENDING, postkey.State.RUNNING)  # not cancelled
        for bad_timeout in ("1", float("nan"), float("inf"), -1):
            with pytest.raises(InvalidValue, match="timeout"):
                c.close(timeout=bad_timeout)  # type: ignore[arg-type]
        assert not c.closed
        assert c.cancel(key)


@pytest.mark.parametrize("body", ["x", b"\0", '{"a": 1}'])
def test_a_head_request_with_a_body_is_refused(client: Client, body: str | bytes) -> None:
    # libcurl would send it and then wait for a response body that a HEAD answer never has,
    # until the deadline: a clear error instead, and nothing sent.
    with pytest.raises(InvalidBody, match="HEAD request cannot carry a body"):
        client.request_async("HEAD", "http://127.0.0.1:9/", body)
    with pytest.raises(InvalidBody, match="HEAD"):
        client.request_async("head", "http://127.0.0.1:9/", json={"a": 1})


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("user_agent", "postkey\r\nX-Injected: yes", "user_agent"),
        ("user_agent", "a\x00b", "user_agent"),
        ("user_agent", "x" * 3000, "user_agent"),
        ("user_agent", 42, "user_agent"),
        ("proxy", "http://proxy:3128/\r\nX: y", "proxy"),
        ("proxy", "http://pro xy:3128", "proxy"),
        ("ca_file", "/nonexistent/ca.pem", "ca_file"),
        ("ca_file", 42, "ca_file"),
        ("max_response_bytes", 10**20, "max_response_bytes"),
        ("max_request_bytes", 10**20, "max_request_bytes"),
        ("cache_max_bytes", 10**20, "cache_max_bytes"),
        ("max_timeout_ms", 10**30, "max_timeout_ms"),
        ("queue_wait_ms", 10**20, "queue_wait_ms"),
        ("result_ttl_ms", 10**20, "result_ttl_ms"),
        ("exit_grace_ms", 10**20, "exit_grace_ms"),
        ("store_timeout_ms", 10**20, "store_timeout_ms"),
        ("max_in_flight", 10**20, "max_in_flight"),
        ("max_queue", 10**20, "max_queue"),
        ("resolver_cache_ms", 10**20, "resolver_cache_ms"),
    ],
)
def test_settings_the_transport_cannot_take_are_refused_when_the_client_is_made(
    setting: str, value: object, says: str
) -> None:
    # Each was accepted, and then every request failed as `internal`, a submit to a full
    # queue raised a raw OverflowError, or a user agent put its own header lines on the wire.
    with pytest.raises(postkey.InvalidValue, match=says):
        Client(**{setting: value})


def test_settings_at_their_documented_limits_are_accepted() -> None:
    Client(
        max_timeout_ms=31 * 86_400_000,
        default_timeout_ms=31 * 86_400_000,
        queue_wait_ms=31 * 86_400_000,
        max_response_bytes=1 << 40,
        cache_max_bytes=1 << 40,
        user_agent="my-app/1.0 (+https://example.com/bot; contact@example.com)",
        proxy="http://user:pass@proxy.example:3128",
    ).close()
