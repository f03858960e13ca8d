"""Real registries for tests: CNCF distribution processes and a Harbor-like token service.

Harbor is, for a preheat provider, two things: a token service that hands out
short-lived RS256 JWTs, and a CNCF distribution registry that trusts them.  This
module runs both for real on 127.0.0.1 (``docker-registry`` 2.8 from Debian and a
dependency-free ``ThreadingHTTPServer``), plus pull-through caches in front of
them, and pushes images through the registry HTTP API so tests see genuine
manifests, digests and ``WWW-Authenticate`` challenges instead of mocks.

Media types (see the ``*_MEDIA_TYPE`` constants): ``push_image(oci=False)``
produces Docker schema-2 manifests (``application/vnd.docker.*``);
``push_image(oci=True)`` and ``push_index`` produce OCI ones
(``application/vnd.oci.image.*``).

No pytest here: fixtures live in ``tests/conftest.py``; everything that needs a
missing tool raises ``MissingPrerequisite`` so the caller can skip or fail.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import random
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "ALL_MANIFEST_MEDIA_TYPES",
    "DOCKER_CONFIG_MEDIA_TYPE",
    "DOCKER_LAYER_MEDIA_TYPE",
    "DOCKER_MANIFEST_LIST_MEDIA_TYPE",
    "DOCKER_MANIFEST_MEDIA_TYPE",
    "MANIFEST_ACCEPT",
    "OCI_CONFIG_MEDIA_TYPE",
    "OCI_INDEX_MEDIA_TYPE",
    "OCI_LAYER_MEDIA_TYPE",
    "OCI_MANIFEST_MEDIA_TYPE",
    "AccessLogEntry",
    "MissingPrerequisite",
    "PushedImage",
    "PushedIndex",
    "Registry",
    "RegistryStartError",
    "TokenRequest",
    "TokenService",
    "find_registry_binary",
    "free_port",
    "push_blob",
    "push_image",
    "push_index",
    "random_blob_chunks",
    "start_registry",
    "unique_repository",
    "wait_until",
]

# Docker media types (schema 2), what `docker push` produces.
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# OCI media types (image-spec v1), what buildah/buildx produce for multi-arch images.
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

ALL_MANIFEST_MEDIA_TYPES = (
    OCI_INDEX_MEDIA_TYPE,
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
)
# Without an Accept header distribution 2.8 downgrades/refuses non-schema1 manifests.
MANIFEST_ACCEPT = ", ".join(ALL_MANIFEST_MEDIA_TYPES)

# Layers up to this size are built in memory and pushed monolithically.
_IN_MEMORY_LAYER_LIMIT = 16 << 20
# Bigger layers stream in PATCHes of this size (1 MiB PATCHes cost ~30% more on distribution 2.8).
_STREAM_CHUNK = 8 << 20
_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class MissingPrerequisite(RuntimeError):
    """A tool the real-world tests need is not installed (skip locally, fail in CI)."""


def find_registry_binary() -> str:
    """Locate CNCF distribution's ``registry`` binary (Debian ships it as docker-registry)."""
    for candidate in ("/usr/bin/docker-registry", shutil.which("docker-registry"), shutil.which("registry")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise MissingPrerequisite("docker-registry not installed: apt-get install docker-registry")


def free_port() -> int:
    """Ask the kernel for a currently unused loopback port (racy, so callers retry on clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _SigningIdentity:
    """An RSA key plus the self-signed certificate distribution is told to trust."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, common_name: str) -> _SigningIdentity:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=certificate)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def x5c(self) -> str:
        """Standard (not URL-safe) base64 DER, as RFC 7515 and distribution expect."""
        return base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")

    @property
    def kid(self) -> str:
        """libtrust key ID, what Harbor core puts in ``kid`` (distribution falls back to it)."""
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        encoded = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode("ascii").rstrip("=")
        return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))

    def sign_jwt(self, claims: Mapping[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid, "x5c": [self.x5c]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)


@dataclass(frozen=True)
class TokenRequest:
    """One request the token service answered, so tests can see who asked for what."""

    account: str | None
    service: str | None
    scopes: tuple[str, ...]
    status: int
    access: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


def _parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``repository:library/app:pull,push`` -> (type, name, actions); None if malformed."""
    resource_type, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return resource_type, name, tuple(a for a in actions.split(",") if a)


class TokenService:
    """A tiny Harbor core ``/service/token`` on 127.0.0.1, signing RS256 JWTs with x5c.

    Authenticated users get the actions they ask for, limited by ``grants``
    (user -> allowed actions, default: everything).  Anonymous callers get a
    token whose ``access`` grants nothing, like Harbor for a private project;
    a wrong password gets 401.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        *,
        service: str = "harbor-registry",
        issuer: str = "harbor-token-issuer",
        grants: Mapping[str, Collection[str]] | None = None,
        expires_in: int = 300,
    ) -> None:
        self.users = dict(users or {})
        self.grants = {user: frozenset(actions) for user, actions in (grants or {}).items()}
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self._identity = _SigningIdentity.generate(issuer)
        self._untrusted = _SigningIdentity.generate(issuer)  # same name, key the registry never saw
        self._tempdir = None if workdir else tempfile.TemporaryDirectory(prefix="token-service-")
        workdir = Path(self._tempdir.name) if self._tempdir else workdir
        assert workdir is not None
        workdir.mkdir(parents=True, exist_ok=True)
        self.rootcertbundle = workdir / "token-rootcertbundle.pem"
        self.rootcertbundle.write_bytes(self._identity.certificate_pem)
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_token_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-service", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/service/token"

    @property
    def requests(self) -> list[TokenRequest]:
        """Snapshot of every token request answered so far."""
        with self._lock:
            return list(self._requests)

    def requests_by(self, account: str | None) -> list[TokenRequest]:
        return [r for r in self.requests if r.account == account]

    def mint(
        self,
        repository: str,
        actions: Sequence[str] = ("pull",),
        expires_in: int = 300,
        subject: str = "harbor-core",
        *,
        audience: str | None = None,
    ) -> str:
        """A JWT exactly like the one Harbor core hands a preheat provider: short-lived pull on one repo."""
        access = [{"type": "repository", "name": repository, "actions": list(actions)}]
        return self._identity.sign_jwt(self._claims(subject, audience or self.service, access, expires_in))

    def mint_untrusted(
        self,
        repository: str,
        actions: Sequence[str] = ("pull",),
        expires_in: int = 300,
        subject: str = "harbor-core",
    ) -> str:
        """Same shape as ``mint`` but signed by a key outside rootcertbundle: registries answer 401."""
        access = [{"type": "repository", "name": repository, "actions": list(actions)}]
        return self._untrusted.sign_jwt(self._claims(subject, self.service, access, expires_in))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._tempdir is not None:
            self._tempdir.cleanup()

    def __enter__(self) -> TokenService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _claims(
        self, subject: str, audience: str, access: list[dict[str, Any]], expires_in: int | None
    ) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": access,
        }

    def _answer(self, query: Mapping[str, list[str]], authorization: str | None) -> tuple[int, dict[str, Any]]:
        """The token endpoint's logic, kept out of the HTTP handler for readability."""
        service = (query.get("service") or [None])[0]
        scopes = tuple(query.get("scope", []))
        try:
            account = self._authenticate(authorization)
        except _BadCredentials as bad:
            self._record(TokenRequest(bad.user, service, scopes, 401))
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        access = [self._grant(account, *parsed) for parsed in map(_parse_scope, scopes) if parsed]
        claims = self._claims(account or "", service or self.service, access, None)
        token = self._identity.sign_jwt(claims)
        granted = tuple((a["type"], a["name"], tuple(a["actions"])) for a in access)
        self._record(TokenRequest(account, service, scopes, 200, granted))
        return 200, {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": _rfc3339(datetime.fromtimestamp(claims["iat"], UTC)),
        }

    def _grant(self, account: str | None, resource_type: str, name: str, wanted: tuple[str, ...]) -> dict[str, Any]:
        """Anonymous gets no actions (a private Harbor project); users get ``grants[user]`` or all."""
        allowed = frozenset() if account is None else self.grants.get(account)
        actions = [a for a in wanted if allowed is None or a in allowed]
        return {"type": resource_type, "name": name, "actions": actions}

    def _authenticate(self, authorization: str | None) -> str | None:
        """The user for good Basic credentials, None for anonymous; raises on bad credentials."""
        if not authorization:
            return None
        scheme, _, encoded = authorization.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except ValueError:
            raise _BadCredentials(None) from None
        if scheme.lower() != "basic" or user not in self.users:
            raise _BadCredentials(user)
        if not secrets.compare_digest(self.users[user].encode(), password.encode()):
            raise _BadCredentials(user)
        return user

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _BadCredentials(Exception):
    def __init__(self, user: str | None) -> None:
        super().__init__(user)
        self.user = user


