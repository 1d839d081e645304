"""Client certificates (mTLS) and HTTP versions, against real TLS servers on 127.0.0.1.

The mTLS server requires a client certificate from the test CA and answers with the certificate's
common name and the number of the connection it came on, so a test sees which certificate each
request presented and whether libcurl reused a connection. hypercorn serves HTTP/2 (h2 by ALPN,
h2c with prior knowledge) for the version tests.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from postkey import Client, InvalidRequest, InvalidValue, Result, Settings
from postkey._request import ConnectionOptions, check_options

TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA that issued the servers' and the client certificates a and b
    a: Path  # client certificate CN=client-a, key in the same file
    a_cert: Path  # the same certificate alone
    a_key: Path  # and its key alone
    b: Path  # CN=client-b, key in the same file
    stranger: Path  # CN=stranger, issued by another CA
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca, other_ca = trustme.CA(), trustme.CA()
    folder = tmp_path_factory.mktemp("mtls")

    def write(name: str, blob: trustme.Blob) -> Path:
        blob.write_to_path(str(folder / name))
        return folder / name

    a = ca.issue_cert("client-a@example.org", common_name="client-a")
    b = ca.issue_cert("client-b@example.org", common_name="client-b")
    stranger = other_ca.issue_cert("stranger@example.org", common_name="stranger")
    server = ca.issue_cert("localhost", "127.0.0.1")
    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        a=write("a.pem", a.private_key_and_cert_chain_pem),
        a_cert=write("a-cert.pem", a.cert_chain_pems[0]),
        a_key=write("a-key.pem", a.private_key_pem),
        b=write("b.pem", b.private_key_and_cert_chain_pem),
        stranger=write("stranger.pem", stranger.private_key_and_cert_chain_pem),
        server_cert=write("server-cert.pem", server.cert_chain_pems[0]),
        server_key=write("server-key.pem", server.private_key_pem),
    )


class _WhoAmI(BaseHTTPRequestHandler):
    """Answers "<client certificate CN> conn=<connection number> resumed=<TLS session resumed>";
    /to-root redirects to /; /close closes the connection after answering."""

    protocol_version = "HTTP/1.1"
    server: _MTLSServer

    def handle(self) -> None:
        # The handshake runs here, on the connection's thread, not in the accept loop.
        self.conn_id = next(self.server.connection_ids)
        try:
            self.connection.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLError, OSError):
            self._linger()
            return
        super().handle()

    def _linger(self) -> None:
        # Under TLS 1.3 the client sends its request before it reads the server's alert; a
        # close with that request unread resets the connection, and the client may then see
        # "broken pipe" instead of the alert. Reading until the client closes (as servers'
        # lingering close does) lets the alert through every time.
        self.connection.settimeout(2)
        try:
            while socket.socket.recv(self.connection, 65536):
                pass
        except OSError:
            pass

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.path == "/to-root":
            self.send_response(302)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        cert: Any = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(pair[0] for pair in cert["subject"])
        resumed = self.connection.session_reused  # type: ignore[attr-defined]
        body = f"{subject['commonName']} conn={self.conn_id} resumed={resumed}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _MTLSServer(ThreadingHTTPServer):
    """HTTP/1.1 only (ALPN offers http/1.1 alone) and a client certificate required."""

    daemon_threads = True

    def __init__(self, certs: Certs, tls_max: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED):
        super().__init__(("127.0.0.1", 0), _WhoAmI)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs.server_cert, certs.server_key)
        context.load_verify_locations(certs.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])
        context.maximum_version = tls_max
        self.context = context
        self.connection_ids = itertools.count()
        self.requests = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, address


def _serve(server: _MTLSServer) -> Iterator[_MTLSServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[_MTLSServer]:
    yield from _serve(_MTLSServer(certs))


@pytest.fixture
def mtls(mtls_server: _MTLSServer) -> str:
    return f"https://localhost:{mtls_server.server_address[1]}/"


@pytest.fixture(scope="module")
def mtls12(certs: Certs) -> Iterator[str]:
    """The same server limited to TLS 1.2, where a refusal ends the handshake itself."""
    for server in _serve(_MTLSServer(certs, ssl.TLSVersion.TLSv1_2)):
        yield f"https://localhost:{server.server_address[1]}/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class H2Server:
    https: str  # offers h2 and http/1.1 by ALPN
    http: str  # HTTP/1.1, and h2c with prior knowledge
    ca: str


@pytest.fixture(scope="module")
def hypercorn(certs: Certs) -> Iterator[H2Server]:
    tls_port, plain_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "tests.h2_app:app",
            "--bind",
            f"127.0.0.1:{tls_port}",
            "--insecure-bind",
            f"127.0.0.1:{plain_port}",
            "--certfile",
            str(certs.server_cert),
            "--keyfile",
            str(certs.server_key),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        for port in (tls_port, plain_port):
            for _ in range(200):
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
        yield H2Server(
            f"https://localhost:{tls_port}/", f"http://127.0.0.1:{plain_port}/", str(certs.ca)
        )
    finally:
        server.terminate()
        server.wait(10)


def _get(client: Client, url: str, **options: Any) -> Result:
    return client.wait(client.get_async(url, timeout_ms=TIMEOUT_MS, **options), 10)


def _who(result: Result) -> tuple[str, str]:
    """(common name, connection) from a _WhoAmI answer."""
    assert result.status == 200, result
    name, conn, _resumed = result.text.split(" ")
    return name, conn


def _resumed(result: Result) -> bool:
    """Whether the request's connection resumed an earlier TLS session."""
    return result.text.endswith("resumed=True")


