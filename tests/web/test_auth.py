"""Signing in to the dashboard: without a session the pages send the browser to sign-in and no
data route answers; the session cookie is HttpOnly, SameSite=Strict and not the key; a
state-changing request on it needs the page's CSRF token; signing out ends it."""

from __future__ import annotations

import httpx

from tests.service.e2e_support import API_KEY

from .browser import Guarded
from .conftest import Served
from .pages import sign_in

DATA_ROUTES = [
    "/v1/datasets",
    "/v1/jobs",
    "/v1/models",
    "/v1/workers",
    "/v1/recipes",
    "/v1/jobs/0123/events",
    "/v1/jobs/0123/history",
    "/v1/datasets/0123/samples",
]
_FETCH = """async ([method, path, csrf]) => {
  const headers = csrf === null ? {} : { "X-CSRF-Token": csrf };
  const r = await fetch(path, { method, headers });
  return [r.status, await r.json()];
}"""


def test_without_a_session_pages_redirect_and_data_routes_refuse(
    web: Guarded, served: Served
) -> None:
    for path in ("/", "/jobs", "/datasets", "/jobs/new", "/models", "/models/abc", "/jobs/abc"):
        web.goto(path)
        web.page.wait_for_url("**/signin?next=*")
    for path in DATA_ROUTES:
        response = httpx.get(served.url + path, timeout=30)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
    web.expect_console(r"status of 401")
    status, body = web.page.evaluate(_FETCH, ["GET", "/v1/jobs", None])
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_a_wrong_key_is_refused_on_the_page(web: Guarded) -> None:
    web.expect_console(r"status of 401")
    sign_in(web, "/models", key="not-the-key")
    assert web.page.inner_text(".error") == "That API key is not accepted."
    assert "/signin" in web.page.url
    assert web.context.cookies() == []


def test_session_cookie_csrf_and_sign_out(web: Guarded, served: Served) -> None:
    sign_in(web, "/jobs")
    (cookie,) = web.context.cookies()
    assert cookie["name"] == "retinanet_session" and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert API_KEY not in cookie["value"]
    assert "retinanet_session" not in web.page.evaluate("document.cookie")  # scripts cannot read it
    csrf = web.page.get_attribute('meta[name="csrf-token"]', "content")
    assert csrf

    assert web.page.evaluate(_FETCH, ["GET", "/v1/jobs", None])[0] == 200
    web.expect_console(r"status of (403|404|401)")
    for method, path in (("POST", "/v1/jobs/0123/cancel"), ("DELETE", "/v1/datasets/0123")):
        status, body = web.page.evaluate(_FETCH, [method, path, None])
        assert (status, body["error"]["code"]) == (403, "csrf_failed"), path
        status, _ = web.page.evaluate(_FETCH, [method, path, "0" * 64])
        assert status == 403, path
        status, body = web.page.evaluate(_FETCH, [method, path, csrf])
        assert status == 404, body  # past the CSRF check: the job does not exist
    # The cookie alone, sent from elsewhere (no browser's SameSite to stop it), is still no
    # licence to change state; the header key works as ever.
    jar = {"retinanet_session": cookie["value"]}
    assert httpx.post(f"{served.url}/v1/jobs/0123/cancel", cookies=jar).status_code == 403
    keyed = httpx.post(f"{served.url}/v1/jobs/0123/cancel", headers={"X-API-Key": API_KEY})
    assert keyed.status_code == 404

    web.page.click(".signout button")
    web.page.wait_for_url("**/signin")
    assert web.context.cookies() == []
    assert web.page.evaluate(_FETCH, ["GET", "/v1/jobs", None])[0] == 401