def _make_token_handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class TokenHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path.rstrip("/") != "/service/token":
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": parts.path}]})
                return
            status, body = service._answer(parse_qs(parts.query), self.headers.get("Authorization"))
            self._send(status, body)

        def _send(self, status: int, body: Mapping[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="harbor"')
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: ``TokenService.requests`` is the log."""

    return TokenHandler


# ------------------------------------------------------------------------- registry

_running: set[Registry] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: never leave a registry process behind, even if a finalizer was skipped."""
    for registry in list(_running):
        registry.kill()


class Registry:
    """One ``docker-registry serve CONFIG`` process on 127.0.0.1 with filesystem storage."""

    def __init__(
        self,
        *,
        binary: str,
        workdir: Path,
        config: dict[str, Any],
        port: int,
        token: TokenService | None,
        proxy_remote: str | None,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config = config
        self.port = port
        self.token = token
        self.proxy_remote = proxy_remote
        self.root = Path(config["storage"]["filesystem"]["rootdirectory"])
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def __repr__(self) -> str:
        mode = f" proxy={self.proxy_remote}" if self.proxy_remote else ""
        return f"<Registry {self.url}{mode} running={self.running}>"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 20.0) -> Registry:
        """Start (or restart on the same port and storage) and wait until ``/v2/`` answers."""
        if self.running:
            return self
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        _running.add(self)
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate gracefully (SIGTERM), escalating to SIGKILL after ``timeout``."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._closed()

    def kill(self) -> None:
        """SIGKILL, for crash tests: no cleanup in the registry gets to run."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._closed()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def blob_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob's bytes."""
        algorithm, _, hex_digest = digest.partition(":")
        return self.root / "docker/registry/v2/blobs" / algorithm / hex_digest[:2] / hex_digest / "data"

    def blob_on_disk(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def wait_for_blob(self, digest: str, timeout: float = 15.0) -> bool:
        """Poll the disk: a pull-through cache stores a served blob in the background, a moment later."""
        deadline = time.monotonic() + timeout
        while not self.blob_on_disk(digest):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def access_log(self) -> list[AccessLogEntry]:
        """Every request this registry answered, parsed from its combined-format access log."""
        return [
            AccessLogEntry(m["method"], m["path"], int(m["status"]), m["agent"])
            for m in map(_ACCESS_LINE.match, self.log_text().splitlines())
            if m
        ]

    def blob_requests(
        self,
        digest: str | None = None,
        *,
        method: str = "GET",
        status: int | None = 200,
        user_agent: str | None = None,
    ) -> int:
        """How many blob requests this registry answered, e.g. the load a cache put on an origin.

        ``user_agent="Go-http-client"`` isolates distribution pull-through caches.
        """
        return sum(
            1
            for entry in self.access_log()
            if entry.method == method
            and (entry.blob_digest == digest if digest else entry.blob_digest is not None)
            and (status is None or entry.status == status)
            and (user_agent is None or user_agent in entry.user_agent)
        )

    def upstream_blob_fetches(self, digest: str | None = None) -> int:
        """Blobs this pull-through cache fetched from upstream and stored (best effort, from its log).

        Derived from distribution's "Adding new scheduler entry for REPO@DIGEST"
        lines, minus manifests.  On the wire, 2.8 costs the upstream a HEAD and
        *two* GETs per miss (one streamed to the client, one stored in the
        background); count those with ``origin.blob_requests(user_agent="Go-http-client")``.
        """
        count = 0
        for repository, found in _SCHEDULER_ENTRY.findall(self.log_text()):
            if (digest is None or found == digest) and not self._is_manifest(repository, found):
                count += 1
        return count

    def auth_header(self, repository: str, actions: Sequence[str] = ("pull",)) -> str | None:
        """``Bearer <jwt>`` for this registry's token service, or None when it is open."""
        return f"Bearer {self.token.mint(repository, actions)}" if self.token else None

    def client(self, auth_header: str | None = None) -> httpx.Client:
        """An httpx client rooted at this registry (caller closes it); ignores *_PROXY, it is loopback."""
        headers = {"Authorization": auth_header} if auth_header else {}
        # Plain http: verify=False only spares loading the CA bundle for every client.
        return httpx.Client(base_url=self.url, headers=headers, timeout=_HTTP_TIMEOUT, trust_env=False, verify=False)

    def _is_manifest(self, repository: str, digest: str) -> bool:
        algorithm, _, hex_digest = digest.partition(":")
        revisions = self.root / "docker/registry/v2/repositories" / repository / "_manifests/revisions"
        return (revisions / algorithm / hex_digest).is_dir()

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry exited with {self._process.returncode} before serving {self.url}; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1.0, trust_env=False, verify=False).status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise RegistryStartError(
                    f"docker-registry did not answer {self.url}/v2/ within {timeout:.0f}s; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _closed(self) -> None:
        _running.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" '
    r'(?P<status>\d{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"'
)
_SCHEDULER_ENTRY = re.compile(r"Adding new scheduler entry for (\S+)@(sha256:[0-9a-f]{64})")
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class AccessLogEntry:
    """One line of distribution's access log (stdout, Apache combined format)."""

    method: str
    path: str
    status: int
    user_agent: str

    @property
    def blob_digest(self) -> str | None:
        """The digest for ``/v2/REPO/blobs/DIGEST`` requests (not uploads), else None."""
        match = _BLOB_PATH.match(self.path.partition("?")[0])
        return match[1] if match else None


class RegistryStartError(RuntimeError):
    """docker-registry did not come up; the message carries its log tail."""


def _registry_config(
    root: Path,
    port: int,
    token: TokenService | None,
    proxy_remote: str | None,
    proxy_username: str | None,
    proxy_password: str | None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "secret": secrets.token_hex(16),
        },
        "health": {"storagedriver": {"enabled": False}},
    }
    if token is not None:
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.rootcertbundle),
            }
        }
    if proxy_remote is not None:
        config["proxy"] = {"remoteurl": proxy_remote}
        if proxy_username is not None:
            config["proxy"]["username"] = proxy_username
            config["proxy"]["password"] = proxy_password or ""
    return config


