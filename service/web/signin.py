"""Sign-in and sign-out: the API key is posted once (never in a URL) and exchanged for the
session cookie of ``service.web.session``."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from service.api.deps import SettingsDep
from service.web.session import COOKIE, SESSION_S, app_secret, csrf_ok, issue, key_accepted
from service.web.templating import page_csrf, render_public

router = APIRouter(include_in_schema=False)

_KEY_MAX = 1024


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (no open redirect)."""
    # Browsers drop tabs and newlines from URLs and read a backslash as a slash, so "/\t/x"
    # or "/\\x" would leave the site: only plain paths pass.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/jobs"
    plain = all(c.isprintable() and not c.isspace() for c in target)
    return target if plain else "/jobs"


def _same_origin(request: Request) -> bool:
    """A form posted from this site: its Origin (or Referer) names this host, if it says any."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.url.netloc


@router.get("/signin")
async def signin_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    if page_csrf(request, settings) is not None:  # auth off, or signed in already
        return RedirectResponse(safe_next(next), status_code=303)
    return render_public(request, "signin.html", title="Sign in", next=safe_next(next))


@router.post("/signin")
async def signin(
    request: Request,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=_KEY_MAX)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/jobs",
) -> Response:
    target, secret = safe_next(next), app_secret(request)
    if settings.auth_disabled:
        return RedirectResponse(target, status_code=303)
    digest = key_accepted(settings, api_key) if api_key else None
    if digest is None or secret is None or not _same_origin(request):
        return render_public(
            request,
            "signin.html",
            title="Sign in",
            next=target,
            error="That API key is not accepted.",
            status_code=401,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        issue(secret, digest),
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def signout(request: Request, csrf: Annotated[str, Form(max_length=256)] = "") -> Response:
    """Clears the cookie; the form carries the page's CSRF token, so no other site can sign a
    browser out."""
    token = request.cookies.get(COOKIE)
    if token and not csrf_ok(request, token, csrf):
        return Response("the sign-out form's CSRF token is missing or wrong", status_code=403)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
