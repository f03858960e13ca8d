"""Who may call the gateway: personal access tokens and the authentication middleware.

Harbor authenticates to a provider with one header on every request (reference section 2).
A personal access token is a random secret shown once; the store keeps only its SHA-256
hash, so a leaked database does not leak tokens. Verified hashes are trusted for a few
seconds (``auth.token_cache_seconds``) to keep the status-polling hot path off the store;
a revocation therefore takes effect within that window on every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable

import cachetools
import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import AuthConfig
from gateway.store import SqlStore

TOKEN_PREFIX = "phg_"
SCOPES = frozenset({"job"})
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
log = logging.getLogger("gateway.auth")


class Unauthorized(Exception):
    """The request carries no valid credential; the message is a short reason, never the secret."""


class Principal(msgspec.Struct, frozen=True):
    name: str
    method: str
    scopes: frozenset[str] = SCOPES


ANONYMOUS = Principal(name="anonymous", method="none")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenVerifier:
    """Checks personal access tokens against the store, with a short cache of verified hashes."""

    def __init__(self, store: SqlStore, cache_seconds: float) -> None:
        self.store = store
        self._verified: cachetools.TTLCache[str, tuple[Principal, float | None]] = cachetools.TTLCache(
            maxsize=10_000, ttl=max(cache_seconds, 0.001)
        )
        self._cache_enabled = cache_seconds > 0

    def forget_all(self) -> None:
        self._verified.clear()

    async def verify(self, token: str) -> Principal:
        digest = hash_token(token)
        cached = self._verified.get(digest) if self._cache_enabled else None
        if cached is not None and (cached[1] is None or cached[1] > time.time()):
            return cached[0]
        record = await self.store.find_token(digest)
        # The lookup is by hash, so its timing reveals nothing about the token; the compare
        # below guards the last step all the same.
        if record is None or not hmac.compare_digest(digest, hash_token(token)):
            raise Unauthorized("unknown token")
        if record.revoked_at is not None:
            raise Unauthorized(f"token {record.name!r} was revoked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise Unauthorized(f"token {record.name!r} expired")
        principal = Principal(name=record.name, method="token", scopes=frozenset(record.scopes))
        if self._cache_enabled:
            self._verified[digest] = (principal, record.expires_at)
            await self.store.touch_token(record.id)
        return principal


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential.strip() else None


class Authenticator:
    """Turns a request's headers into a :class:`Principal`, or raises :class:`Unauthorized`."""

    def __init__(self, config: AuthConfig, store: SqlStore) -> None:
        self.config = config
        self.tokens = TokenVerifier(store, config.token_cache_seconds)
        self.failures: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.config.mode != "none"

    async def authenticate(self, headers: dict[str, str]) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        token = bearer(headers)
        if token is not None and self.config.tokens:
            return await self.tokens.verify(token)
        if headers.get("authorization"):
            raise Unauthorized("unsupported Authorization scheme: send 'Authorization: Bearer <token>'")
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")


class AuthMiddleware:
    """Requires a credential on every route except probes, metrics and the console (own sign-in)."""

    def __init__(self, app: ASGIApp, authenticator: Callable[[], Authenticator | None], public_prefixes: tuple[str, ...] = ("/console",)) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_prefixes = public_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if path in PUBLIC_PATHS or path.startswith(self.public_prefixes):
            await self.app(scope, receive, send)
            return
        authenticator = self.authenticator()
        if authenticator is None:
            await _reject(send, 503, "the gateway is starting")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            principal = await authenticator.authenticate(headers)
        except Unauthorized as error:
            authenticator.failures[str(error).split(":")[0].split(" '")[0]] += 1
            log.info("authentication failed", extra={"path": path, "reason": str(error)})
            await _reject(send, 401, f"unauthorized: {error}")
            return
        if "job" not in principal.scopes:
            await _reject(send, 403, f"forbidden: credential {principal.name!r} lacks the 'job' scope")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _reject(send: Send, status: int, message: str) -> None:
    body = msgspec.json.encode({"errors": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="harbor-preheat-gateway"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

