"""Console sessions and CSRF tokens: signed, expiring cookies that hold no secret.

A session cookie carries only who signed in, how, a random session id and when it expires,
HMAC-SHA256-signed. The signing key is derived (HMAC with a fixed label) from the key of the
gateway's :class:`~gateway.secretbox.SecretBox` (``store.secret_key_env`` or
``store.secret_key_file``), so replicas that share a store, and therefore must already share
that key, accept each other's sessions; rotating that key signs everyone out. When the key
cannot be read the console falls back to a random per-process key (sessions then end on
restart and are not shared between replicas) and logs a warning.

Forms are protected by a synchronizer token bound to the session (an HMAC of the session id);
the sign-in form, before any session exists, by a signed double-submit cookie. Both cookies
are HttpOnly and SameSite=Strict, and Secure when the request came over https.

What a signed cookie cannot do by itself is die early, so: signing out revokes the session
id in this process (a copied cookie still works on other replicas until it expires, at most
:data:`SESSION_SECONDS`), and a session opened with a personal access token ends within
``auth.token_cache_seconds`` of that token being revoked or expiring, on every replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import cachetools
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import Config
from gateway.store import SqlStore

SESSION_COOKIE = "phg_console"
SIGNIN_COOKIE = "phg_console_signin"
SESSION_SECONDS = 8 * 3600
"""A session's lifetime; sign in again after it (Harbor's own UI uses similar working-day sessions)."""
SIGNIN_SECONDS = 3600
log = logging.getLogger("gateway.console")


class Session(msgspec.Struct, frozen=True):
    """Who is signed in. Never holds a credential: the cookie is signed, not encrypted."""

    name: str
    method: str
    sid: str
    exp: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_material(config: Config) -> bytes | None:
    """The SecretBox key, read the way :meth:`SecretBox.from_env_or_file` reads it."""
    try:
        if config.store.secret_key_env:
            return os.environ[config.store.secret_key_env].encode()
        path = Path(config.store.secret_key_file) if config.store.secret_key_file else config.state_dir / "secret.key"
        return path.read_bytes().strip() or None
    except (KeyError, OSError):
        return None


@dataclass
class Sessions:
    """Signs and checks the console's cookies for one gateway process."""

    key: bytes
    token_cache_seconds: float = 10.0
    revoked: cachetools.TTLCache[str, bool] = field(
        default_factory=lambda: cachetools.TTLCache(maxsize=100_000, ttl=SESSION_SECONDS)
    )
    _token_ok: cachetools.TTLCache[str, bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._token_ok = cachetools.TTLCache(maxsize=10_000, ttl=max(self.token_cache_seconds, 0.001))

    @classmethod
    def for_config(cls, config: Config) -> Sessions:
        material = _key_material(config)
        if material is None:
            log.warning(
                "console: cannot read the store secret key; signing sessions with a per-process key "
                "(sessions end on restart and are not shared between replicas)"
            )
            material = secrets.token_bytes(32)
        key = hmac.new(material, b"harbor-preheat-gateway console session key v1", hashlib.sha256).digest()
        return cls(key=key, token_cache_seconds=config.auth.token_cache_seconds)

    def _mac(self, purpose: str, data: str) -> str:
        return _b64(hmac.new(self.key, f"{purpose}|{data}".encode(), hashlib.sha256).digest())

    # --- sessions -----------------------------------------------------------------------------

    def new(self, name: str, method: str, not_after: float | None = None) -> Session:
        """A session for :data:`SESSION_SECONDS`, or until ``not_after`` (the credential's own expiry) if sooner."""
        exp = time.time() + SESSION_SECONDS
        return Session(name=name, method=method, sid=secrets.token_urlsafe(18), exp=min(exp, not_after or exp))

    def encode(self, session: Session) -> str:
        payload = _b64(msgspec.json.encode(session))
        return f"{payload}.{self._mac('session', payload)}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, or None when it is missing, forged, expired or signed out."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._mac("session", payload)):
            return None
        try:
            session = msgspec.json.decode(_unb64(payload), type=Session)
        except (ValueError, msgspec.DecodeError):
            return None
        if session.exp <= time.time() or session.sid in self.revoked:
            return None
        return session

    def revoke(self, session: Session) -> None:
        self.revoked[session.sid] = True

    async def still_valid(self, session: Session, store: SqlStore) -> bool:
        """A token-based session ends soon after its token is revoked or expires."""
        if session.method != "token":
            return True
        ok = self._token_ok.get(session.name)
        if ok is None:
            now = time.time()
            record = next((t for t in await store.list_tokens() if t.name == session.name), None)
            ok = (
                record is not None
                and record.revoked_at is None
                and (record.expires_at is None or record.expires_at > now)
            )
            self._token_ok[session.name] = ok
        return ok

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.sid)

    def check_csrf(self, session: Session, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf_token(session))

    # --- the sign-in form's double-submit cookie ----------------------------------------------------

    def signin_token(self, nonce: str) -> str:
        return self._mac("signin", nonce)

    def check_signin(self, nonce: str | None, token: str) -> bool:
        return bool(nonce) and bool(token) and hmac.compare_digest(token, self.signin_token(nonce or ""))


def cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "") + "/console"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=cookie_path(request),
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=cookie_path(request), secure=request.url.scheme == "https", httponly=True, samesite="strict"
    )
