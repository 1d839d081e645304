"""The live dashboard: a page at ``/`` behind the gateway's auth, its files under ``/static/``.

The page is a shell of empty panels; its scripts (``static/dashboard.js`` polls the gateway's
stats endpoint, ``static/lookup.js`` looks keys up through the API, both on ``static/common.js``)
fill them, so the dashboard holds no data of its own.
"""

from __future__ import annotations

import hashlib
import html
import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from string import Template
from typing import Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).with_name("static")

#: Scripts and styles only from this origin's files (none inline), fetches only to this origin:
#: the page shows untrusted text (URLs, headers, bodies) and must never run any of it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser posts the sign-in form with
    # "Origin: null", which the gateway refuses as it would a post from another site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Authorization, Cookie",
}
_CHALLENGE = {**_HEADERS, "WWW-Authenticate": 'Bearer realm="postkey"'}
_REFUSED = "That API key was not accepted."


class Named(Protocol):
    """What the page needs of a tenant: its name, shown in the page's header."""

    @property
    def name(self) -> str: ...


#: Takes a request and returns its tenant, or None (or an awaitable of either).
Authenticate = Callable[[Request], Named | Awaitable[Named | None] | None]

_STYLES = ("vendor/uPlot.min.css", "dashboard.css")
_SCRIPTS = ("vendor/uPlot.iife.min.js", "common.js", "lookup.js", "dashboard.js")  # in order
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_TENANT_SLOT = "\x00tenant\x00"  # where the page names the tenant; never in the template

_HEAD = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<title>$title</title>
$links
</head>
""")

_PAGE = Template("""$head<body $attrs>
<header class="bar">
<h1>postkey</h1>
<span class="tenant" id="tenant" title="tenant">$tenant</span>
<span class="live" id="live" data-state="connecting" role="status">connecting&hellip;</span>
<span class="uptime" id="uptime"></span>
$logout
</header>
<main>
<section class="panel counters" aria-label="Counters">
<div class="counter-grid">$counters</div>
<div class="failed-line"><h2>Failed by kind</h2>
<ul id="failed-kinds" class="chips"><li class="empty">none</li></ul></div>
</section>
<section class="panel chart-panel" aria-label="Throughput">
<h2>Throughput <small>requests/s, last 2 minutes</small></h2>
<div class="chart" id="chart-throughput"></div>
</section>
<section class="panel chart-panel" aria-label="Latency">
<h2>Latency <small>ms, p50 and p99 of requests completed each second</small></h2>
<div class="chart" id="chart-latency"></div>
</section>
<section class="panel lookup" aria-label="Key lookup">
<h2>Key lookup</h2>
<form id="lookup-form" class="lookup-form" autocomplete="off">
<input id="lookup-key" name="key" type="text" placeholder="a request's key" required
 spellcheck="false" aria-label="Key">
<button type="submit">Look up</button>
</form>
<p class="muted lookup-hint">Paste a key, or pick one in the recent requests.</p>
<div id="lookup-result" class="lookup-result" aria-live="polite" hidden></div>
</section>
<section class="panel hosts" aria-label="Slowest hosts">
<h2>Slowest hosts <small>by p99</small></h2>
<div class="table-wrap"><table id="hosts">
<thead><tr><th>Host</th><th class="num">Count</th><th class="num">p50 ms</th>
<th class="num">p99 ms</th><th class="num">Errors</th></tr></thead>
<tbody><tr class="empty"><td colspan="5">no requests yet</td></tr></tbody>
</table></div>
</section>
<section class="panel recent" aria-label="Recent requests">
<h2>Recent requests</h2>
<div class="table-wrap"><table id="recent">
<thead><tr><th>Submitted</th><th>Key</th><th>Method</th><th>URL</th><th>State</th>
<th class="num">Status</th><th class="num">ms</th></tr></thead>
<tbody><tr class="empty"><td colspan="7">no requests yet</td></tr></tbody>
</table></div>
</section>
</main>
</body>
</html>
""")

_SIGN_IN = Template("""$head<body class="login-body">
<main class="login panel">
<h1>postkey</h1>
<p>Sign in with an API key to see the dashboard.</p>
$note<form method="post" action="$login_url">
<label for="api_key">API key</label>
<input id="api_key" name="api_key" type="password" autocomplete="off" required autofocus>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
""")


class _Files(StaticFiles):
    """StaticFiles whose answers say ``nosniff`` and may be cached for a day: the page links
    them with a digest of their content, so a changed file gets a new URL anyway."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response


