"""A real Chromium (Debian's, at /usr/bin/chromium) driven by Playwright, with the page's
guards: every request to another origin is aborted and recorded, every console error and
uncaught exception is collected, and the test asserts there were none."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 60_000


def require_chromium() -> None:
    """Skip without Chromium, except under CI, where its absence is a failure."""
    if CHROMIUM.is_file():
        return
    message = f"no {CHROMIUM} (bash scripts/chromium.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Guarded:
    """A page whose foreign requests and console errors are recorded."""

    page: Page
    context: BrowserContext
    base_url: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    expected: list[re.Pattern[str]] = field(default_factory=list)

    def expect_console(self, pattern: str) -> None:
        """A console error matching ``pattern`` is what the test provokes (Chromium logs every
        4xx answer of a fetch as "Failed to load resource")."""
        self.expected.append(re.compile(pattern))

    def check(self) -> None:
        assert self.foreign == [], f"the page asked for non-local URLs: {self.foreign}"
        unexpected = [e for e in self.errors if not any(p.search(e) for p in self.expected)]
        assert unexpected == [], f"console errors: {unexpected}"

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)


@contextmanager
def guarded_page(browser: Browser, base_url: str, name: str) -> Iterator[Guarded]:
    """A fresh context (no cookies) and page on ``base_url``; on the way out a screenshot goes
    to ``test-artifacts/<name>.png`` when the test failed (see conftest), and the guards are
    checked."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    guarded = Guarded(page=page, context=context, base_url=base_url)

    def route(r: Route) -> None:
        if r.request.url.startswith(base_url + "/"):
            r.continue_()
        else:
            guarded.foreign.append(r.request.url)
            r.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            guarded.errors.append(message.text)

    context.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda exc: guarded.errors.append(f"uncaught: {exc}"))
    try:
        yield guarded
    finally:
        context.close()


def save_screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
