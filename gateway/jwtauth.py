"""Identity-provider JWTs (``auth.jwt``): keys from a JWKS URL or a file, asymmetric algorithms only.

Imported only when ``auth.jwt`` is configured (``gateway.auth.Authenticator``), so a gateway
that takes personal access tokens alone never loads the JOSE library.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import warnings
from pathlib import Path
from typing import Any, TypeGuard

import msgspec
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyCurveError, JoseError, KeyParameterError, SecurityWarning
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry

from adapters.bounded import send_capped
from adapters.guard import ConnectGuard
from adapters.transport import new_client
from gateway.auth import AuthUnavailable, Principal, Unauthorized
from gateway.config import JWTConfig

# RFC 9864 deprecates the name "EdDSA" (for "Ed25519"), and joserfc warns on every use of it; identity
# providers still sign with that name, and auth.jwt.algorithms is the operator's choice.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

log = logging.getLogger("gateway.auth")


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return msgspec.json.decode(base64.urlsafe_b64decode(padded.encode("ascii")))


def _import_jwks(document: Any) -> list[Key]:
    """The keys of a JWKS document, kids as published; a key of an unknown ``kty`` is skipped (RFC 7517 section 5)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: no list of keys")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            raise ValueError("not a JWKS: a key is not an object")
        if entry.get("kty") in JWKRegistry.key_types:
            keys.append(JWKRegistry.import_key(entry))
    return keys


def _import_pem(raw: bytes) -> Key:
    """A PEM public key, private key or certificate: joserfc wants its type named, so each is tried."""
    for kty in ("RSA", "EC", "OKP"):
        try:
            return JWKRegistry.import_key(raw, kty, {"use": "sig"})
        except (ValueError, JoseError):  # unreadable, or a key of another type
            continue
    raise ValueError("no RSA, EC or OKP key in it")


def load_public_keys(path: str) -> list[Key]:
    """A PEM public key or certificate, or a JWK / JWKS JSON file, as a list of keys."""
    raw = Path(path).read_bytes()
    try:
        if raw.lstrip().startswith(b"{"):
            document = msgspec.json.decode(raw)
            keys = _import_jwks(document if "keys" in document else {"keys": [document]})
            if not keys:
                raise ValueError("no key of a known type")
            return keys
        return [_import_pem(raw)]
    except Exception as error:
        raise ValueError(
            f"auth.jwt.public_key_file: {path} is not a PEM public key or certificate, a JWK or a JWKS ({type(error).__name__})"
        ) from None


