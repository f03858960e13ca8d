"""Debian's haproxy in front of gateway replicas, as an operator would put it: health checks on ``/readyz``.

The config is the one ``docs/operating.md`` recommends for a rolling upgrade: a fast ``/readyz``
check that takes a replica out at its first 503 (``fall 1``), and layer-7 retries that send a
request refused or left unanswered by a replica that is going away to the other one
(``retry-on`` with ``option redispatch``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.registry import MissingPrerequisite, free_port

CONFIG = """\
global
    maxconn 4096
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 35s
    timeout http-keep-alive 60s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request

frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fastinter 200ms downinter 200ms fall 1 rise 1
{servers}
"""


def find_haproxy() -> str:
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if binary is None:
        raise MissingPrerequisite("haproxy is not installed (apt-get install haproxy)")
    return binary


class Haproxy:
    """One haproxy process balancing ``servers`` (name -> port on 127.0.0.1); stop it with :meth:`close`."""

    def __init__(self, binary: str, workdir: Path, servers: dict[str, int]) -> None:
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        self.config = workdir / "haproxy.cfg"
        lines = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in servers.items())
        self.config.write_text(CONFIG.format(socket=self.socket, port=self.port, servers=lines))
        self.log = workdir / "haproxy.log"
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)], stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists() or self.status() == {}:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, str]:
        """Each server's state as haproxy's health checks see it (``UP``, ``DOWN``, ...)."""
        try:
            with socket.socket(socket.AF_UNIX) as admin:
                admin.connect(str(self.socket))
                admin.sendall(b"show stat\n")
                data = b""
                while chunk := admin.recv(65536):
                    data += chunk
        except OSError:
            return {}
        rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
        return {row[1]: row[17].split()[0] for row in rows if row[0] == "replicas" and row[1] != "BACKEND"}

    def wait_for(self, name: str, state: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status().get(name) != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy never saw {name} {state}: {self.status()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