# Client certificates ------------------------------------------------------------------------


def test_the_clients_certificate_is_presented(certs: Certs, mtls: str) -> None:
    with Client(ca_file=str(certs.ca), client_cert=str(certs.a)) as c:
        result = _get(c, mtls)
    assert _who(result)[0] == "client-a"
    assert result.http_version == "1.1"


def test_a_certificate_and_its_key_in_separate_files(certs: Certs, mtls: str) -> None:
    with Client(
        ca_file=str(certs.ca), client_cert=str(certs.a_cert), client_key=str(certs.a_key)
    ) as c:
        assert _who(_get(c, mtls))[0] == "client-a"


def test_a_requests_certificate_replaces_the_clients(certs: Certs, mtls: str) -> None:
    with Client(ca_file=str(certs.ca), client_cert=str(certs.a)) as c:
        mine = _get(c, mtls, client_cert=str(certs.b))
        split = _get(c, mtls, client_cert=str(certs.a_cert), client_key=str(certs.a_key))
        clients = _get(c, mtls)
    assert _who(mine)[0] == "client-b"
    assert _who(split)[0] == "client-a"
    assert _who(clients)[0] == "client-a"


def test_a_request_keeps_the_clients_certificate_when_it_sets_only_a_version(
    certs: Certs, mtls: str
) -> None:
    with Client(ca_file=str(certs.ca), client_cert=str(certs.a)) as c:
        result = _get(c, mtls, http_version="1.1")
    assert _who(result)[0] == "client-a" and result.http_version == "1.1"


def test_no_certificate_fails_as_tls_saying_the_server_requires_one(
    certs: Certs, mtls: str
) -> None:
    with Client(ca_file=str(certs.ca)) as c:
        result = _get(c, mtls)
    assert result.state == "failed" and result.error_kind == "tls", result
    assert "server requires a TLS client certificate and none was set" in result.error


def test_a_certificate_from_another_ca_fails_as_tls(certs: Certs, mtls: str) -> None:
    with Client(ca_file=str(certs.ca), client_cert=str(certs.stranger)) as c:
        result = _get(c, mtls)
    assert result.state == "failed" and result.error_kind == "tls", result
    assert "server does not trust the TLS client certificate's issuer" in result.error


