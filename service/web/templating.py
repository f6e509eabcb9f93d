"""Rendering a page shell: the sign-in guard, the CSRF token, the common context."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service.settings import Settings
from service.web.session import app_secret, csrf_token, session_of

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

_SECURITY_HEADERS = {
    # Every script and style is the service's own file; nothing inline, nothing from elsewhere.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page_csrf(request: Request, settings: Settings) -> str | None:
    """The CSRF token the page embeds ("" when auth is off), or None: not signed in."""
    if settings.auth_disabled:
        return ""
    session, secret = session_of(request, settings), app_secret(request)
    if session is None or secret is None:
        return None
    return csrf_token(secret, session)


def signin_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)


def render(
    request: Request,
    settings: Settings,
    template: str,
    *,
    title: str,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """``template`` for a signed-in browser, else a redirect to the sign-in page."""
    csrf = page_csrf(request, settings)
    if csrf is None:
        return signin_redirect(request)
    return render_public(
        request,
        template,
        title=title,
        status_code=status_code,
        csrf=csrf,
        auth_on=not settings.auth_disabled,
        **context,
    )


def render_public(
    request: Request, template: str, *, title: str, status_code: int = 200, **context: Any
) -> Response:
    """``template`` without the sign-in guard (the sign-in page itself)."""
    response = templates.TemplateResponse(
        request, template, {"title": title, **context}, status_code=status_code
    )
    response.headers.update(_SECURITY_HEADERS)
    return response