def start_registry(
    workdir: Path,
    *,
    token: TokenService | None = None,
    proxy_remote: str | None = None,
    proxy_username: str | None = None,
    proxy_password: str | None = None,
    timeout: float = 20.0,
) -> Registry:
    """Start a registry storing under ``workdir/storage``; with ``proxy_remote`` a pull-through cache.

    A proxy-mode registry pings ``proxy_remote/v2/`` once at start-up to learn
    the token realm, so the origin must already be running.
    """
    binary = find_registry_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    attempts = 3
    for attempt in range(1, attempts + 1):
        port = free_port()
        config = _registry_config(root, port, token, proxy_remote, proxy_username, proxy_password)
        registry = Registry(
            binary=binary,
            workdir=workdir,
            config=config,
            port=port,
            token=token,
            proxy_remote=proxy_remote,
        )
        try:
            return registry.start(timeout=timeout)
        except RegistryStartError as error:
            if attempt == attempts or "address already in use" not in str(error):
                raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- image pushing


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, message: str = "condition") -> None:
    """Poll ``condition`` until true; raise TimeoutError after ``timeout`` seconds (never sleeps unbounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not met within {timeout}s")
        time.sleep(0.05)


def random_blob_chunks(size: int, seed: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Deterministic, incompressible bytes in ``chunk``-sized pieces, so a 2 GiB layer never sits in memory.

    The bytes depend only on ``(size, seed)``: any ``chunk`` (a multiple of 4)
    yields the same stream.  About 250 MiB/s, far faster than the registry stores.
    """
    if chunk <= 0 or chunk % 4:
        raise ValueError("chunk must be a positive multiple of 4 so chunking does not change the bytes")
    rng = random.Random(seed)
    remaining = size
    while remaining > 0:
        n = min(chunk, remaining)
        yield rng.randbytes(n)
        remaining -= n


