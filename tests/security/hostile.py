"""Small hostile peers for the security suite, and the watch that proves the gateway survives them.

``HostileServer`` is a real HTTP server on loopback whose every answer is written by the test
(a function of the request, free to write raw bytes, drip, lie about sizes or redirect); it
records every request it received, headers included, so a test can assert which credentials
reached it. ``Survival`` polls an authenticated ``/healthy`` on a fresh connection throughout
an attack and reads the gateway's peak RSS (``VmHWM``) afterwards.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_process import GatewayProcess

RSS_LIMIT_MIB = 300
HEALTHY_DEADLINE_SECONDS = 2.0


@dataclass(frozen=True)
class Received:
    """One request a hostile server received."""

    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


Handler = Callable[["Exchange"], None]


class Exchange:
    """One request and the means to answer it however the test likes."""

    def __init__(self, handler: BaseHTTPRequestHandler, received: Received) -> None:
        self._handler = handler
        self.request = received
        self.path = received.path
        self.wfile = handler.wfile

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """A whole response with a truthful ``Content-Length`` unless ``headers`` says otherwise."""
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        self.head(status, headers)
        self.write(body)

    def json(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})

    def head(self, status: int, headers: dict[str, str]) -> None:
        self._handler.send_response(status)
        for name, value in headers.items():
            self._handler.send_header(name, value)
        self._handler.end_headers()
        self._handler.wfile.flush()

    def write(self, data: bytes) -> bool:
        """Write ``data``; False once the gateway hung up."""
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def stream(self, chunk: bytes, total: int, *, every: float = 0.0) -> int:
        """Write ``chunk`` again and again up to ``total`` bytes (or until the peer hangs up); returns bytes sent."""
        sent = 0
        while sent < total:
            piece = chunk[: total - sent]
            if not self.write(piece):
                break
            sent += len(piece)
            if every:
                time.sleep(every)
        return sent


class HostileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every request with ``handler``."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.received: list[Received] = []
        self.sent_bytes = 0
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                received = Received(self.command, self.path, {k: v for k, v in self.headers.items()})
                server.received.append(received)
                with suppress(BrokenPipeError, ConnectionResetError):
                    server.handler(Exchange(self, received))

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def authorizations(self) -> list[str]:
        """Every ``Authorization`` header this server received."""
        return [value for r in self.received if (value := r.header("Authorization"))]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(config: bytes, layers: list[tuple[str, int]], *, config_size: int | None = None) -> bytes:
    """An OCI image manifest naming ``config`` and layers given as (digest, declared size)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config) if config_size is None else config_size,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s} for d, s in layers
            ],
        }
    ).encode()


@dataclass
class Survival:
    """What the gateway looked like from outside during an attack."""

    gateway: GatewayProcess
    token: str
    worst_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    probes: int = 0
    statuses_5xx: list[str] = field(default_factory=list)

    def peak_rss_mib(self) -> float:
        assert self.gateway.process is not None
        status = Path(f"/proc/{self.gateway.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return kib / 1024

    def current_rss_mib(self) -> float:
        assert self.gateway.process is not None
        status = Path(f"/proc/{self.gateway.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kib / 1024

    def assert_survived(self) -> None:
        """RSS under the limit, every probe answered 200 within the deadline, no traceback logged."""
        assert self.probes > 0, "the watch never probed"
        assert not self.failures, f"/healthy failed during the attack: {self.failures[:5]}"
        assert self.worst_seconds < HEALTHY_DEADLINE_SECONDS, f"/healthy took {self.worst_seconds:.2f}s"
        peak = self.peak_rss_mib()
        assert peak < RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB"
        logs = self.gateway.logs()
        assert "Traceback" not in logs, logs[-3000:]


@contextmanager
def survival(gateway: GatewayProcess, *, every: float = 0.25) -> Iterator[Survival]:
    """Probe ``GET /healthy`` with a job token on a fresh connection every ``every`` seconds while the block runs."""
    watch = Survival(gateway, gateway.token)
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with httpx.Client(timeout=HEALTHY_DEADLINE_SECONDS + 3) as client:
                    response = client.get(f"{gateway.url}/healthy", headers={"Authorization": f"Bearer {watch.token}"})
                if response.status_code != 200:
                    watch.failures.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as error:
                watch.failures.append(f"{type(error).__name__}: {error}")
            watch.worst_seconds = max(watch.worst_seconds, time.monotonic() - started)
            watch.probes += 1
            stop.wait(every)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(10)


def disk_bytes(path: Path) -> int:
    """Bytes held under ``path`` (every file, tmp files included)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def raw_connection(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=5)
