"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a real
``postkey serve`` process sending to the local echo server (and, in process, its routes with an
authenticate function of their own).

Nothing here waits a fixed time: every check polls the page until what it expects shows up, within
a bound, so a slow machine makes the test slower, never wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)
from starlette.applications import Starlette
from starlette.requests import Request

from postkey.gateway._dashboard import dashboard_routes

from .gateway_fixtures import TestClient  # without Starlette's httpx deprecation warning
from .gateway_process import ServeProcess, free_port, keys_file

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
API_KEY = "pk_dashboard-test-key-0123456789"
BOUND_MS = 15_000  # the longest any one check waits for the page
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'


@dataclass
class Gateway:
    url: str
    echo: str

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the gateway's API with the test tenant's key; (status, parsed JSON)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {API_KEY}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def submit(self, requests: list[dict[str, Any]]) -> list[str]:
        status, answer = self.api("POST", "/v1/requests/batch", {"requests": requests})
        assert status == 202, answer
        keys: list[str] = answer["keys"]
        return keys


@dataclass
class Watched:
    """A page and what went wrong in it: script errors, and console errors (a CSP refusal is
    one)."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture(scope="module")
def gateway(echo: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``postkey serve`` in its own process, one tenant whose allow-list admits loopback."""
    keys = keys_file(tmp_path_factory.mktemp("gateway"), dash=API_KEY)
    serve = ServeProcess("--keys", str(keys), "--log-level", "warning")
    try:
        serve.wait_ready()
        yield Gateway(serve.url, echo)
    finally:
        serve.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    expect.set_options(timeout=BOUND_MS)  # expect() has its own timeout (5 s by default)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            yield browser
            browser.close()
    finally:
        expect.set_options(timeout=5_000)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[dict[str, int]], Watched]]:
    """Opens a page in a fresh browser context (no cookies) of a given viewport; every
    context is closed after the test, however it ends."""
    contexts: list[BrowserContext] = []

    def open_page(viewport: dict[str, int]) -> Watched:
        context = browser.new_context(viewport=viewport, device_scale_factor=1)
        contexts.append(context)
        context.set_default_timeout(BOUND_MS)
        page = context.new_page()
        watched = Watched(page)
        page.on("console", watched.on_console)
        page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
        return watched

    yield open_page
    for context in contexts:
        context.close()


def _sign_in(watched: Watched, gateway: Gateway) -> Page:
    """Sign in through the form, as a person would; the page is then the live dashboard."""
    page = watched.page
    response = page.goto(gateway.url + "/")
    assert response is not None and response.status == 401
    page.fill("#api_key", API_KEY)
    with page.expect_navigation():
        page.click("button[type=submit]")
    watched.errors.clear()  # the sign-in page's own 401 is logged as a failed load
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    return page


def _counter(page: Page, name: str) -> int:
    page.wait_for_selector(f"#c-{name}[data-value]", state="attached")
    return int(page.get_attribute(f"#c-{name}", "data-value") or "0")


def _wait_counter_at_least(page: Page, name: str, at_least: int) -> None:
    page.wait_for_function(
        "([id, n]) => Number(document.getElementById(id).dataset.value) >= n",
        arg=[f"c-{name}", at_least],
        timeout=BOUND_MS,
    )


