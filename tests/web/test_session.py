"""Session tokens (``service.web.session``): signed, expiring, tied to a configured key, never
the key; and a service with auth off serves the pages without sign-in."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings, hash_key
from service.web.session import SESSION_S, csrf_token, issue, load_secret, verify
from service.web.signin import safe_next

KEY = "a-key-for-sessions"


def test_tokens_are_signed_expire_and_end_with_their_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_key_hashes=(hash_key(KEY), hash_key("other")))
    secret = load_secret(tmp_path)
    assert load_secret(tmp_path) == secret  # one secret per data directory, kept
    assert (tmp_path / "session.secret").stat().st_mode & 0o777 == 0o600
    token = issue(secret, hash_key(KEY), now_s=1000.0)
    assert KEY not in token and hash_key(KEY) not in token
    assert verify(secret, settings, token, now_s=1000.0 + SESSION_S - 1)
    assert not verify(secret, settings, token, now_s=1000.0 + SESSION_S + 1)  # expired
    assert not verify(b"another secret", settings, token, now_s=1000.0)
    body, _, mac = token.rpartition(".")
    later = body.replace(".", ".9", 1)  # a longer expiry, the same signature
    assert not verify(secret, settings, f"{later}.{mac}", now_s=1000.0)
    assert not verify(secret, settings, "garbage", now_s=1000.0)
    without_key = Settings(data_dir=tmp_path, api_key_hashes=(hash_key("other"),))
    assert not verify(secret, without_key, token, now_s=1000.0)  # its key was removed
    assert csrf_token(secret, token) != csrf_token(secret, issue(secret, hash_key(KEY)))


def test_with_auth_off_the_pages_need_no_sign_in(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth_disabled=True))
    with TestClient(app) as client:
        for path in ("/jobs", "/datasets", "/models", "/jobs/new", "/models/abc"):
            page = client.get(path, follow_redirects=False)
            assert page.status_code == 200, path
            assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert 'action="/signout"' not in client.get("/jobs").text
        assert client.get("/signin", follow_redirects=False).headers["location"] == "/jobs"
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/jobs/not%20an%20id").status_code == 404


def test_sign_in_sends_the_browser_back_only_to_this_site() -> None:
    assert safe_next("/jobs/abc?x=1") == "/jobs/abc?x=1"
    for target in (None, "", "https://evil.test/", "//evil.test", "/\\evil.test", "/\t/evil.test"):
        assert safe_next(target) == "/jobs", target
