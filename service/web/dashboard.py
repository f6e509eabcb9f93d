"""``install_dashboard``: the pages, sign-in and static files on the app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.web import pages, signin

STATIC_DIR = Path(__file__).parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """The pages, sign-in and ``/static`` on ``app``; none of it is in the OpenAPI document."""
    app.include_router(signin.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
