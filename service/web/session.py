"""Browser sessions: a signed, expiring cookie instead of the API key, and its CSRF token.

The cookie is ``v1.<expiry>.<key id>.<nonce>.<mac>``: ``mac`` is an HMAC-SHA256 of the rest
under a secret kept in the data directory (``session.secret``, created once, mode 0600), so
every API process sharing that directory (several replicas, restarts) accepts the sessions the
others issued, and nothing is held in memory. ``key id`` is an HMAC of the digest of the key
that signed in: removing that key from ``RETINANET_API_KEY_HASHES`` ends its sessions too.
The key itself is never in the cookie.

The CSRF token is an HMAC of the session token under the same secret: pages embed it, scripts
send it back as ``X-CSRF-Token`` on every state-changing request; a cross-site form cannot
read it (and SameSite=Strict keeps the cookie off cross-site requests in the first place).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Final

from fastapi import Request

from service.settings import Settings, hash_key

COOKIE: Final = "retinanet_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_S: Final = 12 * 3600
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_FILE: Final = "session.secret"


def load_secret(data_dir: Path) -> bytes:
    """The data directory's session secret, created on first use. Published with a hard link,
    which fails when another process got there first: every process then reads the same one."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def _mac(secret: bytes, purpose: str, message: str) -> str:
    return hmac.new(secret, f"{purpose}:{message}".encode(), hashlib.sha256).hexdigest()


def _key_id(secret: bytes, key_digest: str) -> str:
    return _mac(secret, "key", key_digest)[:32]


def key_accepted(settings: Settings, key: str) -> str | None:
    """The configured digest ``key`` hashes to, or None."""
    digest = hash_key(key)
    for allowed in settings.api_key_hashes:
        if hmac.compare_digest(digest, allowed):
            return allowed
    return None


def issue(secret: bytes, key_digest: str, *, now_s: float | None = None) -> str:
    """A new session token for the key whose digest is ``key_digest``."""
    expiry = int((time.time() if now_s is None else now_s) + SESSION_S)
    body = f"v1.{expiry}.{_key_id(secret, key_digest)}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(secret, 'session', body)}"


def verify(secret: bytes, settings: Settings, token: str, *, now_s: float | None = None) -> bool:
    """``token`` was issued with ``secret``, has not expired, and its key is still configured."""
    body, _, mac = token.rpartition(".")
    parts = body.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return False
    if not hmac.compare_digest(mac, _mac(secret, "session", body)):
        return False
    if int(parts[1]) < (time.time() if now_s is None else now_s):
        return False
    return any(hmac.compare_digest(parts[2], _key_id(secret, d)) for d in settings.api_key_hashes)


def csrf_token(secret: bytes, token: str) -> str:
    return _mac(secret, "csrf", token)


def app_secret(request: Request) -> bytes | None:
    """The secret loaded at start-up (None before the lifespan ran)."""
    secret: bytes | None = getattr(request.app.state, "session_secret", None)
    return secret


def session_of(request: Request, settings: Settings) -> str | None:
    """The request's valid session token, or None."""
    secret, token = app_secret(request), request.cookies.get(COOKIE)
    if secret is None or not token or len(token) > 512:
        return None
    return token if verify(secret, settings, token) else None


def csrf_ok(request: Request, token: str, sent: str | None) -> bool:
    """``sent`` is the CSRF token of the session ``token``."""
    secret = app_secret(request)
    return (
        secret is not None
        and sent is not None
        and hmac.compare_digest(sent, csrf_token(secret, token))
    )