def _raise_for_status(response: httpx.Response, what: str) -> None:
    if response.is_error:
        raise RuntimeError(f"{what}: HTTP {response.status_code} {response.text[:500]}")


def _location(response: httpx.Response) -> str:
    """Upload URLs may be absolute or relative; distribution also rotates ``_state`` on every PATCH."""
    return urljoin(str(response.url), response.headers["Location"])


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def push_blob(
    registry: Registry,
    repository: str,
    data: bytes | Iterable[bytes],
    *,
    auth_header: str | None = None,
) -> tuple[str, int]:
    """Upload a blob and return ``(digest, size)``.

    ``bytes`` go up monolithically (POST, PUT ?digest= with the body); any other
    iterable is a chunked upload (POST, one PATCH per item, PUT ?digest=) hashed
    as it streams.  Without ``auth_header`` a push token is minted from
    ``registry.token`` when the registry is token-protected.
    """
    auth_header = auth_header or registry.auth_header(repository, ("pull", "push"))
    with registry.client(auth_header) as client:
        started = client.post(f"/v2/{repository}/blobs/uploads/")
        _raise_for_status(started, f"start upload to {repository}")
        location = _location(started)
        if isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
            digest, size = _sha256_digest(body), len(body)
            finished = client.put(
                _with_digest(location, digest),
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )
        else:
            hasher, size = hashlib.sha256(), 0
            for piece in data:
                if not piece:
                    continue
                patched = client.patch(
                    location,
                    content=piece,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{size}-{size + len(piece) - 1}",
                    },
                )
                _raise_for_status(patched, f"upload chunk at offset {size} to {repository}")
                location = _location(patched)
                hasher.update(piece)
                size += len(piece)
            digest = "sha256:" + hasher.hexdigest()
            finished = client.put(_with_digest(location, digest))
        _raise_for_status(finished, f"finish upload of {digest} to {repository}")
        if finished.headers.get("Docker-Content-Digest", digest) != digest:
            raise RuntimeError(f"registry stored {finished.headers['Docker-Content-Digest']}, we sent {digest}")
    return digest, size