def _url(name: str) -> str:
    """A static file's URL with a digest of its content, so a browser never runs a cached
    script against a newer gateway (StaticFiles ignores the query)."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return html.escape(f"/static/{name}?v={digest}")


def _head(title: str, *, scripts: bool) -> str:
    links = [f'<link rel="stylesheet" href="{_url(name)}">' for name in _STYLES]
    if scripts:
        links += [f'<script src="{_url(name)}" defer></script>' for name in _SCRIPTS]
    return _HEAD.substitute(title=html.escape(title), links="\n".join(links))


def _counter(name: str, label: str, kind: str = "") -> str:
    return (
        f'<div class="counter{kind}" data-counter="{name}">'
        f'<span class="counter-label">{label}</span>'
        f'<span class="counter-value" id="c-{name}">&ndash;</span></div>'
    )


def _page(urls: dict[str, str], logout_url: str | None, poll_ms: int) -> str:
    """The dashboard, with `_TENANT_SLOT` where the tenant's name goes."""
    attrs = [f'data-{name}-url="{html.escape(url)}"' for name, url in urls.items()]
    logout = ""
    if logout_url:
        logout = (
            f'<form class="logout" method="post" action="{html.escape(logout_url)}">'
            '<button type="submit" class="quiet">Sign out</button></form>'
        )
    counters = [
        _counter("submitted", "Submitted"),
        _counter("in_flight", "In flight"),
        *(_counter(c, c, " status-" + c) for c in _STATUS_CLASSES),
        _counter("failed", "Failed", " status-failed"),
        _counter("cancelled", "Cancelled"),
    ]
    return _PAGE.substitute(
        head=_head("postkey dashboard", scripts=True),
        attrs=" ".join([*attrs, f'data-poll-ms="{poll_ms}"']),
        tenant=_TENANT_SLOT,
        logout=logout,
        counters="".join(counters),
    )


def _sign_in(login_url: str, message: str | None) -> str:
    note = f'<p class="login-error" role="alert">{html.escape(message)}</p>\n' if message else ""
    return _SIGN_IN.substitute(
        head=_head("postkey: sign in", scripts=False),
        note=note,
        login_url=html.escape(login_url),
    )


def dashboard_routes(
    authenticate: Authenticate | None = None,
    *,
    stats_url: str = "/v1/dashboard/stats",
    requests_url: str = "/v1/requests",
    login_url: str = "/login",
    logout_url: str = "/logout",
    session_cookie: str = "postkey_session",
    poll_ms: int = 1000,
) -> list[BaseRoute]:
    """The dashboard's routes: the page at ``/`` and its files under ``/static/``.

    ``authenticate(request)`` returns the request's tenant (anything with a ``name``), or None;
    it may be a coroutine function. None means the gateway's own (`postkey.gateway.authenticate`:
    a bearer API key or the session cookie). Unauthenticated, ``/`` answers 401 with the sign-in
    form (saying the key was refused after ``/?login=failed``). The page reads ``stats_url`` every
    ``poll_ms`` milliseconds and looks keys up at ``requests_url + "/" + key``. A page shown
    for a ``session_cookie`` has a button that signs out by posting to ``logout_url`` (a page
    shown for a bearer key, or with auth off, has nothing to sign out of). The static files are
    public: they are the same for everyone and hold no data.

    Raises:
        ValueError: ``poll_ms`` below 100.
    """
    if poll_ms < 100:
        raise ValueError(f"poll_ms must be at least 100, not {poll_ms}")
    if authenticate is None:
        from ._auth import authenticate as gateway_auth  # noqa: PLC0415  # only when asked for

        authenticate = gateway_auth
    who: Authenticate = authenticate
    urls = {"stats": stats_url, "requests": requests_url, "login": login_url}
    # Two pages, with and without the sign-out button, each split where the tenant's name goes.
    pages = {
        session: _page(urls, logout_url if session else None, poll_ms).partition(_TENANT_SLOT)
        for session in (True, False)
    }
    sign_in, refused = _sign_in(login_url, None), _sign_in(login_url, _REFUSED)

    async def dashboard(request: Request) -> Response:
        found = who(request)
        tenant = await found if inspect.isawaitable(found) else found
        if tenant is None:
            failed = request.query_params.get("login") == "failed"
            return HTMLResponse(refused if failed else sign_in, 401, _CHALLENGE)
        session = session_cookie in request.cookies and "authorization" not in request.headers
        before, _, after = pages[session]
        return HTMLResponse(before + html.escape(tenant.name) + after, 200, _HEADERS)

    return [
        Route("/", dashboard, methods=["GET"], name="dashboard"),
        Mount("/static", app=_Files(directory=STATIC_DIR), name="dashboard-static"),
    ]
