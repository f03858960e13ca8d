"""What the hostile-registry and hostile-token-service tests share: bombs, a job's outcome, a registry's answers.

Kept apart from ``hostile.py`` (the harness every security test uses) because only the tests of
what the gateway reads from registries need them.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.gateway_process import GatewayProcess
from tests.security.hostile import Exchange, HostileServer, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@functools.cache
@functools.cache
def gzip_bomb(inflated_mib: int) -> bytes:
    """``inflated_mib`` MiB of zeros, gzip-compressed: about 1 KiB per MiB (1 GiB is ~1 MiB on the wire).

    Compressing 1 GiB takes seconds of this process's CPU: a test builds its bomb before it times
    the gateway, and each size is built once per process."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([packer.compress(block) for _ in range(inflated_mib)] + [packer.flush()])


@dataclass
class Outcome:
    """A finished job as the Open API shows it, and how long it took from creation."""

    job: dict[str, Any]
    seconds: float

    @property
    def state(self) -> str:
        return str(self.job["state"])

    @property
    def text(self) -> str:
        """Every error and failure description of the job, one per line."""
        lines: list[str] = []
        for state in (self.job.get("result") or {}).get("job_states") or []:
            lines.append(state.get("error") or "")
            for result in state.get("results") or []:
                lines += [task.get("description") or "" for task in result.get("failure_tasks") or [] if task]
        return "\n".join(line for line in lines if line)

    def size(self) -> int:
        return len(json.dumps(self.job))


def run_job(gateway: GatewayProcess, url: str, *, timeout: float = 60.0, **args: Any) -> Outcome:
    """Create an image preheat of ``url`` through the Open API (no caller headers unless given) and wait for it."""
    started = time.monotonic()
    with gateway.client() as client:
        response = client.post("/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": url, **args}})
    assert response.status_code == 200, response.text
    job = gateway.wait_job(response.json()["id"], timeout=timeout)
    return Outcome(job, time.monotonic() - started)


def send_manifest(exchange: Exchange, raw: bytes, media_type: str = OCI_MANIFEST) -> None:
    exchange.send(200, raw, {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw)})


def distribution_error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def oci_index(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def index_entry(digest: str, size: int = 500, architecture: str = "amd64") -> dict[str, Any]:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": size,
        "platform": {"os": "linux", "architecture": architecture},
    }


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), to be trusted with ``SSL_CERT_FILE``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def speak_tls_too(server: HostileServer, cert: Path, key: Path) -> None:
    """Make ``server`` answer https as well as http on its one port (a TLS hello is told apart by its first byte),
    so that ``https://127.0.0.1:P`` and ``http://127.0.0.1:P`` are the same host and port, two origins.
    Call it before anyone connects."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inner = server._server
    accept = inner.get_request

    def get_request() -> tuple[socket.socket, Any]:
        sock, address = accept()
        sock.settimeout(5)
        if sock.recv(1, socket.MSG_PEEK) == b"\x16":
            sock = context.wrap_socket(sock, server_side=True)
        sock.settimeout(None)
        return sock, address

    inner.get_request = get_request  # type: ignore[method-assign]
