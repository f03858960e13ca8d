"""The gateway as users run it: ``python -m gateway serve --config FILE`` in a real process.

Tests talk to it over loopback HTTP, so a test can SIGKILL it mid-job and start it again on
the same store, exactly as an operator's crash would happen. :class:`GatewayUnderTest` is
what a test sees of any gateway; ``tests.gateway_thread`` runs the same server in the test's
own process, for tests that need no process boundary.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import yaml

from gateway import cli
from tests.registry import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def run_cli(*args: str, env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``preheat-gateway ARGS`` and capture its output."""
    result = subprocess.run(
        gateway_command(*args),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"preheat-gateway {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


class GatewayUnderTest:
    """A gateway with its own config file, state directory and port, as a test talks to it."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = dict(config)
        server = dict(config.get("server") or {})
        server.setdefault("listen", f"127.0.0.1:{self.port}")
        server.setdefault("state_dir", str(workdir / "state"))
        server.setdefault("shutdown_delay_seconds", 0)  # no load balancer to tell; rolling-restart tests set their own
        self.port = int(server["listen"].rpartition(":")[2])
        config["server"] = server
        self.config = config
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.extra_env = dict(env or {})
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.starts = 0
        self._token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.config['server'].get('root_path', '')}"

    @property
    def token(self) -> str:
        """A personal access token with the ``job`` scope, created through the CLI once."""
        if self._token is None:
            self._token = self.create_token("tests")
        return self._token

    def create_token(self, name: str, *extra: str) -> str:
        """``preheat-gateway token create`` (``--scope``, ``--expires``: ``extra``), run in this process.

        The command's own code on the gateway's config and environment; a process of its own would
        add half a second to every test that takes a token (the CLI's own tests run it as users do).
        """
        if "PYTHONPATH" in self.extra_env:  # what the gateway imports differs from this process's: run it there
            args = ("token", "create", "--config", str(self.config_path), "--name", name, *extra)
            return run_cli(*args, env=self.env).stdout.strip().splitlines()[-1]
        output = io.StringIO()
        failure: list[BaseException] = []

        def run() -> None:  # a thread of its own: the command runs an event loop, a test may be in one
            try:
                with mock.patch.dict(os.environ, self.env), contextlib.redirect_stdout(output):
                    status = cli.main(["token", "create", "--config", str(self.config_path), "--name", name, *extra])
                if status != 0:
                    raise AssertionError(f"token create exited {status}")
            except BaseException as error:  # re-raised in the test's thread
                failure.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return output.getvalue().strip().splitlines()[-1]

    def cli(
        self, *args: str, check: bool = True, env_extra: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env={**self.env, **(env_extra or {})}, check=check)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("std*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def client(self, token: str | None = "default") -> httpx.Client:
        """An HTTP client; ``token="default"`` uses :attr:`token`, ``None`` sends no credential."""
        headers = {}
        if token == "default":
            token = self.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # Plain http: verify=False only spares loading the CA bundle for every client (about 18 ms of CPU).
        return httpx.Client(base_url=self.url, headers=headers, timeout=35, verify=False)

    def wait_job(
        self, job_id: int, *, timeout: float = 60.0, path: str = "/oapi/v1/jobs/{id}", every: float = 0.2
    ) -> dict[str, Any]:
        """Poll a job the way Harbor does (faster: every ``every`` seconds) until it leaves PENDING."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                response = client.get(path.format(id=job_id))
                assert response.status_code == 200, response.text
                body = response.json()
                if body["state"] != "PENDING":
                    return body
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} still PENDING after {timeout}s: {body}\n{self.logs()[-3000:]}")
                time.sleep(every)

    def start(self, timeout: float = 20.0, *, verify: ssl.SSLContext | None = None) -> GatewayUnderTest:
        """Serve, and wait until ``/readyz`` answers; ``verify``: it serves TLS, trusted so."""
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop as SIGTERM does: drain, answer what is under way, hand unfinished work back."""
        raise NotImplementedError

    def kill(self) -> None:
        """Stop at once (a process: SIGKILL)."""
        raise NotImplementedError

    def wait_ready(self, timeout: float, verify: ssl.SSLContext | None, alive: Callable[[], bool]) -> None:
        """Until ``/readyz`` answers 200 (``verify``: it serves TLS, trusted so), while ``alive()`` holds."""
        deadline = time.monotonic() + timeout
        scheme = "https" if verify is not None else "http"
        # One client for every try: each new one loads the system's CA certificates again.
        with httpx.Client(timeout=1, verify=verify or False) as probe:
            while time.monotonic() < deadline:
                if not alive():
                    raise RuntimeError(f"gateway exited at start:\n{self.logs()}")
                try:
                    if probe.get(f"{scheme}://127.0.0.1:{self.port}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"gateway not ready within {timeout}s:\n{self.logs()}")


class GatewayProcess(GatewayUnderTest):
    """One gateway process (``python -m gateway serve``), started, SIGTERMed and SIGKILLed as operators do."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: Mapping[str, str] | None = None) -> None:
        super().__init__(workdir, config, env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, *, verify: ssl.SSLContext | None = None) -> GatewayProcess:
        """Start the process and wait until ``/readyz`` answers; ``verify``: it serves TLS, trusted so."""
        self.starts += 1
        self.stdout_path = self.workdir / f"stdout.{self.starts}.log"
        self.stderr_path = self.workdir / f"stderr.{self.starts}.log"
        process = self.process = subprocess.Popen(
            gateway_command("serve", "--config", str(self.config_path)),
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            cwd=REPO_ROOT,
            env=self.env,
            start_new_session=True,
        )
        self.wait_ready(timeout, verify, lambda: process.poll() is None)
        return self

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the crash an operator fears."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait: a graceful shutdown."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"gateway ignored SIGTERM for {timeout}s:\n{self.logs()}") from None


def gateway_config(
    tmp: Path,
    *,
    clusters: list[dict[str, Any]] | None = None,
    allow: list[str] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A config for tests: loopback registries allowed, a local cluster unless told otherwise."""
    config: dict[str, Any] = {
        "registries": {"allow": allow if allow is not None else ["127.0.0.1"]},
        "clusters": clusters or [{"id": 1, "name": "local", "adapter": "local", "path": str(tmp / "cache")}],
    }
    for key, value in sections.items():
        config[key] = value
    return config