def test_over_tls_1_2_the_same_refusals_are_tls_failures(certs: Certs, mtls12: str) -> None:
    with Client(ca_file=str(certs.ca)) as c:
        ok = _get(c, mtls12, client_cert=str(certs.a))
        none = _get(c, mtls12)
        stranger = _get(c, mtls12, client_cert=str(certs.stranger))
    assert _who(ok)[0] == "client-a"
    assert none.state == "failed" and none.error_kind == "tls", none
    # TLS 1.2 servers say "handshake failure", which other mismatches cause too: a hint.
    assert "if it requires a TLS client certificate, set client_cert" in none.error
    assert stranger.state == "failed" and stranger.error_kind == "tls", stranger
    assert "server does not trust the TLS client certificate's issuer" in stranger.error


def test_a_certificate_without_its_key_fails_as_tls(certs: Certs, mtls: str) -> None:
    # check_options sees a readable file; libcurl finds no key in it.
    with Client(ca_file=str(certs.ca)) as c:
        result = _get(c, mtls, client_cert=str(certs.a_cert))
    assert result.state == "failed" and result.error_kind == "tls", result
    assert result.error.startswith(f"cannot use client_cert {str(certs.a_cert)!r}")


def test_a_certificate_does_not_outlive_its_request(certs: Certs, mtls: str) -> None:
    # One transfer at a time: the second request runs on the handle the first one used, and
    # libcurl has the first one's connection (opened with client-a) in its pool. Presenting
    # client-a from either would make the second request succeed.
    with Client(ca_file=str(certs.ca), max_in_flight=1) as c:
        first = _get(c, mtls, client_cert=str(certs.a))
        second = _get(c, mtls)
        third = _get(c, mtls, client_cert=str(certs.a))
    assert _who(first)[0] == "client-a"
    assert second.state == "failed" and second.error_kind == "tls", second
    assert _who(third)[0] == "client-a"


def test_connections_are_reused_only_with_the_same_certificate(certs: Certs, mtls: str) -> None:
    # Requests one after another share one handle; max_in_flight=2 lets libcurl keep two
    # connections (its pool holds max_in_flight).
    with Client(ca_file=str(certs.ca), max_in_flight=2) as c:
        results = [_get(c, mtls, client_cert=str(certs.a if i % 2 else certs.b)) for i in range(6)]
    seen = [_who(r) for r in results]
    assert [name for name, _ in seen] == ["client-b", "client-a"] * 3
    # libcurl keeps one connection per certificate and reuses it for that certificate only.
    assert len({conn for name, conn in seen if name == "client-a"}) == 1
    assert len({conn for name, conn in seen if name == "client-b"}) == 1
    assert len({conn for _, conn in seen}) == 2


def test_tls_sessions_are_resumed_only_with_the_same_certificate(certs: Certs, mtls: str) -> None:
    # A resumed session carries the certificate of the handshake that made it: resuming one
    # made with client-a for a request without it would present client-a. Every answer here
    # closes its connection, so each request makes a new one.
    close = mtls + "close"
    with Client(ca_file=str(certs.ca)) as c:
        first = _get(c, close, client_cert=str(certs.a))
        again = _get(c, close, client_cert=str(certs.a))
        without = _get(c, close)
        other = _get(c, close, client_cert=str(certs.b))
        back = _get(c, close, client_cert=str(certs.a))
    assert _who(first)[0] == _who(again)[0] == _who(back)[0] == "client-a"
    assert _resumed(again) and _resumed(back)  # libcurl does resume sessions here
    assert without.state == "failed" and without.error_kind == "tls", without
    assert _who(other)[0] == "client-b" and not _resumed(other)


def test_concurrent_requests_with_different_certificates_each_present_their_own(
    certs: Certs, mtls: str
) -> None:
    with Client(ca_file=str(certs.ca), client_cert=str(certs.a), max_per_host=4) as c:
        options: list[dict[str, Any]] = [
            [{}, {"client_cert": str(certs.b)}, {"http_version": "1.1"}][i % 3] for i in range(30)
        ]
        keys = [c.get_async(mtls, timeout_ms=TIMEOUT_MS, **o) for o in options]
        results = c.wait_many(keys, 20)
    names = [_who(r)[0] for r in results]
    assert names == ["client-b" if "client_cert" in o else "client-a" for o in options]


