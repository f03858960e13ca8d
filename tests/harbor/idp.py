"""A tiny identity provider on 127.0.0.1: publishes a JWKS and mints JWTs, good and bad.

Signing is done here with ``cryptography`` directly, not with the library the gateway
verifies with, so a test can never pass because both sides share one mistake. Besides
well-formed tokens it makes the classic forgeries: ``alg: none``, HS256 keyed with the
published public key, a signature by a key the provider never published, a tampered payload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://idp.example.test/realms/platform"
AUDIENCE = "preheat-gateway"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big")


class SigningKey:
    """One RSA (RS256) or P-256 (ES256) key with its ``kid`` and public JWK."""

    def __init__(self, kid: str, kind: str = "RSA") -> None:
        self.kid = kid
        self.kind = kind
        self.private: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "RSA"
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.alg = "RS256" if kind == "RSA" else "ES256"

    def jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        if self.kind == "RSA":
            return {
                "kty": "RSA",
                "kid": self.kid,
                "use": "sig",
                "alg": "RS256",
                "n": b64url(_int_bytes(numbers.n)),
                "e": b64url(_int_bytes(numbers.e)),
            }
        return {
            "kty": "EC",
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
            "crv": "P-256",
            "x": b64url(_int_bytes(numbers.x, 32)),
            "y": b64url(_int_bytes(numbers.y, 32)),
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signing_input: bytes) -> bytes:
        if self.kind == "RSA":
            return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return _int_bytes(r, 32) + _int_bytes(s, 32)


def _segments(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )


class TokenMinter:
    """Mints JWTs for one issuer and audience; ``token()`` makes one the gateway should accept."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = [SigningKey("rsa-1", "RSA"), SigningKey("ec-1", "EC")]
        self._lock = threading.Lock()

    def publish(self, key: SigningKey) -> None:
        """Key rotation: a new key appears in the JWKS."""
        with self._lock:
            self.keys.append(key)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk() for key in self.keys]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Good claims; ``name=None`` removes a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": [self.audience, "account"],
            "sub": "harbor-preheat",
            "scope": "openid job",
            "exp": now + 300,
            "nbf": now - 5,
            "iat": now - 5,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, *, kid: str | None = None, **overrides: Any) -> str:
        key = key or self.keys[0]
        signing_input = _segments({"alg": key.alg, "typ": "JWT", "kid": kid or key.kid}, self.claims(**overrides))
        return signing_input + "." + b64url(key.sign(signing_input.encode()))

    def unsigned(self, **overrides: Any) -> str:
        """``alg: none`` with an empty signature."""
        return _segments({"alg": "none", "typ": "JWT"}, self.claims(**overrides)) + "."

    def hs256_with_public_key(self, **overrides: Any) -> str:
        """The key-confusion forgery: HMAC keyed with the provider's published public key."""
        key = self.keys[0]
        signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": key.kid}, self.claims(**overrides))
        return signing_input + "." + b64url(hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest())

    def tampered(self) -> str:
        """A good token whose payload was swapped for one with another subject after signing."""
        header, _, signature = self.token().split(".")
        payload = b64url(json.dumps(self.claims(sub="admin"), separators=(",", ":")).encode())
        return f"{header}.{payload}.{signature}"


class IdentityProvider(TokenMinter):
    """A :class:`TokenMinter` whose ``jwks_url`` serves the published keys, counting requests."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        super().__init__(issuer, audience)
        self.jwks_requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="idp", daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/protocol/openid-connect/certs"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with provider._lock:
                    provider.jwks_requests += 1
                body = json.dumps(provider.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