class JWTVerifier:
    """Checks bearer JWTs from an identity provider: signature, ``exp``, ``nbf``, ``iss``, ``aud``, scope.

    Keys come from ``auth.jwt.jwks_url`` (fetched on first use, cached for
    ``jwks_cache_seconds``, refetched early at most every ``REFRESH_SECONDS`` when a token
    names an unknown ``kid``, so key rotation works and random kids cannot hammer the
    provider) or from ``auth.jwt.public_key_file``. Only asymmetric algorithms are accepted.
    """

    REFRESH_SECONDS = 5.0
    MAX_JWKS_BYTES = 1 << 20
    MAX_TOKEN_BYTES = 16 << 10

    def __init__(self, config: JWTConfig) -> None:
        self.config = config
        # An IdP's own header parameters are ignored, as RFC 7515 allows (``crit`` is still enforced).
        self._registry = JWSRegistry(algorithms=list(config.algorithms), strict_check_header=False)
        # joserfc's own caps (a 512-byte header, a 1 KiB signature) would refuse an x5c chain or an RSA-8192
        # signature; MAX_TOKEN_BYTES bounds the whole token instead.
        self._registry.max_header_length = self.MAX_TOKEN_BYTES
        self._registry.max_payload_length = self.MAX_TOKEN_BYTES
        self._registry.max_signature_length = self.MAX_TOKEN_BYTES
        self._keys: dict[str | None, Key] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        if config.public_key_file:
            self._keys = self._index(load_public_keys(config.public_key_file))
            self._fetched_at = float("inf")

    @staticmethod
    def _index(keys: list[Key]) -> dict[str | None, Key]:
        usable = [key for key in keys if key.key_type != "oct" and key.get("use", "sig") == "sig"]
        indexed: dict[str | None, Key] = {key.kid: key for key in usable}
        if len(usable) == 1:
            indexed.setdefault(None, usable[0])
        return indexed

    def _fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < self.config.jwks_cache_seconds

    async def _refresh(self, *, forced: bool) -> None:
        if self._fresh() and not forced:
            return
        async with self._lock:  # one fetch at a time: a policy run sends hundreds of health checks at once
            now = time.monotonic()
            if (self._fresh() and not forced) or now - self._attempted_at < self.REFRESH_SECONDS:
                return
            self._attempted_at = now
            url = self.config.jwks_url or ""
            try:
                async with new_client(timeout=5.0, guard=ConnectGuard(configured=[url])) as client:
                    response, body = await send_capped(
                        client, "GET", url, limit=self.MAX_JWKS_BYTES, headers={"Accept": "application/json"}
                    )
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                self._keys = self._index(_import_jwks(msgspec.json.decode(body)))
                self._fetched_at = now
            except Exception as error:  # the previous keys stay in use; say why in the log
                log.warning("fetching the JWKS at auth.jwt.jwks_url %s failed: %s", url, str(error)[:200])

    async def _key_for(self, kid: str | None) -> Key:
        if self.config.jwks_url:
            await self._refresh(forced=False)
            if kid not in self._keys:
                await self._refresh(forced=True)
            if not self._keys:
                raise AuthUnavailable(
                    "cannot check JWTs: the identity provider's keys (auth.jwt.jwks_url) are unreachable"
                )
        key = self._keys.get(kid)
        if key is None and self.config.public_key_file and len({id(k) for k in self._keys.values()}) == 1:
            key = next(iter(self._keys.values()))  # the one configured key, whatever kid the token names
        if key is None:
            raise Unauthorized("JWT signing key (kid) is not among the identity provider's keys", "jwt_key")
        return key

    async def verify(self, token: str) -> Principal:
        if len(token) > self.MAX_TOKEN_BYTES:
            raise Unauthorized("JWT is too large", "jwt_malformed")
        try:
            header = _b64url_json(token.split(".", 1)[0])
        except Exception:
            raise Unauthorized("malformed JWT", "jwt_malformed") from None
        if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
            raise Unauthorized("malformed JWT: no alg in its header", "jwt_malformed")
        if header["alg"] not in self.config.algorithms:
            raise Unauthorized(
                "JWT algorithm is not accepted (unsigned and HS* tokens never are; see auth.jwt.algorithms)",
                "jwt_algorithm",
            )
        kid = header.get("kid")
        key = await self._key_for(kid if isinstance(kid, str) else None)
        if _KEY_TYPES[header["alg"][:2]] != key.key_type:
            raise Unauthorized("JWT algorithm does not fit the type of the key its kid names", "jwt_algorithm")
        try:
            claims = dict(jwt.decode(token, key, registry=self._registry).claims)
        except BadSignatureError:
            raise Unauthorized(
                "JWT signature does not verify against the identity provider's keys", "jwt_signature"
            ) from None
        except (KeyParameterError, InvalidKeyCurveError):  # the key's own alg, curve or key_ops rule it out
            raise Unauthorized("JWT algorithm does not fit the key its kid names", "jwt_algorithm") from None
        except Exception:  # whatever else a hostile token provokes in the library is a 401, not a 500
            raise Unauthorized("malformed JWT", "jwt_malformed") from None
        return self._check_claims(claims)

    def _check_claims(self, claims: dict[str, Any]) -> Principal:
        now, leeway = time.time(), self.config.leeway_seconds
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _is_number(exp):
            raise Unauthorized("JWT has no numeric exp claim", "jwt_claims")
        if exp + leeway <= now:
            raise Unauthorized("JWT expired", "jwt_expired")
        if nbf is not None and (not _is_number(nbf) or nbf - leeway > now):
            raise Unauthorized("JWT not yet valid (nbf)", "jwt_not_yet_valid")
        if iat is not None and (not _is_number(iat) or iat - leeway > now):
            raise Unauthorized("JWT issued in the future (iat)", "jwt_not_yet_valid")
        if claims.get("iss") != self.config.issuer:
            raise Unauthorized("JWT issuer does not match auth.jwt.issuer", "jwt_issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.config.audience not in audiences:
            raise Unauthorized("JWT audience does not include auth.jwt.audience", "jwt_audience")
        subject = next((str(claims[k]) for k in ("sub", "client_id", "azp") if isinstance(claims.get(k), str)), "?")
        granted = self.config.scope in _scopes(claims)
        return Principal(
            name=f"jwt:{subject[:100]}", method="jwt", scopes=frozenset({"job"}) if granted else frozenset()
        )


_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _is_number(value: Any) -> TypeGuard[float]:
    """A JSON number: ``true``/``false`` are not, though Python's bool is an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scopes(claims: dict[str, Any]) -> set[str]:
    """Scopes from ``scope`` (RFC 8693: space-separated) and ``scp`` (string or list, Okta/Entra style)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return found
