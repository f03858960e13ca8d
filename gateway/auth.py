"""Who may call the gateway: personal access tokens, IdP JWTs (``gateway.jwtauth``), Basic and custom headers.

Harbor authenticates to a provider with one header on every request (Harbor's ``src/pkg/p2p/preheat/provider/auth``),
built by its instance's auth mode:

- OAUTH, ``Authorization: Bearer <credential>``: a personal access token (``phg_...``), or a
  JWT from an identity provider when ``auth.jwt`` is configured.
- CUSTOM, ``<auth.custom_header>: <personal access token>``.
- BASIC, ``Authorization: Basic base64(name:secret)``. Harbor builds it from *one random
  entry* of ``{"username": U, "password": P}``, so it sends ``username:U`` or ``password:P``.
  The gateway accepts it only when the *secret part* (after the first ``:``) is a personal
  access token: the name part is never proof, and with the token in both Harbor fields
  every request carries it. (Decision recorded in docs/harbor.md.)
- NONE, nothing: accepted only with ``auth.mode: none``.

A personal access token is a random secret shown once; the store keeps only its SHA-256
hash, so a leaked database does not leak tokens, and the by-hash lookup's timing says
nothing about the token. A verified token is trusted for a few seconds
(``auth.token_cache_seconds``), remembered in this process's memory only, to keep the
status-polling hot path off the store and its hash; a revocation therefore takes effect within
that window on every replica. Failures answer 401
with a short reason that never quotes the credential, and are counted by kind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING

import msgspec

from gateway.config import AuthConfig
from gateway.store import SqlStore

if TYPE_CHECKING:
    from gateway.jwtauth import JWTVerifier

TOKEN_PREFIX = "phg_"
SCOPES = frozenset({"job", "pull"})
"""``job``: run preheats (the API, the console); ``pull``: pull from the registry mirror (``/v2/``)."""
MIRROR_CHALLENGE = b'Basic realm="preheat-gateway"'
"""What an unauthenticated mirror request is told: registry clients (skopeo's ``--src-creds``, containerd)
answer a Basic challenge with their credentials; a Bearer one would need a token endpoint as its realm."""
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/openapi.json"})
log = logging.getLogger("gateway.auth")


class Unauthorized(Exception):
    """The request carries no valid credential; the message is a short reason, never the secret.

    ``kind`` is a low-cardinality label for the failure counter (``unknown_token``, ``jwt_expired``).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class AuthUnavailable(Exception):
    """The gateway cannot check credentials right now (the identity provider's keys are unreachable): 503."""


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

    MAX_CACHED = 10_000

    def __init__(self, store: SqlStore, cache_seconds: float) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        # token -> (principal, kept until (monotonic), token expiry (wall clock)); oldest first.
        # A plain dict: this lookup is on every request's path, where a TTLCache costs more than the rest.
        self._verified: dict[str, tuple[Principal, float, float | None]] = {}

    def remembered(self, token: str) -> Principal | None:
        """The token's principal if it was verified within ``cache_seconds`` and has not expired since."""
        cached = self._verified.get(token)
        if cached is None:
            return None
        principal, kept_until, expires_at = cached
        if kept_until > time.monotonic() and (expires_at is None or expires_at > time.time()):
            return principal
        del self._verified[token]
        return None

    async def verify(self, token: str) -> Principal:
        if (principal := self.remembered(token)) is not None:
            return principal
        record = await self.store.find_token(hash_token(token))  # by hash: its timing reveals nothing about the token
        if record is None:
            raise Unauthorized("unknown token", "unknown_token")
        if record.revoked_at is not None:
            raise Unauthorized(f"token {record.name!r} was revoked", "revoked_token")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise Unauthorized(f"token {record.name!r} expired", "expired_token")
        principal = Principal(name=record.name, method="token", scopes=frozenset(record.scopes))
        if self.cache_seconds > 0:
            self._keep(token, principal, record.expires_at)
            await self.store.touch_token(record.id)
        return principal

    def _keep(self, token: str, principal: Principal, expires_at: float | None) -> None:
        now = time.monotonic()
        if len(self._verified) >= self.MAX_CACHED:
            for stale in [key for key, entry in self._verified.items() if entry[1] <= now]:
                del self._verified[stale]
            while len(self._verified) >= self.MAX_CACHED:
                del self._verified[next(iter(self._verified))]
        self._verified[token] = (principal, now + self.cache_seconds, expires_at)


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential.strip() else None


def basic_secret(value: str) -> str:
    """The secret part of ``Basic base64(name:secret)``: everything after the first ``:``."""
    _, _, encoded = value.partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthorized("malformed Basic credential: expected base64(name:secret)", "malformed") from None
    _, colon, secret = decoded.partition(":")
    if not colon or not secret:
        raise Unauthorized("malformed Basic credential: expected base64(name:secret)", "malformed")
    return secret


def looks_like_jwt(token: str) -> bool:
    return not token.startswith(TOKEN_PREFIX) and token.count(".") == 2


class Authenticator:
    """Turns a request's headers into a :class:`Principal`, or raises :class:`Unauthorized`."""

    def __init__(self, config: AuthConfig, store: SqlStore) -> None:
        self.config = config
        self.tokens = TokenVerifier(store, config.token_cache_seconds)
        self.jwt: JWTVerifier | None = None
        if config.jwt is not None and config.mode != "none":
            from gateway.jwtauth import JWTVerifier  # the JOSE library, only when JWTs are taken

            self.jwt = JWTVerifier(config.jwt)
        self.custom_header = config.custom_header.lower() if config.custom_header else None
        self.header_names = frozenset(
            name.encode("latin-1") for name in ("authorization", self.custom_header) if name is not None
        )
        """The request headers :meth:`authenticate` reads (lower case, as ASGI gives them)."""
        self.failures: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.config.mode != "none"

    def accepted(self) -> str:
        """The credentials this gateway takes, for error messages."""
        ways = []
        if self.config.tokens or self.jwt:
            ways.append("'Authorization: Bearer <token>'")
        if self.custom_header:
            ways.append(f"'{self.config.custom_header}: <token>'")
        if self.config.tokens and self.config.basic:
            ways.append("Basic with the token as password")
        return ", ".join(ways)

    def _personal_token(self, headers: dict[str, str]) -> str | None:
        """The personal access token the custom header or ``Authorization: Bearer`` carries, when
        that is how the credential is checked (not a JWT, not Basic); the custom header's may be empty."""
        if self.custom_header and self.custom_header in headers:
            return headers[self.custom_header].strip()
        token = bearer(headers)
        if token is None or not self.config.tokens or (self.jwt is not None and looks_like_jwt(token)):
            return None
        return token

    def remembered(self, headers: dict[str, str]) -> Principal | None:
        """The principal of a personal access token (:meth:`_personal_token`) verified within
        ``auth.token_cache_seconds``: a status poll's answer, with no coroutine. None means
        :meth:`authenticate` decides."""
        if not self.enabled:
            return ANONYMOUS
        token = self._personal_token(headers)
        return self.tokens.remembered(token) if token else None

    async def authenticate(self, headers: dict[str, str], *, basic: bool | None = None) -> Principal:
        """``basic`` overrides ``auth.basic`` (the mirror takes Basic always: it is what registry clients send)."""
        if not self.enabled:
            return ANONYMOUS
        if (token := self._personal_token(headers)) is not None:
            if not token:
                raise Unauthorized(f"the {self.config.custom_header} header is empty", "missing")
            return await self.tokens.verify(token)
        authorization = headers.get("authorization", "")
        scheme = authorization.partition(" ")[0].lower()
        if scheme == "bearer" and self.jwt is not None and (token := bearer(headers)) is not None:
            return await self.jwt.verify(token)
        if scheme == "basic":
            if not (self.config.tokens and (self.config.basic if basic is None else basic)):
                raise Unauthorized(f"Basic authentication is off (auth.basic); send {self.accepted()}", "scheme")
            try:
                return await self.tokens.verify(basic_secret(authorization))
            except Unauthorized as error:
                if error.kind != "unknown_token":
                    raise
                raise Unauthorized(
                    "Basic credential's secret part is not a valid token: put the gateway token in both of "
                    "Harbor's username and password fields, or use OAUTH",
                    "unknown_token",
                ) from None
        if authorization:
            raise Unauthorized(f"unsupported Authorization scheme: send {self.accepted()}", "scheme")
        raise Unauthorized(f"missing credentials: send {self.accepted()}", "missing")

    def forbidden_reason(self, principal: Principal) -> str:
        if principal.method == "jwt" and self.config.jwt is not None:
            return f"the JWT's scope/scp claim lacks {self.config.jwt.scope!r} (auth.jwt.scope)"
        return f"credential {principal.name!r} lacks the 'job' scope"


def is_mirror_path(path: str) -> bool:
    """The registry mirror's routes (``gateway.endpoints.mirror``), which need the ``pull`` scope."""
    return path == "/v2" or path.startswith("/v2/")