def _put_manifest(
    registry: Registry, repository: str, reference: str, body: bytes, media_type: str, auth_header: str | None
) -> str:
    digest = _sha256_digest(body)
    with registry.client(auth_header) as client:
        response = client.put(
            f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )
    _raise_for_status(response, f"put manifest {repository}:{reference}")
    if response.headers.get("Docker-Content-Digest", digest) != digest:
        raise RuntimeError(f"registry computed {response.headers['Docker-Content-Digest']}, expected {digest}")
    return digest


def _split_platform(platform: str) -> dict[str, str]:
    """``linux/arm64/v8`` -> ``{"os": "linux", "architecture": "arm64", "variant": "v8"}``."""
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    result = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        result["variant"] = parts[2]
    return result


@dataclass(frozen=True)
class PushedImage:
    """What ``push_image`` put into the registry, for assertions on digests and sizes."""

    repository: str
    tag: str | None
    manifest_digest: str
    media_type: str
    config_digest: str
    layer_digests: list[str]
    sizes: dict[str, int]
    platform: str = "linux/amd64"
    manifest_size: int = 0

    @property
    def blob_digests(self) -> list[str]:
        """Config first, then layers in manifest order: the blobs a preheat must warm."""
        return [self.config_digest, *self.layer_digests]

    @property
    def reference(self) -> str:
        return self.tag or self.manifest_digest

    @property
    def total_size(self) -> int:
        return sum(self.sizes[d] for d in self.blob_digests)


@dataclass(frozen=True)
class PushedIndex:
    """An OCI image index and the per-platform OCI images it points to (keys like ``linux/arm64``)."""

    repository: str
    tag: str
    index_digest: str
    images: dict[str, PushedImage]
    media_type: str = OCI_INDEX_MEDIA_TYPE
    index_size: int = 0

    @property
    def platforms(self) -> list[str]:
        return list(self.images)

    @property
    def blob_digests(self) -> list[str]:
        return [d for image in self.images.values() for d in image.blob_digests]


