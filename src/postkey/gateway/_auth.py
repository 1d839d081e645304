"""Who is calling: ``Authorization: Bearer <API key>``, or for a browser the ``postkey_session``
cookie (HttpOnly, SameSite=Strict) that `login` sets, accepted on GET and HEAD only so that a
cookie can never drive a state change (CSRF)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ._body import read_body
from ._config import ANONYMOUS
from ._errors import ApiError
from ._gateway import gateway_of
from ._tenants import Tenant

COOKIE = "postkey_session"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM_BYTES = 4096
_OTHER_SITES = frozenset({"cross-site", "same-site"})


def authenticate(request: Request) -> Tenant | None:
    """The tenant ``request`` is from, or None: a bearer API key, or on GET / HEAD the session
    cookie. With auth off (``--no-auth``) every request is tenant ``default``."""
    config = gateway_of(request).config
    if not config.auth or config.keys is None:
        return ANONYMOUS
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return config.keys.tenant_for(token.strip())
    if request.method in _SAFE_METHODS:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return config.keys.tenant_for(cookie)
    return None


def require_tenant(request: Request) -> Tenant:
    """`authenticate`, or a 401 refusal.

    Raises:
        ApiError: 401 with ``WWW-Authenticate: Bearer``.
    """
    tenant = authenticate(request)
    if tenant is None:
        raise ApiError(
            401,
            "an API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="postkey"'},
        )
    return tenant


def _check_origin(request: Request) -> None:
    # A form posted from another site: browsers send its Origin, which must be this host, and
    # (the current ones) Sec-Fetch-Site. "Origin: null" is what a sandboxed frame or a page
    # redirected across sites sends: another site can post with it, so it is refused too.
    origin = request.headers.get("origin")
    host = request.headers.get("host", "").lower()
    site = request.headers.get("sec-fetch-site", "").lower()
    if (origin is not None and urlsplit(origin).netloc.lower() != host) or site in _OTHER_SITES:
        raise ApiError(403, "cross-site form post refused")


async def login(request: Request) -> Response:
    """``POST /login`` with the form field ``api_key``: sets the session cookie, 303 to ``/``.
    A wrong key: 303 to ``/?login=failed``, no cookie."""
    _check_origin(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM:
        raise ApiError(415, f"send the login form as {_FORM}")
    config = gateway_of(request).config
    raw = await read_body(request, _MAX_FORM_BYTES, config.body_timeout_s)
    try:
        fields = parse_qs(raw.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the login form is not valid urlencoded UTF-8") from None
    api_key = (fields.get("api_key") or [""])[0].strip()
    keys = config.keys
    if not config.auth or keys is None:
        return RedirectResponse("/", 303)
    if keys.tenant_for(api_key) is None:
        return RedirectResponse("/?login=failed", 303)
    response = RedirectResponse("/", 303)
    response.set_cookie(
        COOKIE,
        api_key,
        path="/",
        httponly=True,
        samesite="strict",
        secure=config.secure_cookies or request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """``POST /logout``: clears the session cookie, 303 to ``/``."""
    _check_origin(request)
    response = RedirectResponse("/", 303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def auth_routes() -> list[BaseRoute]:
    """``POST /login`` and ``POST /logout``."""
    return [Route("/login", login, methods=["POST"]), Route("/logout", logout, methods=["POST"])]