def test_redirect_hops_keep_the_requests_certificate(certs: Certs, mtls: str) -> None:
    with Client(ca_file=str(certs.ca)) as c:
        result = _get(c, mtls + "to-root", client_cert=str(certs.b), follow_redirects=True)
    assert _who(result)[0] == "client-b"


# HTTP versions ----------------------------------------------------------------------------


def test_http_version_1_1_pins_http_1_1_on_an_h2_server(hypercorn: H2Server) -> None:
    https = hypercorn.https
    with Client(ca_file=hypercorn.ca) as c:
        default = _get(c, https)
        pinned = _get(c, https, http_version="1.1")  # not on the h2 connection just opened
    assert default.http_version == "2"
    assert pinned.status == 200 and pinned.http_version == "1.1" and pinned.text == "http/1.1"


def test_http_version_2_gets_http_2(hypercorn: H2Server) -> None:
    https = hypercorn.https
    with Client(ca_file=hypercorn.ca, http_version="2") as c:
        result = _get(c, https)
    assert result.status == 200 and result.http_version == "2" and result.text == "http/2"


def test_versions_alternate_on_one_handle(hypercorn: H2Server) -> None:
    # Requests one after another share one handle, and libcurl keeps their connections: a
    # request that pins a version gets it. One that does not lets libcurl choose, and libcurl
    # reuses an idle connection of either version (HTTP/1.1 is within what it allows).
    https = hypercorn.https
    asked = ["1.1", "2", None, "1.1", None, "2", "1.1", "2"]
    with Client(ca_file=hypercorn.ca, max_in_flight=2) as c:
        got = [_get(c, https, http_version=v).http_version for v in asked]
    assert [v for v, a in zip(got, asked, strict=True) if a] == [a for a in asked if a]
    assert {v for v, a in zip(got, asked, strict=True) if not a} <= {"1.1", "2"}


def test_the_client_version_applies_unless_a_request_sets_its_own(
    hypercorn: H2Server,
) -> None:
    https = hypercorn.https
    with Client(ca_file=hypercorn.ca, http_version="1.1") as c:
        clients = _get(c, https)
        own = _get(c, https, http_version="2")
    assert clients.http_version == "1.1" and own.http_version == "2"


def test_http_version_2_fails_as_protocol_on_an_http_1_1_server(
    certs: Certs, mtls: str, mtls_server: _MTLSServer
) -> None:
    before = mtls_server.requests
    with Client(ca_file=str(certs.ca), client_cert=str(certs.a)) as c:
        result = _get(c, mtls, http_version="2")
    assert result.state == "failed" and result.error_kind == "protocol", result
    assert "the server did not speak HTTP/2" in result.error
    # ALPN offered h2 alone: the request never reached the server as HTTP/1.1.
    assert mtls_server.requests == before


def test_h2c_with_prior_knowledge_over_plain_http(hypercorn: H2Server) -> None:
    http = hypercorn.http
    with Client() as c:
        plain = _get(c, http)  # no h2c unless asked for
        keys = [c.get_async(http, timeout_ms=TIMEOUT_MS, http_version="2") for _ in range(5)]
        results = c.wait_many(keys, 10)
    assert plain.http_version == "1.1"
    assert [(r.status, r.http_version, r.text) for r in results] == [(200, "2", "http/2")] * 5


def test_h2c_on_an_http_1_1_server_fails_as_protocol(echo: str) -> None:
    with Client() as c:
        result = _get(c, echo + "/", http_version="2")
    assert result.state == "failed" and result.error_kind == "protocol", result
    assert "the server did not speak HTTP/2" in result.error


def test_a_response_over_http_1_1_fails_when_http_2_is_required(echo: str) -> None:
    # libcurl does not use h2c prior knowledge through an HTTP proxy; the echo server plays
    # the proxy and answers over HTTP/1.1, which the final check refuses.
    with Client(proxy=echo) as c:
        result = _get(c, "http://example.invalid/", http_version="2")
        plain = _get(c, "http://example.invalid/")
    assert plain.status == 200  # the proxy answers
    assert result.state == "failed" and result.error_kind == "protocol", result
    assert "the server did not speak HTTP/2" in result.error


