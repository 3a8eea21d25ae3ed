"""What the console and the demo page share: templates, rendering, and signing in and out.

Pages are rendered on the server with Jinja2 (autoescape on for every template, so anything a person or a record
supplies is shown as text) and need no JavaScript.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response
from litestar.response import Redirect

from app.state import Services
from app.web.sessions import (
    CSRF_FIELD,
    SIGN_IN_CSRF_MAX_AGE_S,
    Portal,
    Session,
    SessionStore,
    check_csrf,
    clear_cookies,
    csrf_refused,
    current_session,
    new_token,
    session_cookie,
    sign_in_cookie,
    tokens_match,
)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
HTML = "text/html; charset=utf-8"


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The pages' Jinja2 environment (autoescaped, loaded once)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["csrf_field"] = CSRF_FIELD
    return env


def render(template: str, status: int = 200, **context: Any) -> Response[str]:
    """A page rendered from a template; never cached (pages show the session's data)."""
    body = environment().get_template(template).render(**context)
    return Response(body, status_code=status, media_type=HTML, headers={"Cache-Control": "no-store"})


def sessions_of(services: Services) -> SessionStore:
    """The service's page sessions."""
    return services.sessions


def session_or_none(request: Request[Any, Any, Any], portal: Portal, services: Services) -> Session | None:
    """The request's live session for ``portal``, or ``None``."""
    return current_session(request, portal, sessions_of(services))


def to_sign_in(portal: Portal) -> Redirect:
    """Where a request without a live session goes."""
    return Redirect(f"{portal.path}/sign-in", status_code=303)


async def posted_form(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    """The posted form, after its CSRF token has been checked against the session's.

    Raises:
        ApiError: 403 ``csrf_failed``.
    """
    form = dict(await request.form())
    check_csrf(session, form)
    return form


def sign_in_page(
    request: Request[Any, Any, Any], portal: Portal, title: str, message: str | None = None, status: int = 200
) -> Response[str]:
    """The sign-in form, with a fresh double-submit CSRF token in the form and in a cookie."""
    token = new_token()
    response = render(
        "sign_in.html",
        status,
        portal=portal,
        title=title,
        message=message,
        signin_token=token,
        roles=", ".join(portal.roles),
    )
    response.set_cookie(sign_in_cookie(portal, request, token, SIGN_IN_CSRF_MAX_AGE_S))
    return response


async def sign_in(
    request: Request[Any, Any, Any], portal: Portal, services: Services, title: str, landing: str
) -> Response[Any]:
    """Check a posted key; on success start a session and go to ``landing``, else show why, with no session.

    Raises:
        ApiError: 403 ``csrf_failed`` when the form's token does not match its cookie.
    """
    form = dict(await request.form())
    cookie = request.cookies.get(portal.sign_in_cookie, "")
    if not tokens_match(cookie, form.get(CSRF_FIELD)):
        raise csrf_refused()
    key = form.get("api_key")
    principal = services.keys.verify(key.strip()) if isinstance(key, str) else None
    if principal is None:
        return sign_in_page(request, portal, title, "Sign-in refused: that key is unknown or revoked.", 401)
    if principal.role not in portal.roles:
        needs = " or ".join(portal.roles)
        message = f"Sign-in refused: a {principal.role} key cannot open this page (it needs a {needs} key)."
        return sign_in_page(request, portal, title, message, 403)
    session_id, _ = sessions_of(services).create(principal, portal.name)
    response = Redirect(f"{portal.path}{landing}", status_code=303)
    response.set_cookie(session_cookie(portal, request, session_id, None))
    response.set_cookie(sign_in_cookie(portal, request, "", 0))
    return response


async def sign_out(request: Request[Any, Any, Any], portal: Portal, services: Services) -> Response[Any]:
    """End the session (after checking the form's CSRF token) and go back to the sign-in page.

    Raises:
        ApiError: 403 ``csrf_failed``.
    """
    session = session_or_none(request, portal, services)
    if session is not None:
        await posted_form(request, session)
        sessions_of(services).end(request.cookies.get(portal.cookie, ""))
    response = to_sign_in(portal)
    clear_cookies(portal, request, response)
    return response
