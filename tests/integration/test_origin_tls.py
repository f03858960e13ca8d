"""An origin registry behind a private CA: the job's ``certificate_chain``/``insecure_skip_verify``, and ``registries.tls``.

A real ``docker-registry`` serves https with a certificate from a CA the test makes, as an
internal Harbor does. Without a word about that CA a job fails saying the certificate failed
verification; with the CA in ``certificate_chain`` (PEM, or base64 of DER as Dragonfly's Go
``[]byte`` arrives), with ``insecure_skip_verify``, or with no job argument at all when
``registries.tls`` names the CA file for the host, it warms the image.

A job that brings its own TLS is never handed the operator's ``registries.credentials``: a CA
or a skip-verify the caller chose could lead them to a man in the middle. A TLS front of the
test's own (what Harbor's nginx is) in front of a token-protected registry records what
reached the origin, so the test sees the robot's password arrive for a plain job and not
for one with its own TLS.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROBOT_USER, USERS
from tests.fakes.dragonfly_manager import FakeDragonflyManager
from tests.fakes.kraken_proxy import FakeKrakenProxy
from tests.gateway_process import gateway_config
from tests.gateway_thread import GatewayThread
from tests.integration.test_adapters_files import run_job, state_of
from tests.pki import PrivateCA
from tests.registry import (
    PushedImage,
    Registry,
    RegistryStartError,
    TokenService,
    _registry_config,
    find_registry_binary,
    free_port,
    push_image,
)

ROBOT_SECRET_ENV = "ROBOT_SECRET"


# --- a registry serving https from a private CA ------------------------------------------------


class HttpsRegistry(Registry):
    """``docker-registry`` with ``http.tls``: reached, pushed to and probed over https, trusting ``ca``."""

    def __init__(self, *, ca_file: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trust = ssl.create_default_context(cafile=str(ca_file))

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def client(self, auth_header: str | None = None) -> httpx.Client:
        headers = {"Authorization": auth_header} if auth_header else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, trust_env=False, verify=self.trust)

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RegistryStartError(f"docker-registry exited at start:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1, trust_env=False, verify=self.trust).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RegistryStartError(f"docker-registry did not answer {self.url}/v2/ over TLS:\n{self.log_tail()}")


class PrivateOrigin:
    """The CA, its certificate as a file, and an https registry holding one image."""

    def __init__(self, workdir: Path) -> None:
        self.ca = PrivateCA("Internal Harbor CA")
        self.ca_file = workdir / "ca.pem"
        self.ca_file.write_text(self.ca.pem)
        certificate, key = self.ca.issue()
        (workdir / "registry.crt").write_bytes(certificate)
        (workdir / "registry.key").write_bytes(key)
        port = free_port()
        config = _registry_config(workdir / "storage", port, None, None, None, None)
        config["http"]["tls"] = {"certificate": str(workdir / "registry.crt"), "key": str(workdir / "registry.key")}
        self.registry = HttpsRegistry(
            ca_file=self.ca_file,
            binary=find_registry_binary(),
            workdir=workdir,
            config=config,
            port=port,
            token=None,
            proxy_remote=None,
        ).start()
        self.image: PushedImage = push_image(self.registry, "library/app", "1.0", [64 * 1024, 96 * 1024], seed=7)

    @property
    def manifest_url(self) -> str:
        return f"{self.registry.url}/v2/library/app/manifests/1.0"


@pytest.fixture(scope="module")
def private_origin(registry_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateOrigin]:
    origin = PrivateOrigin(tmp_path_factory.mktemp("private-origin"))
    try:
        yield origin
    finally:
        origin.registry.stop()


@pytest.fixture
def gateways() -> Iterator[list[GatewayThread]]:
    started: list[GatewayThread] = []
    yield started
    for gateway in started:
        gateway.kill()


def start_gateway(
    started: list[GatewayThread], tmp: Path, *, registries: Mapping[str, Any] | None = None, **config: Any
) -> GatewayThread:
    base = gateway_config(tmp, **config)
    base["registries"] = {**base["registries"], **(registries or {})}
    gateway = GatewayThread(tmp / "gateway", base, env={ROBOT_SECRET_ENV: USERS[ROBOT_USER]})
    started.append(gateway)
    return gateway.start()


def blob_rows(job: dict[str, Any]) -> set[str]:
    return {row["url"] for row in state_of(job, 1)["results"][0]["success_tasks"]}


def cached(tmp: Path, image: PushedImage) -> bool:
    return all((tmp / "cache" / "blobs" / "sha256" / d.removeprefix("sha256:")).is_file() for d in image.blob_digests)


# --- one job's own TLS ------------------------------------------------------------------------


def test_without_a_word_about_its_ca_the_job_fails_saying_the_certificate_failed_verification(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    gateway = start_gateway(gateways, tmp_path)
    started = time.monotonic()

    job = run_job(gateway, {"type": "image", "url": private_origin.manifest_url})

    assert job["state"] == "FAILURE", job
    error = state_of(job, 1)["error"]
    assert f"the TLS certificate of {private_origin.registry.host} failed verification" in error, error
    assert "certificate_chain" in error and "registries.tls" in error, "it says what to send"
    assert "Traceback" not in error and "ssl.SSLCertVerificationError" not in error
    assert time.monotonic() - started < 15, "a certificate that fails is not retried"


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda ca: ca.pem, id="pem"),
        pytest.param(lambda ca: base64.b64encode(ca.der).decode(), id="base64-der"),
        pytest.param(lambda ca: base64.b64encode(ca.pem.encode()).decode(), id="base64-pem"),
    ],
)
def test_the_ca_in_certificate_chain_warms_the_image(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path, encode: Any
) -> None:
    gateway = start_gateway(gateways, tmp_path)

    job = run_job(
        gateway, {"type": "image", "url": private_origin.manifest_url, "certificate_chain": [encode(private_origin.ca)]}
    )

    assert job["state"] == "SUCCESS", job
    assert blob_rows(job) == {
        f"{private_origin.registry.url}/v2/library/app/blobs/{d}" for d in private_origin.image.blob_digests
    }
    assert cached(tmp_path, private_origin.image)


def test_insecure_skip_verify_warms_the_image(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    gateway = start_gateway(gateways, tmp_path)

    job = run_job(gateway, {"type": "image", "url": private_origin.manifest_url, "insecure_skip_verify": True})

    assert job["state"] == "SUCCESS", job
    assert cached(tmp_path, private_origin.image)


def test_a_certificate_chain_that_is_no_certificate_is_refused_at_create(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    gateway = start_gateway(gateways, tmp_path)
    body = {"type": "image", "url": private_origin.manifest_url, "certificate_chain": ["bm90IGEgY2VydA=="]}

    with gateway.client() as client:
        response = client.post("/oapi/v1/jobs", json={"type": "preheat", "args": body})

    assert response.status_code == 422, response.text
    assert "certificate_chain[0]" in response.text


class ConnectProxy:
    """A forward proxy that only tunnels (``CONNECT host:port``), as a proxy in front of an https origin does:
    the TLS inside the tunnel runs between the gateway and the origin. Counts the tunnels by target."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, name="connect-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                head += client.recv(1024) or b"\r\n\r\n"
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 501 Only CONNECT\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                done = threading.Event()

                def pipe(source: socket.socket, sink: socket.socket) -> None:
                    with contextlib.suppress(OSError):
                        while data := source.recv(65536):
                            sink.sendall(data)
                    done.set()

                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
                pipe(client, upstream)
                done.wait(5)

    def close(self) -> None:
        self._server.close()


