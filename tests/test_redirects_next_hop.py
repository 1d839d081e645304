"""`next_hop`: which request a redirect response leads to, or why it is not followed. Pure logic:
no server needed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postkey._policy import DestinationPolicy
from postkey._redirects import REDIRECT_STATUSES, RedirectRefusal, hop_refusal, next_hop
from postkey._request import Request, build_request, check_url
from postkey._result import ErrorKind
from postkey._urls import origin_of

CREDENTIALS = {"authorization", "cookie", "proxy-authorization"}


def request(
    url: str = "http://api.test/a/b?x=1",
    method: str = "POST",
    body: bytes = b'{"a": 1}',
    headers: tuple[tuple[str, str], ...] = (
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer s3cret"),
        ("Cookie", "sid=1"),
        ("X-Kept", "yes"),
    ),
    timeout_ms: int = 4000,
    follow: bool = True,
) -> Request:
    return build_request(
        method,
        url,
        body,
        headers,
        timeout_ms,
        max_timeout_ms=timeout_ms,
        max_body_bytes=1 << 20,
        follow_redirects=follow,
    )


def hop(req: Request, status: int, location: str | None, n: int = 0, limit: int = 5) -> Request:
    nxt = next_hop(req, status, location, n, limit)
    assert isinstance(nxt, Request), nxt
    return nxt


def refusal(req: Request, status: int, location: str | None, n: int = 0) -> RedirectRefusal:
    nxt = next_hop(req, status, location, n, 5)
    assert isinstance(nxt, RedirectRefusal), nxt
    return nxt


def names(req: Request) -> set[str]:
    return {name.lower() for name, _ in req.headers}


# -- when there is nothing to follow ------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 300, 304, 305, 306, 309, 399, 404, 500])
def test_statuses_other_than_301_302_303_307_308_are_not_followed(status: int) -> None:
    assert next_hop(request(), status, "/elsewhere", 0, 5) is None


@pytest.mark.parametrize("location", [None, "", "   "])
def test_a_redirect_without_a_location_is_the_final_response(location: str | None) -> None:
    assert next_hop(request(), 302, location, 0, 5) is None


def test_nothing_is_followed_when_the_request_does_not_follow_redirects() -> None:
    assert next_hop(request(follow=False), 302, "/elsewhere", 0, 5) is None


def test_the_followed_statuses_are_the_five_redirects() -> None:
    assert frozenset({301, 302, 303, 307, 308}) == REDIRECT_STATUSES


# -- where the next hop goes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "url"),
    [
        ("/final", "http://api.test/final"),
        ("final", "http://api.test/a/final"),
        ("../up", "http://api.test/up"),
        ("?y=2", "http://api.test/a/b?y=2"),
        ("//other.test/x", "http://other.test/x"),
        ("https://other.test:8443/x?q", "https://other.test:8443/x?q"),
        ("HTTP://API.test/Case", "http://API.test/Case"),
        ("/login?next=http://api.test/a", "http://api.test/login?next=http://api.test/a"),
        ("/a:b//c", "http://api.test/a:b//c"),
    ],
)
def test_the_location_is_resolved_against_the_current_url(location: str, url: str) -> None:
    assert hop(request(), 307, location).url == url


def test_the_fragment_is_dropped_because_it_never_goes_on_the_wire() -> None:
    assert hop(request(), 302, "/final#section").url == "http://api.test/final"
    assert hop(request("http://api.test/a#top", "GET", b""), 302, "/b").url == "http://api.test/b"


def test_spaces_and_non_ascii_bytes_in_the_location_are_percent_encoded() -> None:
    # Header values arrive decoded as Latin-1, one character per byte: "é" in UTF-8 is "Ã©".
    assert hop(request(), 302, "/a b/\u00c3\u00a9").url == "http://api.test/a%20b/%C3%A9"
    assert hop(request(), 302, "/\u20ac").url == "http://api.test/%E2%82%AC"


def test_the_next_request_keeps_the_timeout_and_keeps_following() -> None:
    nxt = hop(request(timeout_ms=1234), 307, "/final")
    assert nxt.timeout_ms == 1234 and nxt.follow_redirects is True


# -- method and body ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET", "OPTIONS"])
def test_303_becomes_a_get_without_body_or_body_headers(method: str) -> None:
    nxt = hop(request(method=method), 303, "/final")
    assert (nxt.method, nxt.body) == ("GET", b"")
    assert "content-type" not in names(nxt)
    assert "x-kept" in names(nxt) and "authorization" in names(nxt)  # same origin


def test_303_keeps_a_head_a_head() -> None:
    nxt = hop(request(method="HEAD", body=b""), 303, "/final")
    assert (nxt.method, nxt.body) == ("HEAD", b"")


@pytest.mark.parametrize("status", [301, 302])
def test_301_and_302_turn_a_post_into_a_get_without_body(status: int) -> None:
    nxt = hop(request(), status, "/final")
    assert (nxt.method, nxt.body) == ("GET", b"")
    assert "content-type" not in names(nxt)


@pytest.mark.parametrize("status", [301, 302])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_301_and_302_keep_other_methods_and_their_body(status: int, method: str) -> None:
    nxt = hop(request(method=method), status, "/final")
    assert (nxt.method, nxt.body) == (method, b'{"a": 1}')
    assert "content-type" in names(nxt)


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
def test_307_and_308_keep_the_method_the_body_and_its_headers(status: int, method: str) -> None:
    req = request(method=method)
    nxt = hop(req, status, "/final")
    assert (nxt.method, nxt.body, nxt.headers) == (method, req.body, req.headers)


def test_every_body_header_goes_with_the_body() -> None:
    headers = (
        ("Content-Type", "text/plain"),
        ("Content-Encoding", "gzip"),
        ("Content-Language", "en"),
        ("Content-Location", "/x"),
        ("Content-MD5", "abc"),
        ("Digest", "sha-256=x"),
        ("Content-Digest", "sha-256=:x:"),
        ("Repr-Digest", "sha-256=:x:"),
        ("Accept", "*/*"),
    )
    nxt = hop(request(headers=headers), 303, "/final")
    assert nxt.headers == (("Accept", "*/*"),)


# -- credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http://other.test/final",  # host
        "http://api.test:8080/final",  # port
        "https://api.test/final",  # scheme
        "//API.test.evil/final",
    ],
)
def test_credentials_are_dropped_when_the_origin_changes(location: str) -> None:
    nxt = hop(request(), 307, location)
    assert not names(nxt) & CREDENTIALS
    assert "x-kept" in names(nxt) and "content-type" in names(nxt)


@pytest.mark.parametrize(
    "location", ["/final", "http://api.test/final", "http://API.TEST:80/final", "//api.test/x"]
)
def test_credentials_are_kept_within_one_origin(location: str) -> None:
    nxt = hop(request(), 307, location)
    assert {"authorization", "cookie"} <= names(nxt)


def test_an_origin_change_then_a_return_does_not_bring_credentials_back() -> None:
    away = hop(request(), 307, "http://other.test/x")
    back = hop(away, 307, "http://api.test/y", n=1)
    assert not names(back) & CREDENTIALS


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    ["ftp://127.0.0.1/file", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)", "ftp:x"],
)
def test_a_redirect_to_another_scheme_is_refused_as_protocol(location: str) -> None:
    refused = refusal(request(), 302, location)
    assert refused.kind is ErrorKind.PROTOCOL
    assert location.split(":", maxsplit=1)[0] in refused.message and "http" in refused.message


@pytest.mark.parametrize(
    "location",
    [
        "http://u@127.0.0.1:8080@good.test/",
        "http://[::1%25lo]/",
        "http://%6c%6f%63%61%6c%68%6f%73%74/",
        "http://good.test:/",
        "http://exa\\mple.test/",
        "http://good.test/\x00",
        "/path\twith-tab",
        "http://[::1",
        "http:///x",
        "//",
        "https:x",
        "http://" + "a" * 9000 + ".test/",
    ],
)
def test_a_malformed_location_is_refused_as_protocol(location: str) -> None:
    refused = refusal(request(), 302, location)
    assert refused.kind is ErrorKind.PROTOCOL
    assert "redirect" in refused.message


def test_too_many_redirects_are_refused_and_the_limit_is_named() -> None:
    assert isinstance(next_hop(request(), 302, "/x", 4, 5), Request)
    refused = next_hop(request(), 302, "/x", 5, 5)
    assert isinstance(refused, RedirectRefusal)
    assert refused.kind is ErrorKind.TOO_MANY_REDIRECTS
    assert "max_redirects=5" in refused.message
    zero = next_hop(request(), 302, "/x", 0, 0)
    assert isinstance(zero, RedirectRefusal) and "max_redirects=0" in zero.message


def test_a_redirect_that_is_not_followed_is_not_counted() -> None:
    assert next_hop(request(), 200, "/x", 99, 5) is None
    assert next_hop(request(), 302, None, 99, 5) is None


# -- the policy, per hop ------------------------------------------------------------------------


def test_the_policy_judges_each_hop_by_its_own_host_name() -> None:
    policy = DestinationPolicy.public_only(allow=("api.internal",), deny=("*.evil.test",))
    start = request("http://api.internal:8080/r")
    to_loopback = next_hop(start, 302, "http://127.0.0.1:9/secret", 0, 5, policy=policy)
    assert isinstance(to_loopback, RedirectRefusal)
    assert to_loopback.kind is ErrorKind.BLOCKED
    assert "127.0.0.1 is loopback" in to_loopback.message
    to_denied = next_hop(start, 302, "http://x.evil.test/", 0, 5, policy=policy)
    assert isinstance(to_denied, RedirectRefusal) and to_denied.kind is ErrorKind.BLOCKED
    assert "x.evil.test is denied by rule '*.evil.test'" in to_denied.message
    # A name is judged by its addresses when connecting (the guard sees the hop's name then).
    assert isinstance(next_hop(start, 302, "http://public.test/", 0, 5, policy=policy), Request)
    assert isinstance(next_hop(start, 302, "/same-host", 0, 5, policy=policy), Request)


def test_hop_refusal_judges_literal_addresses_and_denied_names() -> None:
    policy = DestinationPolicy.public_only(allow=("127.0.0.1:8080",))
    assert hop_refusal(policy, request("http://127.0.0.1:8080/")) is None
    refused = hop_refusal(policy, request("http://[::ffff:127.0.0.1]:9/"))
    assert refused is not None and refused.kind is ErrorKind.BLOCKED
    assert hop_refusal(policy, request("http://0.0.0.0:8080/")) is None  # reaches 127.0.0.1
    assert hop_refusal(policy, request("http://name.test:9/")) is None
    allow_all = DestinationPolicy.allow_all(deny=("127.0.0.0/8", "::1"))
    refused_zero = hop_refusal(allow_all, request("http://0.0.0.0/"))
    assert refused_zero is not None and "connects to 127.0.0.1" in refused_zero.message


def test_check_target_combines_name_rules_and_literal_addresses() -> None:
    policy = DestinationPolicy.public_only(allow=("api.internal",), deny=("bad.test:443",))
    assert policy.check_target("api.internal", 80) is None
    assert policy.check_target("bad.test", 80) is None
    assert "denied by rule 'bad.test:443'" in (policy.check_target("BAD.test.", 443) or "")
    assert "loopback" in (policy.check_target("127.0.0.1", 80) or "")
    assert "loopback" in (policy.check_target("::1", 80) or "")
    assert policy.check_target("8.8.8.8", 80) is None
    # Numeric forms other than the standard ones are left to the connection-time check.
    assert policy.check_target("0x7f.1", 80) is None


# -- properties ---------------------------------------------------------------------------------

_LOCATIONS = st.one_of(
    st.sampled_from(
        [
            "/x",
            "x/y",
            "../z",
            "?q=1",
            "#f",
            "//other.test/p",
            "//api.test/p",
            "http://api.test:80/p",
            "https://api.test/p",
            "http://api.test:8080/p",
            "http://u:p@other.test/p",
            "http://[::1]:81/p",
            "HTTPS://Other.Test./p",
            "ftp://x/",
            "http://a@b@c/",
            "http://[::1%25lo]/",
            "http:///x",
            "\\\\evil",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x17F), max_size=40),
)
_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            ["Authorization", "authorization", "COOKIE", "Cookie", "Content-Type", "X-A", "Accept"]
        ),
        st.sampled_from(["v", "Bearer t", "sid=1"]),
    ),
    max_size=6,
).map(tuple)


@settings(max_examples=400, deadline=None)
@given(
    start=st.sampled_from(
        ["http://api.test/a/b", "https://api.test:8443/", "http://u:p@api.test/x?y#z"]
    ),
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE"]),
    headers=_HEADERS,
    chain=st.lists(
        st.tuples(st.sampled_from([301, 302, 303, 307, 308, 200]), _LOCATIONS), max_size=4
    ),
)
def test_every_next_request_is_a_valid_submit_and_never_carries_credentials_across_origins(
    start: str,
    method: str,
    headers: tuple[tuple[str, str], ...],
    chain: list[tuple[int, str]],
) -> None:
    body = b"" if method in ("GET", "HEAD") else b"payload"
    current = request(start, method, body, headers)
    crossed = False
    for n, (status, location) in enumerate(chain):
        nxt = next_hop(current, status, location, n, 5)
        if not isinstance(nxt, Request):
            assert nxt is None or nxt.message
            return
        assert check_url(nxt.url) == nxt.url
        assert "#" not in nxt.url
        assert nxt.timeout_ms == current.timeout_ms
        crossed = crossed or origin_of(nxt.url) != origin_of(current.url)
        if crossed:
            assert not names(nxt) & CREDENTIALS, (current.url, nxt.url, nxt.headers)
        if nxt.body:
            assert nxt.method == current.method and nxt.body == current.body
        current = nxt
