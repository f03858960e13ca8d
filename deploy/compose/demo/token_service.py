"""A tiny Harbor-like registry token service for the compose demo (``GET /service/token``).

Harbor core is, to a registry, a token service: it checks an account's password and signs a
short-lived RS256 JWT naming what the account may do (``access``), which CNCF distribution
verifies against the certificate in its ``auth.token.rootcertbundle``. This does the same for
three accounts whose passwords ``setup.py`` generated:

======================  ==========  ==================================================
account                 may         used by
======================  ==========  ==================================================
``admin``               push, pull  ``run_demo.py``, to push the demo image
``robot$preheat``       pull        ``run_demo.py`` acting as Harbor: the token it puts
                                    in the preheat request's ``headers``
``cache``               pull        the pull-through caches, reading the origin
======================  ==========  ==================================================

Anonymous callers get a token that grants nothing (a private Harbor project); a wrong
password gets 401. Standard library plus ``cryptography`` (a gateway dependency), so it
runs in the gateway image. Not a production token service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ISSUER = "demo-token-issuer"
SERVICE = "demo-registry"
EXPIRES_IN = 300
# account -> (password file in the secrets directory, actions it may be granted)
ACCOUNTS = {
    "admin": ("admin-password", {"pull", "push"}),
    "robot$preheat": ("robot-password", {"pull"}),
    "cache": ("cache-password", {"pull"}),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Signer:
    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        self.key = serialization.load_pem_private_key(key_pem, password=None)
        certificate = x509.load_pem_x509_certificate(cert_pem)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # libtrust key id, as Harbor core sends it; distribution 2.x checks x5c first.
        encoded = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode("ascii").rstrip("=")
        self.header = {
            "typ": "JWT",
            "alg": "RS256",
            "kid": ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4)),
            "x5c": [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }

    def sign(self, claims: dict[str, object]) -> str:
        signing_input = (
            b64url(json.dumps(self.header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg,arg-type]
        return signing_input + "." + b64url(signature)


class TokenService:
    def __init__(self, secrets_dir: Path) -> None:
        self.signer = Signer((secrets_dir / "token.key").read_bytes(), (secrets_dir / "token.crt").read_bytes())
        self.passwords = {
            account: (secrets_dir / filename).read_text().strip() for account, (filename, _) in ACCOUNTS.items()
        }

    def authenticate(self, authorization: str | None) -> str | None:
        """The account for good Basic credentials, None when anonymous; PermissionError when wrong."""
        if not authorization:
            return None
        scheme, _, encoded = authorization.partition(" ")
        try:
            account, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            raise PermissionError("malformed Basic credentials") from None
        expected = self.passwords.get(account)
        if (
            scheme.lower() != "basic"
            or expected is None
            or not hmac.compare_digest(expected.encode(), password.encode())
        ):
            raise PermissionError(f"wrong account or password for {account!r}")
        return account

    def token(self, account: str | None, service: str, scopes: list[str]) -> dict[str, object]:
        allowed = ACCOUNTS[account][1] if account else set()
        access = []
        for scope in scopes:
            resource_type, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if resource_type and name:
                granted = [a for a in actions.split(",") if a in allowed]
                access.append({"type": resource_type, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": account or "",
            "aud": service or SERVICE,
            "exp": now + EXPIRES_IN,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": access,
        }
        token = self.signer.sign(claims)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": token, "access_token": token, "expires_in": EXPIRES_IN, "issued_at": issued}


def handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                self.send(200, {"status": "ok"})
                return
            if parts.path.rstrip("/") != "/service/token":
                self.send(404, {"errors": [{"code": "NOT_FOUND", "message": parts.path}]})
                return
            query = parse_qs(parts.query)
            try:
                account = service.authenticate(self.headers.get("Authorization"))
            except PermissionError as error:
                self.log_message("401 %s", error)
                self.send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
                return
            body = service.token(account, (query.get("service") or [""])[0], query.get("scope", []))
            self.log_message("token for %s: %s", account or "anonymous", " ".join(query.get("scope", [])) or "-")
            self.send(200, body)

        def send(self, status: int, body: object) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="demo-registry"')
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            print(f"token-service: {format % args}", file=sys.stderr, flush=True)

    return Handler


def main() -> int:
    secrets_dir = Path(os.environ.get("DEMO_SECRETS_DIR", "/demo-secrets"))
    host, _, port = os.environ.get("TOKEN_SERVICE_LISTEN", "0.0.0.0:5001").rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), handler(TokenService(secrets_dir)))
    server.daemon_threads = True
    # PID 1 in a container ignores SIGTERM unless it installs a handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"token-service: listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