# Validation -------------------------------------------------------------------------------


def test_settings_take_the_connection_fields(certs: Certs) -> None:
    s = Settings(client_cert=str(certs.a_cert), client_key=str(certs.a_key), http_version="2")
    assert (s.client_cert, s.client_key, s.http_version) == (
        str(certs.a_cert),
        str(certs.a_key),
        "2",
    )
    assert Settings(client_cert=str(certs.a)).client_key is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"http_version": "3"}, "http_version must be '1.1', '2' or None, not '3'"),
        ({"http_version": 2}, "http_version must be '1.1', '2' or None, not 2"),
        ({"http_version": "1.0"}, "http_version must be"),
        ({"client_key": "KEY"}, "client_key was given without client_cert"),
        ({"client_cert": "/nonexistent.pem"}, "client_cert '/nonexistent.pem' is not a readable"),
        ({"client_cert": "DIR"}, "is not a readable file"),
        ({"client_cert": 42}, "client_cert must be a str path to a PEM file, not int"),
        ({"client_cert": "CERT"}, "holds no private key; give its key file as client_key"),
        ({"client_cert": "KEY"}, "holds no PEM certificate"),
        ({"client_cert": "CERT", "client_key": "CERT"}, "client_key '"),
        ({"client_cert": "CERT", "client_key": "/nonexistent"}, "is not a readable file"),
    ],
)
def test_bad_connection_settings_raise_invalid_value(
    certs: Certs, fields: dict[str, Any], message: str
) -> None:
    paths = {"CERT": str(certs.a_cert), "KEY": str(certs.a_key), "DIR": str(certs.ca.parent)}
    fields = {name: paths.get(v, v) if isinstance(v, str) else v for name, v in fields.items()}
    with pytest.raises(InvalidValue, match=message.replace("(", r"\(").replace(".", r"\.")):
        Settings(**fields)
    with pytest.raises(InvalidValue):
        Client(**fields)


def test_connection_settings_come_from_the_environment(certs: Certs) -> None:
    env = {
        "POSTKEY_CLIENT_CERT": str(certs.a_cert),
        "POSTKEY_CLIENT_KEY": str(certs.a_key),
        "POSTKEY_HTTP_VERSION": "1.1",
    }
    s = Settings.from_env(env)
    assert (s.client_cert, s.client_key, s.http_version) == (
        str(certs.a_cert),
        str(certs.a_key),
        "1.1",
    )
    assert Settings.from_env({"POSTKEY_HTTP_VERSION": ""}).http_version is None
    with pytest.raises(InvalidValue, match="http_version must be"):
        Settings.from_env({"POSTKEY_HTTP_VERSION": "3"})
    with pytest.raises(InvalidValue, match="not a readable file"):
        Settings.from_env({"POSTKEY_CLIENT_CERT": "/nonexistent.pem"})


def test_request_options_are_checked(certs: Certs) -> None:
    assert check_options() is None
    assert check_options(http_version="2") == ConnectionOptions(None, None, "2")
    assert check_options(certs.a) == ConnectionOptions(str(certs.a), None, None)
    with pytest.raises(InvalidRequest, match="http_version must be"):
        check_options(http_version="3")
    with pytest.raises(InvalidRequest, match="http_version must be"):
        check_options(http_version=2)
    with pytest.raises(InvalidRequest, match="client_key was given without client_cert"):
        check_options(client_key=str(certs.a_key))
    with pytest.raises(InvalidRequest, match="not a readable file"):
        check_options(client_cert="/nonexistent.pem")
    with pytest.raises(InvalidRequest, match="must be a path to a PEM file, not bytes"):
        check_options(client_cert=b"/x.pem")


def test_a_bad_request_option_raises_before_a_key_exists(certs: Certs) -> None:
    with Client() as c:
        with pytest.raises(InvalidRequest, match="http_version must be"):
            c.get_async("https://localhost/", http_version="3")
        with pytest.raises(InvalidRequest, match="not a readable file"):
            c.get_async("https://localhost/", client_cert="/nonexistent.pem")