def test_a_file_job_fetches_from_the_private_origin_with_the_jobs_ca(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    gateway = start_gateway(gateways, tmp_path)
    digest = private_origin.image.layer_digests[0]
    url = f"{private_origin.registry.url}/v2/library/app/blobs/{digest}"  # a file server like any other

    refused = run_job(gateway, {"type": "file", "url": url})
    fetched = run_job(gateway, {"type": "file", "url": url, "certificate_chain": [private_origin.ca.pem]})

    assert refused["state"] == "FAILURE" and "failed verification" in state_of(refused, 1)["error"], refused
    assert fetched["state"] == "SUCCESS", fetched


@pytest.mark.parametrize("how", ["certificate_chain", "registries.tls"])
def test_through_a_proxy_the_origins_tls_runs_end_to_end_in_the_tunnel(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path, how: str
) -> None:
    proxy = ConnectProxy()
    try:
        cluster = {"id": 1, "name": "nodes", "adapter": "proxy", "proxies": [proxy.url]}
        per_host = [{"host": private_origin.registry.host, "ca_file": str(private_origin.ca_file)}]
        gateway = start_gateway(
            gateways, tmp_path, clusters=[cluster], registries={"tls": per_host} if how == "registries.tls" else {}
        )
        args = {"type": "image", "url": private_origin.manifest_url}
        if how == "certificate_chain":
            args["certificate_chain"] = [private_origin.ca.pem]

        job = run_job(gateway, args)

        assert job["state"] == "SUCCESS", job
        assert proxy.tunnels and set(proxy.tunnels) == {private_origin.registry.host}
    finally:
        proxy.close()


def test_a_kraken_cluster_reads_the_digest_from_the_private_origin_with_the_jobs_ca(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    with FakeKrakenProxy() as kraken:
        cluster = {"id": 1, "name": "kraken", "adapter": "kraken", "endpoint": kraken.url}
        gateway = start_gateway(gateways, tmp_path, clusters=[cluster])

        refused = run_job(gateway, {"type": "image", "url": private_origin.manifest_url})
        notified = run_job(
            gateway, {"type": "image", "url": private_origin.manifest_url, "certificate_chain": [private_origin.ca.pem]}
        )

        assert refused["state"] == "FAILURE" and "failed verification" in state_of(refused, 1)["error"], refused
        assert notified["state"] == "SUCCESS", notified
        [event] = kraken.notifications[-1]["Events"]
        assert event["Target"]["Digest"] == private_origin.image.manifest_digest


# --- the operator's TLS per registry ----------------------------------------------------------


def test_registries_tls_naming_the_ca_file_serves_a_job_with_no_tls_argument(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    gateway = start_gateway(
        gateways,
        tmp_path,
        registries={"tls": [{"host": private_origin.registry.host, "ca_file": str(private_origin.ca_file)}]},
    )

    job = run_job(gateway, {"type": "image", "url": private_origin.manifest_url})

    assert job["state"] == "SUCCESS", job
    assert cached(tmp_path, private_origin.image)


def test_a_broken_registries_tls_entry_stops_the_gateway_at_start_naming_the_key(tmp_path: Path) -> None:
    gateway = GatewayThread(
        tmp_path / "gateway",
        gateway_config(
            tmp_path, registries={"tls": [{"host": "harbor.internal", "ca_file": str(tmp_path / "no.pem")}]}
        ),
    )
    result = gateway.cli("check-config", str(gateway.config_path), check=False)
    assert result.returncode != 0
    assert f"registries.tls[0].ca_file: cannot read {tmp_path / 'no.pem'}" in result.stdout + result.stderr


# --- the operator's credentials never ride on a caller's TLS ------------------------------------


class RecordingTlsFront:
    """A TLS-terminating reverse proxy of the test's own, in front of plain-http services (as Harbor's
    nginx is in front of its registry and token service): routes by path prefix, records every request head."""

    def __init__(self, context: ssl.SSLContext, routes: dict[str, str]) -> None:
        self.routes = routes
        self.heard: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.request.do_handshake()  # in this thread, so a refused handshake never holds the acceptor
                super().setup()

            def do_GET(self) -> None:
                front.forward(self)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                sock, address = self.socket.accept()
                return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that refused our certificate

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="tls-front", daemon=True)
        self._thread.start()
        self._upstream = httpx.Client(trust_env=False, timeout=30)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def authorizations(self, since: int = 0) -> list[str]:
        with self._lock:
            return [headers.get("authorization", "") for _, headers in self.heard[since:]]

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.heard.append((handler.path, {k.lower(): v for k, v in handler.headers.items()}))
        upstream = next(url for prefix, url in self.routes.items() if handler.path.startswith(prefix))
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        with self._upstream.stream(handler.command, upstream + handler.path, headers=headers) as response:
            body = response.read()
            handler.send_response(response.status_code)
            for name, value in response.headers.multi_items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()


class GuardedOrigin:
    """A token-protected registry behind a TLS front from a private CA; its token service behind the same front."""

    def __init__(self, workdir: Path, tokens: TokenService) -> None:
        self.ca = PrivateCA("Internal Harbor CA")
        self.ca_file = workdir / "ca.pem"
        self.ca_file.write_text(self.ca.pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate, key = self.ca.issue()
        (workdir / "front.crt").write_bytes(certificate)
        (workdir / "front.key").write_bytes(key)
        context.load_cert_chain(workdir / "front.crt", workdir / "front.key")
        self.tokens = tokens
        port = free_port()
        self.front = RecordingTlsFront(context, {})
        config = _registry_config(workdir / "storage", port, tokens, None, None, None)
        config["auth"]["token"]["realm"] = f"{self.front.url}/service/token"  # as Harbor names its own host
        self.registry = Registry(
            binary=find_registry_binary(), workdir=workdir, config=config, port=port, token=tokens, proxy_remote=None
        ).start()
        self.front.routes.update({"/service/token": tokens.url, "/": self.registry.url})
        self.image = push_image(self.registry, "library/app", "1.0", [64 * 1024], seed=8, token=tokens)

    @property
    def manifest_url(self) -> str:
        return f"{self.front.url}/v2/library/app/manifests/1.0"

    def close(self) -> None:
        self.registry.stop()
        self.front.close()


@pytest.fixture(scope="module")
def guarded_origin(
    registry_binary: str, token_service: TokenService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuardedOrigin]:
    origin = GuardedOrigin(tmp_path_factory.mktemp("guarded-origin"), token_service)
    try:
        yield origin
    finally:
        origin.close()


def guarded_gateway(gateways: list[GatewayThread], tmp: Path, origin: GuardedOrigin) -> GatewayThread:
    """The operator configured the robot's credentials and the CA for the origin's host."""
    return start_gateway(
        gateways,
        tmp,
        registries={
            "credentials": [{"host": origin.front.host, "username": ROBOT_USER, "password_env": ROBOT_SECRET_ENV}],
            "tls": [{"host": origin.front.host, "ca_file": str(origin.ca_file)}],
        },
    )


def robot_basic() -> str:
    return "Basic " + base64.b64encode(f"{ROBOT_USER}:{USERS[ROBOT_USER]}".encode()).decode()


def test_a_job_over_the_operators_tls_is_handed_the_configured_credentials(
    guarded_origin: GuardedOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    gateway = guarded_gateway(gateways, tmp_path, guarded_origin)
    since = len(guarded_origin.front.heard)

    job = run_job(gateway, {"type": "image", "url": guarded_origin.manifest_url})

    assert job["state"] == "SUCCESS", job
    assert robot_basic() in guarded_origin.front.authorizations(since), "the robot asked the token service"


@pytest.mark.parametrize(
    "own_tls",
    [
        pytest.param(lambda origin: {"certificate_chain": [origin.ca.pem]}, id="certificate_chain"),
        pytest.param(lambda origin: {"insecure_skip_verify": True}, id="insecure_skip_verify"),
    ],
)
def test_a_job_with_its_own_tls_is_never_handed_the_configured_credentials(
    guarded_origin: GuardedOrigin, gateways: list[GatewayThread], tmp_path: Path, own_tls: Any
) -> None:
    gateway = guarded_gateway(gateways, tmp_path, guarded_origin)
    since, robot_tokens = len(guarded_origin.front.heard), len(guarded_origin.tokens.requests_by(ROBOT_USER))

    job = run_job(gateway, {"type": "image", "url": guarded_origin.manifest_url, **own_tls(guarded_origin)})

    assert job["state"] == "FAILURE", job
    heard = guarded_origin.front.authorizations(since)
    assert heard, "the job did reach the origin, over its own TLS"
    assert not [value for value in heard if value.startswith("Basic")], heard
    assert len(guarded_origin.tokens.requests_by(ROBOT_USER)) == robot_tokens
    error = state_of(job, 1)["error"]
    assert "never handed registries.credentials" in error and USERS[ROBOT_USER] not in error


# --- a dragonfly cluster forwards the arguments ------------------------------------------------


def test_a_dragonfly_cluster_is_sent_the_chain_as_base64_of_each_pem_and_skip_verify(
    private_origin: PrivateOrigin, gateways: list[GatewayThread], tmp_path: Path
) -> None:
    with FakeDragonflyManager("df-token") as manager:
        cluster = {"id": 3, "name": "df", "adapter": "dragonfly", "manager": manager.url, "token_env": "DF_TOKEN"}
        config = gateway_config(tmp_path, clusters=[cluster])
        gateway = GatewayThread(tmp_path / "gateway", config, env={"DF_TOKEN": "df-token"})
        gateways.append(gateway)
        gateway.start()
        url = private_origin.manifest_url

        with_chain = run_job(gateway, {"type": "image", "url": url, "certificate_chain": [private_origin.ca.pem]})
        skipping = run_job(gateway, {"type": "image", "url": url, "insecure_skip_verify": True})

        assert with_chain["state"] == skipping["state"] == "SUCCESS", (with_chain, skipping)
        first, second = (created["args"] for created in manager.created)
        assert [base64.b64decode(item).decode() for item in first["certificate_chain"]] == [
            private_origin.ca.pem.strip()
        ]
        assert "insecure_skip_verify" not in first
        assert second["insecure_skip_verify"] is True and "certificate_chain" not in second
