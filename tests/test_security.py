"""The destination policy: refusals by address, by name and per redirect hop; canaries prove that
no refused request ever connected."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from postkey import Client, InvalidValue, Settings
from postkey._policy import DestinationPolicy, classify, parse_rule

from .servers import HostileServer
from .test_redirects_end_to_end import RecordingServer

PUBLIC_ONLY = DestinationPolicy.public_only()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


def test_public_only_refuses_loopback_and_never_connects(
    hostile: str, hostile_server: HostileServer
) -> None:
    with Client(policy=PUBLIC_ONLY) as c:
        result = c.wait(c.get_async(hostile + "/hold", timeout_ms=3000), 5)
    assert result.state == "failed" and result.error_kind == "blocked"
    assert "127.0.0.1 is loopback (127.0.0.0/8); the policy is public_only" in (result.error or "")
    assert hostile_server.connections == 0


def test_an_allow_rule_opens_one_address_and_port(
    hostile: str, hostile_server: HostileServer
) -> None:
    port = port_of(hostile)
    with Client(policy=DestinationPolicy.public_only(allow=(f"127.0.0.1:{port}",))) as c:
        assert c.wait(c.get_async(hostile + "/hold", timeout_ms=3000), 5).status == 200
        other = c.wait(
            c.get_async(f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/", timeout_ms=3000), 5
        )
    assert other.error_kind == "blocked"


def test_deny_rules_win_and_can_name_hosts(hostile: str, hostile_server: HostileServer) -> None:
    port = port_of(hostile)
    policy = DestinationPolicy.public_only(allow=("127.0.0.0/8",), deny=(f"127.0.0.1:{port}",))
    with Client(policy=policy) as c:
        result = c.wait(c.get_async(hostile + "/hold", timeout_ms=3000), 5)
    assert result.error_kind == "blocked" and "denied by rule" in (result.error or "")
    with Client(policy=DestinationPolicy.allow_all(deny=("localhost",))) as c:
        named = c.wait(c.get_async(f"http://localhost:{port}/hold", timeout_ms=3000), 5)
    assert named.error_kind == "blocked" and "host localhost is denied" in (named.error or "")
    assert hostile_server.connections == 0


def test_redirects_are_checked_per_hop(
    echo: str, hostile: str, hostile_server: HostileServer
) -> None:
    # The echo server is allowed; it redirects to the hostile server's port, which is not.
    policy = DestinationPolicy.public_only(allow=(f"127.0.0.1:{port_of(echo)}",))
    target = quote(hostile + "/hold", safe="")
    with Client(policy=policy) as c:
        result = c.wait(
            c.get_async(
                echo + f"/redirect-to?url={target}", timeout_ms=3000, follow_redirects=True
            ),
            5,
        )
        unfollowed = c.wait(c.get_async(echo + f"/redirect-to?url={target}", timeout_ms=3000), 5)
    assert result.error_kind == "blocked"
    assert unfollowed.status == 302
    assert hostile_server.connections == 0


def test_redirects_never_leave_http(echo: str) -> None:
    with Client() as c:
        result = c.wait(
            c.get_async(
                echo + "/redirect-to?url=" + quote("file:///etc/passwd", safe=""),
                timeout_ms=3000,
                follow_redirects=True,
            ),
            5,
        )
    assert result.state == "failed" and result.error_kind == "protocol"


def test_credentials_are_dropped_on_cross_origin_redirects(echo: str) -> None:
    other_origin = echo.replace("127.0.0.1", "localhost") + "/final"
    url = echo + "/redirect-to?status=307&url=" + quote(other_origin, safe="")
    headers = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Kept": "yes"}
    with Client() as c:
        cross = c.wait(c.post_async(url, "b", headers, 3000, follow_redirects=True), 5).json()
        same = c.wait(
            c.post_async(
                echo + "/redirect-to?status=307&url=" + quote(echo + "/final", safe=""),
                "b",
                headers,
                3000,
                follow_redirects=True,
            ),
            5,
        ).json()
    assert "Authorization" not in cross["headers"] and "Cookie" not in cross["headers"]
    assert cross["headers"]["X-Kept"] == "yes"
    assert same["headers"]["Authorization"] == "Bearer s3cret"  # same origin keeps them


def test_a_redirect_from_an_allowed_name_to_loopback_is_blocked_at_the_hop(
    hostile: str, hostile_server: HostileServer
) -> None:
    # The allow rule covers loopback for the name api.internal only; the 302 points at
    # 127.0.0.1 itself, which must be judged as its own host, not as api.internal.
    secret = f"http://127.0.0.1:{port_of(hostile)}/secret"
    with RecordingServer() as server:
        policy = DestinationPolicy.public_only(allow=("api.internal",))

        def resolver(host: str) -> list[str]:
            assert host == "api.internal", host
            return ["127.0.0.1"]

        url = f"http://api.internal:{server.port}/redirect-to-loopback/redirect?location=" + quote(
            secret, safe=""
        )
        with Client(policy=policy, resolver=resolver, follow_redirects=True) as c:
            result = c.wait(c.get_async(url, timeout_ms=3000), 5)
        assert [r["path"] for r in server.requests] == ["/redirect-to-loopback/redirect"]
    assert result.state == "failed" and result.error_kind == "blocked", result
    assert "127.0.0.1" in (result.error or "")
    assert hostile_server.connections == 0


UNSPECIFIED_FORMS = [
    ("0.0.0.0", "127.0.0.1"),
    ("0", "127.0.0.1"),
    ("[::ffff:0.0.0.0]", "127.0.0.1"),
    ("[::ffff:0:0]", "127.0.0.1"),
    ("[::]", "::1"),
    ("[0:0:0:0:0:0:0:0]", "::1"),
]


@pytest.mark.parametrize(("host", "listener"), UNSPECIFIED_FORMS)
def test_unspecified_addresses_reach_loopback_on_this_system(host: str, listener: str) -> None:
    # Why the deny rules below must see through them: Linux connects them to loopback.
    with RecordingServer(listener) as server, Client() as c:
        result = c.wait(c.get_async(f"http://{host}:{server.port}/", timeout_ms=3000), 5)
    assert result.status == 200, result
    assert server.connections == 1


@pytest.mark.parametrize(("host", "listener"), UNSPECIFIED_FORMS)
def test_deny_rules_on_loopback_also_refuse_the_unspecified_addresses(
    host: str, listener: str
) -> None:
    policy = DestinationPolicy.allow_all(deny=("127.0.0.0/8", "::1"))
    with RecordingServer(listener) as server, Client(policy=policy) as c:
        result = c.wait(c.get_async(f"http://{host}:{server.port}/", timeout_ms=3000), 5)
    assert result.state == "failed" and result.error_kind == "blocked", result
    assert f"connects to {listener}" in (result.error or "")
    assert server.connections == 0


def test_an_unspecified_address_is_judged_as_the_loopback_it_reaches() -> None:
    deny_v4 = DestinationPolicy.allow_all(deny=("127.0.0.1",))
    assert "denied by rule '127.0.0.1'" in (deny_v4.check_address("0.0.0.0", 80, "x") or "")
    assert deny_v4.check_address("::ffff:0.0.0.0", 80, "x") is not None
    assert deny_v4.check_address("::", 80, "x") is None  # :: reaches ::1, not 127.0.0.1
    assert DestinationPolicy.allow_all(deny=("::1",)).check_address("::", 80, "x") is not None
    # A deny rule on the unspecified range itself still applies.
    assert DestinationPolicy.allow_all(deny=("0.0.0.0/8",)).check_address("0.0.0.0", 80, "x")
    # Allowing loopback allows what reaches it; allowing 0.0.0.0 does not open loopback.
    assert (
        DestinationPolicy.public_only(allow=("127.0.0.1:80",)).check_address("0.0.0.0", 80, "x")
        is None
    )
    refusal = DestinationPolicy.public_only(allow=("0.0.0.0",)).check_address("0.0.0.0", 80, "x")
    assert refusal == (
        "0.0.0.0 connects to 127.0.0.1, which is loopback (127.0.0.0/8); the policy is public_only"
    )
    assert PUBLIC_ONLY.check_address("::", 80, "x") == (
        ":: connects to ::1, which is loopback (::1/128); the policy is public_only"
    )


def test_other_this_network_addresses_are_not_taken_for_loopback() -> None:
    # Linux refuses to connect to 0.0.0.0/8 beyond 0.0.0.0, and routes the IPv4-compatible
    # ::127.0.0.1 out of the host, not to loopback (checked with real listeners while writing
    # this); public_only still refuses both ranges.
    deny = DestinationPolicy.allow_all(deny=("127.0.0.0/8", "::1"))
    for ip in ("0.0.0.1", "0.1.2.3", "::127.0.0.1"):
        assert deny.check_address(ip, 80, "x") is None, ip
        assert PUBLIC_ONLY.check_address(ip, 80, "x") is not None, ip


def test_dns_rebinding_never_reaches_loopback(hostile: str, hostile_server: HostileServer) -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])

    def rebinding(host: str) -> list[str]:
        return next(answers)

    port = port_of(hostile)
    # resolver_cache_ms=0: every request asks again, so the second one really gets the
    # rebound answer (kept answers would pin the first, public one for 60 s).
    with Client(policy=PUBLIC_ONLY, resolver=rebinding, resolver_cache_ms=0) as c:
        first = c.wait(c.get_async(f"http://rebind.test:{port}/hold", timeout_ms=500), 5)
        second = c.wait(c.get_async(f"http://rebind.test:{port}/hold", timeout_ms=500), 5)
    assert first.state == "failed" and first.error_kind in ("connect", "timeout")
    assert second.error_kind == "blocked"
    assert hostile_server.connections == 0


def test_mixed_answers_connect_only_to_the_vetted_address(
    hostile: str, hostile_server: HostileServer
) -> None:
    port = port_of(hostile)
    policy = DestinationPolicy.public_only(allow=(f"127.0.0.1:{port}",))
    with Client(policy=policy, resolver=lambda host: ["10.0.0.1", "127.0.0.1"]) as c:
        result = c.wait(c.get_async(f"http://mixed.test:{port}/hold", timeout_ms=3000), 5)
    assert result.status == 200


def test_proxy_environment_variables_are_ignored(echo: str) -> None:
    script = (
        "import postkey, sys\n"
        f"r = postkey.wait(postkey.get_async({echo!r}, timeout_ms=3000), 5)\n"
        "print(r.state, r.status)\n"
    )
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    env["ALL_PROXY"] = "http://127.0.0.1:9"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert out.stdout.split() == ["done", "200"], out.stderr


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "carrier-grade NAT"),
        ("192.0.0.192", "IETF protocol assignments"),
        ("fd00:ec2::254", "unique local"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),
        ("2002:a9fe:a9fe::1", "6to4"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("255.255.255.255", "reserved / broadcast"),
    ],
)
def test_the_deny_list_names_what_it_refuses(address: str, what: str) -> None:
    import ipaddress

    assert what in (classify(ipaddress.ip_address(address)) or "")


def test_metadata_stays_closed_under_a_wide_allow_rule() -> None:
    wide = DestinationPolicy.public_only(allow=("169.254.0.0/16",))
    assert "metadata" in (wide.check_address("169.254.169.254", 80, "x") or "")
    assert wide.check_address("169.254.1.1", 80, "x") is None
    exact = DestinationPolicy.public_only(allow=("169.254.169.254",))
    assert exact.check_address("169.254.169.254", 80, "x") is None


def test_public_addresses_pass_public_only() -> None:
    for ip in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "1.1.1.1"):
        assert PUBLIC_ONLY.check_address(ip, 443, "x") is None


@pytest.mark.parametrize(
    "rule", ["", "10.0.0.0/33", "host name", "a..b", "127.0.0.1:0", "[::1]:x", "[::1]80", "h:99999"]
)
def test_malformed_rules_are_refused(rule: str) -> None:
    with pytest.raises(InvalidValue):
        parse_rule(rule)


def test_policy_from_environment() -> None:
    s = Settings.from_env(
        {"POSTKEY_POLICY": "public_only", "POSTKEY_ALLOW": "10.0.0.0/8, api.internal:443"}
    )
    assert s.policy.mode == "public_only"
    assert s.policy.allow == ("10.0.0.0/8", " api.internal:443")
    with pytest.raises(InvalidValue):
        Settings.from_env({"POSTKEY_POLICY": "everything"})