def _mixed_batch(gateway: Gateway, n: int, delay_ms: int = 200) -> list[dict[str, Any]]:
    """``n`` requests that take a while, and a few that end otherwise (for every panel)."""
    closed = f"http://127.0.0.1:{free_port()}/nothing-listens-here"
    slow = [
        {"method": "POST", "url": f"{gateway.echo}/delay/{delay_ms + 20 * i}", "body": f"#{i}"}
        for i in range(n)
    ]
    others = [
        {"url": f"{gateway.echo}/status/404"},
        {"url": f"{gateway.echo}/status/503"},
        {"url": f"{gateway.echo}/redirect-to?url=/get&status=302", "follow_redirects": False},
        {"url": closed, "timeout_ms": 2000},
    ]
    return slow + others


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_page_runs_no_inline_script_and_its_files_are_packaged(gateway: Gateway) -> None:
    signed_in = {"Authorization": f"Bearer {API_KEY}"}
    for headers, status in (({}, 401), (signed_in, 200)):
        code, head, page = _get(gateway.url + "/", headers)
        assert code == status
        policy = head["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        assert head["Cache-Control"] == "no-store"
        assert b"<script>" not in page and b" style=" not in page
        assert not re.search(rb"\son[a-z]+=", page)  # no inline event handlers
    assert b'<span class="tenant" id="tenant" title="tenant">dash</span>' in page
    assert b"Sign out" not in page  # a bearer key has no session to end
    # The files are public (the same for everyone, no data in them); versioned by content.
    for path in re.findall(rb'(?:src|href)="(/static/[^"?]+)\?v=[0-9a-f]{12}"', page):
        code, head, content = _get(gateway.url + path.decode())
        assert code == 200 and content, path
        assert head["X-Content-Type-Options"] == "nosniff"
    code, _, licence = _get(gateway.url + "/static/vendor/uPlot.LICENSE")
    assert code == 200 and b"MIT License" in licence


@dataclass(frozen=True)
class _Tenant:
    name: str


def _bearer_auth(request: Request) -> _Tenant | None:
    ok = request.headers.get("authorization") == "Bearer k"
    return _Tenant("<b>acme</b>") if ok else None


async def _async_bearer_auth(request: Request) -> _Tenant | None:
    return _bearer_auth(request)


@pytest.mark.parametrize("auth", [_bearer_auth, _async_bearer_auth])
def test_the_routes_take_any_authenticate_and_escape_what_they_show(
    auth: Callable[[Request], Any],
) -> None:
    app = Starlette(routes=dashboard_routes(auth, stats_url="/s?x=<1>", poll_ms=500))
    with TestClient(app) as client:
        answer = client.get("/")
        assert answer.status_code == 401 and 'action="/login"' in answer.text
        assert "not accepted" not in answer.text
        assert "not accepted" in client.get("/?login=failed").text
        answer = client.get("/", headers={"Authorization": "Bearer k"})
        assert answer.status_code == 200
        assert "&lt;b&gt;acme&lt;/b&gt;" in answer.text and "<b>" not in answer.text
        assert 'data-stats-url="/s?x=&lt;1&gt;"' in answer.text
        assert 'data-poll-ms="500"' in answer.text
        assert client.head("/", headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/static/no-such-file.js").status_code == 404
        assert client.get("/static/../_dashboard.py").status_code == 404
    with pytest.raises(ValueError, match="poll_ms"):
        dashboard_routes(auth, poll_ms=10)


def test_without_a_session_the_page_is_a_401_sign_in_form_and_signing_out_returns_there(
    open_page: Callable[[dict[str, int]], Watched], gateway: Gateway
) -> None:
    page = open_page(DESKTOP).page
    response = page.goto(gateway.url + "/")
    assert response is not None and response.status == 401
    expect(page.locator("form[action='/login'] input[name=api_key]")).to_be_visible()
    assert page.locator("#c-submitted").count() == 0  # no dashboard before signing in

    page.fill("#api_key", "pk_not-a-key")
    with page.expect_navigation():
        page.click("button[type=submit]")
    expect(page.locator(".login-error")).to_contain_text("not accepted")
    assert page.locator("#c-submitted").count() == 0

    watched = open_page(DESKTOP)
    page = _sign_in(watched, gateway)
    expect(page.locator("#tenant")).to_have_text("dash")
    with page.expect_navigation():
        page.click("form.logout button")
    expect(page.locator("#api_key")).to_be_visible()
    response = page.goto(gateway.url + "/")  # the cookie is gone
    assert response is not None and response.status == 401


def test_the_numbers_follow_a_batch_while_it_runs(
    open_page: Callable[[dict[str, int]], Watched], gateway: Gateway
) -> None:
    watched = open_page(DESKTOP)
    page = _sign_in(watched, gateway)
    before = {name: _counter(page, name) for name in ("submitted", "2xx", "4xx", "5xx", "failed")}

    batch = _mixed_batch(gateway, 16, delay_ms=2000)  # long enough to be seen in flight
    keys = gateway.submit(batch)

    _wait_counter_at_least(page, "in_flight", 1)
    _wait_counter_at_least(page, "submitted", before["submitted"] + len(batch))
    _wait_counter_at_least(page, "2xx", before["2xx"] + 16)
    for name in ("4xx", "5xx", "failed"):  # the batch's 404, 503 and refused connection
        _wait_counter_at_least(page, name, before[name] + 1)
    expect(page.locator("#failed-kinds li[data-kind=connect]")).to_be_visible()
    expect(page.locator(f"#recent tr[data-key='{keys[0]}']")).to_be_visible()
    echo_host = urlsplit(gateway.echo).netloc
    expect(page.locator("#hosts tbody td").filter(has_text=echo_host)).to_be_visible()
    for chart in ("#chart-throughput", "#chart-latency"):
        expect(page.locator(f"{chart} canvas").first).to_be_visible()
    assert watched.errors == []


def test_the_key_lookup_shows_a_result_with_its_body_as_text(
    open_page: Callable[[dict[str, int]], Watched], gateway: Gateway
) -> None:
    watched = open_page(DESKTOP)
    page = _sign_in(watched, gateway)
    [key] = gateway.submit([{"method": "POST", "url": f"{gateway.echo}/anything", "body": XSS}])
    status, _ = gateway.api("GET", f"/v1/requests/{key}?wait=10")
    assert status == 200

    # From the recent table: a click on the key looks it up.
    page.locator(f"#recent a.key-link[data-key='{key}']").click()
    expect(page.locator("#lookup-status")).to_have_text("200")
    expect(page.locator("#lookup-state")).to_have_text("done")
    result = page.locator("#lookup-result")
    expect(result.locator(".headers-table")).to_contain_text("Content-Type")
    expect(result.locator(".timings")).to_contain_text("Total")
    body = page.locator("#lookup-body")
    expect(body).to_contain_text('"method": "POST"')
    expect(body).to_contain_text("<script>window.__pwned=1</script>")  # shown, not run
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#lookup-result img").count() == 0

    assert watched.errors == []

    # Typed in: an unknown key says so (the browser logs the 404 itself).
    page.fill("#lookup-key", "no-such-key")
    page.click("#lookup-form button")
    expect(page.locator("#lookup-message")).to_contain_text("unknown key")
    assert [e for e in watched.errors if "status of 404" not in e] == []


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_the_layout_fits_desktop_and_phone_widths(
    open_page: Callable[[dict[str, int]], Watched],
    gateway: Gateway,
    name: str,
    viewport: dict[str, int],
) -> None:
    gateway.submit(_mixed_batch(gateway, 8, delay_ms=1500))  # some still in flight, likely
    watched = open_page(viewport)
    page = _sign_in(watched, gateway)
    expect(page.locator("#recent tbody tr[data-key]").first).to_be_visible()
    page.locator("#recent tr:has(.badge.s-2xx) a.key-link").first.click()  # a lookup, shown
    expect(page.locator("#lookup-status")).to_have_text("200")
    page.wait_for_function(
        "document.querySelectorAll('#chart-throughput canvas, #chart-latency canvas').length >= 2"
    )
    for selector in (
        "#c-submitted",
        "#c-in_flight",
        "#c-2xx",
        "#c-failed",
        "#chart-throughput canvas",
        "#chart-latency canvas",
        "#lookup-key",
        "#hosts",
        "#recent",
    ):
        expect(page.locator(selector).first).to_be_visible()
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )
    assert max(widths[:2]) <= widths[2], f"horizontal overflow at {name}: {widths}"
    for selector in ("#chart-throughput", "#chart-latency", ".counters", "#recent"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0
        assert box["x"] + box["width"] <= viewport["width"], f"{selector} overflows at {name}"
    page.evaluate("window.scrollTo(0, 0)")  # the lookup scrolled its result into view
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / f"dashboard-{name}.png"))
    assert (DOCS / f"dashboard-{name}.png").stat().st_size > 10_000
    assert watched.errors == []
