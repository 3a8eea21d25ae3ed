"""Security headers on every response, added in one place: a pure ASGI middleware around the whole app.

Three Content-Security-Policies, chosen by path:

- pages (``/console``, ``/demo``, ``/static``): own scripts, styles and images only, plus ``data:`` images (the
  report plots); no inline script or style, forms post only to this origin;
- reports (``/v1/reports``, the console's report downloads): the report is one self-contained HTML file with an
  inline stylesheet and ``data:`` plots, and no script at all: inline styles are allowed, scripts are not;
- everything else (JSON API, health, metrics): nothing may load (``default-src 'none'``).

Every policy forbids framing (``frame-ancestors 'none'``), and every response gets ``nosniff`` and
``Referrer-Policy: no-referrer``. The OpenAPI viewer pages under ``/schema`` load their scripts from a CDN, so they
get no CSP (their JSON document does).
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
)
REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
API_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
PAGE_PREFIXES = ("/console", "/demo", "/static")
REPORT_PREFIXES = ("/v1/reports", "/console/reports")
_UNPOLICED = ("/schema",)
_COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def policy_for(path: str) -> str | None:
    """The Content-Security-Policy for a request path (``None``: the OpenAPI viewer pages)."""
    if _under(path, REPORT_PREFIXES):
        return REPORT_POLICY
    if _under(path, PAGE_PREFIXES):
        return PAGE_POLICY
    if _under(path, _UNPOLICED) and not path.endswith(".json") and not path.endswith(".yaml"):
        return None
    return API_POLICY


class SecurityHeadersMiddleware:
    """Add ``Content-Security-Policy``, ``X-Content-Type-Options`` and ``Referrer-Policy`` to every response.

    Args:
        app: The wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["path"])
        extra = [*_COMMON, (b"content-security-policy", policy.encode())] if policy else list(_COMMON)
        names = {name for name, _ in extra}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in names]
                message["headers"] = [*headers, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
