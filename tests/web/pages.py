"""What the dashboard tests do on a page: sign in, drop a file, call the API beside it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx

from tests.service.e2e_support import API_KEY

from .browser import Guarded

_DROP = """([selector, name, mime, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: mime }));
  const target = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    const init = { bubbles: true, cancelable: true, dataTransfer: transfer };
    target.dispatchEvent(new DragEvent(type, init));
  }
}"""


def sign_in(web: Guarded, path: str = "/jobs", key: str = API_KEY) -> None:
    """Open ``path``, get sent to the sign-in page, sign in with ``key``."""
    web.goto(path)
    web.page.wait_for_url("**/signin?next=*")
    web.page.fill('input[name="api_key"]', key)
    web.page.click('button[type="submit"]')
    if key == API_KEY:
        web.page.wait_for_url(f"**{path}")


def drop_file(web: Guarded, selector: str, path: Path, mime: str) -> None:
    """Drag and drop ``path`` onto ``selector``, as a person dropping a file there."""
    payload = base64.b64encode(path.read_bytes()).decode()
    web.page.evaluate(_DROP, [selector, path.name, mime, payload])


def api(served_url: str, method: str, path: str, **kwargs: Any) -> Any:
    """The same question asked of the API with the key, as a script would."""
    response = httpx.request(
        method, served_url + path, headers={"X-API-Key": API_KEY}, timeout=120, **kwargs
    )
    response.raise_for_status()
    return response.json()
