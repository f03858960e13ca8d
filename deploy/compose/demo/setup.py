"""One-shot set-up of the compose demo: every secret generated here, none shipped in the repo.

Writes into ``$DEMO_SECRETS_DIR`` (a volume shared with the other services), keeping what an
earlier run wrote so ``docker compose up`` can be repeated:

- ``token.key`` / ``token.crt``: the token service's RS256 signing key and the self-signed
  certificate the origin registry trusts (its ``rootcertbundle``);
- ``admin-password``, ``robot-password``, ``cache-password``: the origin's accounts (the
  pusher, the robot account Harbor would lend a preheat provider, the caches' upstream one);
- ``gateway-token``: a personal access token created in the gateway's store with
  ``preheat-gateway token create`` (so the gateway prints no first-start token).

In compose it runs as root only to hand the fresh volume to UID ``$DEMO_RUN_AS`` (10001, the
image's user); the token is created as that user, so the store stays the gateway's. Needs
only the gateway image's Python (``cryptography`` is a gateway dependency).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ACCOUNTS = ("admin", "robot", "cache")
ISSUER = "demo-token-issuer"


def run_as() -> tuple[int, int] | None:
    """``(uid, gid)`` to own the secrets and create the token as, when running as root."""
    value = os.environ.get("DEMO_RUN_AS", "")
    if not value or os.geteuid() != 0:
        return None
    uid, _, gid = value.partition(":")
    return int(uid), int(gid or uid)


def write_secret(path: Path, data: bytes, owner: tuple[int, int] | None, mode: int = 0o600) -> None:
    """Create ``path`` atomically with ``mode``; an existing file is kept (re-runs are no-ops)."""
    if path.exists():
        return
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    if owner:
        os.chown(temp, *owner)
    os.replace(temp, path)
    print(f"setup: wrote {path}", flush=True)


def signing_identity() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def create_gateway_token(config: str, owner: tuple[int, int] | None) -> bytes:
    """``preheat-gateway token create``; the token is alone on the output's last line."""
    name = f"compose-demo-{secrets.token_hex(3)}"
    extra = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "create", "--config", config, "--name", name],
        capture_output=True,
        text=True,
        timeout=60,
        **extra,
    )
    if result.returncode != 0:
        sys.exit(f"setup: preheat-gateway token create failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    print(f"setup: created the gateway token {name!r}", flush=True)
    return result.stdout.strip().splitlines()[-1].encode() + b"\n"


def main() -> int:
    directory = Path(os.environ.get("DEMO_SECRETS_DIR", "/demo-secrets"))
    config = os.environ.get("PREHEAT_GATEWAY_CONFIG", "/etc/preheat-gateway/config.yaml")
    owner = run_as()
    directory.mkdir(parents=True, exist_ok=True)
    if owner:
        os.chown(directory, *owner)
        state = os.environ.get("PREHEAT_GATEWAY_STATE_DIR")
        if state and Path(state).is_dir():
            os.chown(state, *owner)
    os.chmod(directory, 0o750)

    if not (directory / "token.key").exists() or not (directory / "token.crt").exists():
        (directory / "token.key").unlink(missing_ok=True)
        (directory / "token.crt").unlink(missing_ok=True)
        key_pem, cert_pem = signing_identity()
        write_secret(directory / "token.key", key_pem, owner)
        write_secret(directory / "token.crt", cert_pem, owner, 0o644)
    for account in ACCOUNTS:
        write_secret(directory / f"{account}-password", secrets.token_urlsafe(24).encode() + b"\n", owner)
    if not (directory / "gateway-token").exists():
        write_secret(directory / "gateway-token", create_gateway_token(config, owner), owner)
    print("setup: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