def _layer_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def push_image(
    registry: Registry,
    repository: str,
    tag: str | None,
    layers: Sequence[int] | Sequence[bytes],
    *,
    platform: str = "linux/amd64",
    oci: bool = False,
    seed: int = 0,
    token: TokenService | None = None,
) -> PushedImage:
    """Push config + layers + manifest; ``tag=None`` pushes by digest only.

    ``layers`` items are either bytes or a size for deterministic random content
    (from ``seed``; sizes above 16 MiB are streamed in a chunked upload).
    ``oci=False`` gives a Docker schema-2 manifest
    (``application/vnd.docker.distribution.manifest.v2+json`` with Docker config
    and ``tar.gzip`` layer types); ``oci=True`` an OCI image manifest
    (``application/vnd.oci.image.manifest.v1+json``).  The config JSON carries
    the platform's os/architecture and the seed, so each seed gives distinct digests.
    """
    token = token or registry.token
    auth_header = f"Bearer {token.mint(repository, ('pull', 'push'))}" if token else None
    sizes: dict[str, int] = {}
    layer_digests: list[str] = []
    for index, layer in enumerate(layers):
        if isinstance(layer, int):
            chunks = random_blob_chunks(layer, _layer_seed(seed, index), chunk=_STREAM_CHUNK)
            data: bytes | Iterable[bytes] = b"".join(chunks) if layer <= _IN_MEMORY_LAYER_LIMIT else chunks
        else:
            data = bytes(layer)
        digest, size = push_blob(registry, repository, data, auth_header=auth_header)
        layer_digests.append(digest)
        sizes[digest] = size

    config = {
        **_split_platform(platform),
        "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": {"org.example.test-seed": str(seed), "org.example.platform": platform}},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "history": [{"created_by": f"test layer {i}"} for i in range(len(layer_digests))],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest, config_size = push_blob(registry, repository, config_bytes, auth_header=auth_header)
    sizes[config_digest] = config_size

    media_type = OCI_MANIFEST_MEDIA_TYPE if oci else DOCKER_MANIFEST_MEDIA_TYPE
    config_type = OCI_CONFIG_MEDIA_TYPE if oci else DOCKER_CONFIG_MEDIA_TYPE
    layer_type = OCI_LAYER_MEDIA_TYPE if oci else DOCKER_LAYER_MEDIA_TYPE
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": config_size, "digest": config_digest},
        "layers": [{"mediaType": layer_type, "size": sizes[d], "digest": d} for d in layer_digests],
    }
    manifest_bytes = json.dumps(manifest, indent=3).encode()
    manifest_digest = _sha256_digest(manifest_bytes)
    _put_manifest(registry, repository, tag or manifest_digest, manifest_bytes, media_type, auth_header)
    return PushedImage(
        repository=repository,
        tag=tag,
        manifest_digest=manifest_digest,
        media_type=media_type,
        config_digest=config_digest,
        layer_digests=layer_digests,
        sizes=sizes,
        platform=platform,
        manifest_size=len(manifest_bytes),
    )


def push_index(
    registry: Registry,
    repository: str,
    tag: str,
    platforms: Mapping[str, Sequence[int] | Sequence[bytes]],
    *,
    token: TokenService | None = None,
    seed: int = 0,
) -> PushedIndex:
    """Push one OCI image per platform (by digest) and an OCI image index under ``tag``.

    The index is ``application/vnd.oci.image.index.v1+json`` with entries of
    ``application/vnd.oci.image.manifest.v1+json`` and a ``platform`` object each;
    every platform gets its own seed, so no two platforms share a blob.
    """
    token = token or registry.token
    images: dict[str, PushedImage] = {}
    for offset, (platform, layers) in enumerate(platforms.items()):
        images[platform] = push_image(
            registry, repository, None, layers, platform=platform, oci=True, seed=seed * 1000 + offset + 1, token=token
        )
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": image.media_type,
                "size": image.manifest_size,
                "digest": image.manifest_digest,
                "platform": _split_platform(platform),
            }
            for platform, image in images.items()
        ],
    }
    index_bytes = json.dumps(index, indent=3).encode()
    auth_header = f"Bearer {token.mint(repository, ('pull', 'push'))}" if token else None
    index_digest = _put_manifest(registry, repository, tag, index_bytes, OCI_INDEX_MEDIA_TYPE, auth_header)
    return PushedIndex(
        repository=repository, tag=tag, index_digest=index_digest, images=images, index_size=len(index_bytes)
    )


def unique_repository(prefix: str = "test/repo") -> str:
    """A repository name no other test uses, for tests that push into the shared origin."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
