"""The one-command try-out behind ``./scripts/demo``: preheat an image, stop its registry, pull it anyway.

Steps, each printed with its time: a Harbor-like origin (Debian's ``docker-registry`` behind a
token service, as the tests run it) on loopback; a small multi-arch image pushed to it; the
gateway on its embedded default (``local`` cluster) with the origin allowed; a preheat sent
exactly as Harbor's Dragonfly driver sends it, with Harbor's short-lived bearer; the origin
stopped; ``skopeo copy`` from the gateway's registry mirror with a ``pull`` token, digest-checked.

Everything lives in one temporary directory (``PREHEAT_DEMO_DIR``, made and removed by
scripts/demo) and every process started is stopped on exit, Ctrl-C included. Exit status: 0 when
the pull worked, 1 when a step failed, 3 when a prerequisite is missing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tests.harbor.driver import SUCCESS, DragonflyDriver
from tests.registry import (
    MissingPrerequisite,
    TokenService,
    find_registry_binary,
    free_port,
    push_index,
    start_registry,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MISSING = 3
REPOSITORY, TAG = "library/demo", "1.0"


class StepFailed(RuntimeError):
    """A step did not do what it says; the message says what happened."""


class Clock:
    """Prints each step with the seconds it took and the time since the start."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.number = 0

    def step(self, text: str) -> None:
        now = time.monotonic()
        self.number += 1
        print(f"[{now - self.started:6.2f} s] {self.number}. {text} ({now - self.last:.2f} s)", flush=True)
        self.last = now

    def detail(self, text: str) -> None:
        print(f"{'':11}   {text}", flush=True)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gateway_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def token(config: Path, name: str, scope: str) -> str:
    result = gateway_cli(config, "token", "create", "--name", name, "--scope", scope)
    if result.returncode != 0:
        raise StepFailed(f"preheat-gateway token create --name {name} --scope {scope}: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def start_gateway(workdir: Path, config: Path, port: int, processes: list[subprocess.Popen[bytes]]) -> str:
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StepFailed(
                f"the gateway exited {process.returncode}:\n{(workdir / 'gateway.log').read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=1, trust_env=False).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise StepFailed("the gateway was not ready within 30 s")


def run(workdir: Path, processes: list[subprocess.Popen[bytes]], closers: list) -> None:
    clock = Clock()
    try:
        find_registry_binary()
    except MissingPrerequisite as missing:
        print(f"demo: {missing}", flush=True)
        raise SystemExit(MISSING) from None

    tokens = TokenService(
        {"robot$preheat": "robot-secret"}, workdir / "token-service", grants={"robot$preheat": {"pull"}}
    )
    closers.append(tokens.close)
    origin = start_registry(workdir / "origin", token=tokens)
    closers.append(origin.stop)
    clock.step(
        f"origin registry: docker-registry on {origin.url}, private behind a Harbor-like token service at {tokens.url}"
    )

    index = push_index(
        origin,
        REPOSITORY,
        TAG,
        {"linux/amd64": [512 * 1024, 256 * 1024], "linux/arm64": [512 * 1024, 256 * 1024]},
        seed=2026,
    )
    amd64 = index.images["linux/amd64"]
    clock.step(
        f"pushed {origin.host}/{REPOSITORY}:{TAG}: an OCI index of linux/amd64 and linux/arm64 ({index.index_digest[:19]}…)"
    )

    port = free_port()
    config = workdir / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"listen": f"127.0.0.1:{port}", "state_dir": str(workdir / "gateway-state")},
                "registries": {"allow": ["127.0.0.1"]},  # the origin and its token service, both on loopback
            }
        )
    )
    url = start_gateway(workdir, config, port, processes)
    harbor_token, pull_token = token(config, "harbor", "job"), token(config, "nodes", "pull")
    clock.step(
        f"gateway on its embedded default (one local cluster) at {url}; tokens: 'harbor' (scope job), 'nodes' (scope pull)"
    )

    harbor = DragonflyDriver(url, "OAUTH", {"token": harbor_token})
    bearer = f"Bearer {tokens.mint(REPOSITORY)}"  # what Harbor mints for a preheat task: pull on one repository
    status = harbor.run_task(
        f"{origin.url}/v2/{REPOSITORY}/manifests/{TAG}", {"Authorization": bearer}, poll_seconds=0.2, timeout=120
    )
    if status.status != SUCCESS:
        raise StepFailed(f"the preheat ended {status.status}: {status.error}")
    clock.step(
        f"preheat as Harbor sends it: GET /healthy, POST /oapi/v1/jobs, polls until SUCCESS ({status.message} in Harbor's table)"
    )

    origin.stop()
    try:
        httpx.get(f"{origin.url}/v2/", timeout=2, trust_env=False)
        raise StepFailed("the origin still answers")
    except httpx.TransportError:
        pass
    clock.step(f"origin stopped: {origin.url} refuses connections")

    dest = workdir / "pulled"
    result = subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            f"nodes:{pull_token}",
            "--override-os",
            "linux",
            "--override-arch",
            "amd64",
            f"docker://127.0.0.1:{port}/{REPOSITORY}:{TAG}",
            f"dir:{dest}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
    )
    if result.returncode != 0:
        raise StepFailed(f"skopeo copy from the gateway failed: {result.stderr.strip()[-1000:]}")
    if sha256((dest / "manifest.json").read_bytes()) != amd64.manifest_digest:
        raise StepFailed("skopeo's manifest is not the one pushed")
    for digest in amd64.blob_digests:
        if sha256((dest / digest.removeprefix("sha256:")).read_bytes()) != digest:
            raise StepFailed(f"blob {digest} differs from the one pushed")
    size = sum(amd64.sizes.values())
    clock.step(
        f"skopeo copy docker://127.0.0.1:{port}/{REPOSITORY}:{TAG} (linux/amd64) from the gateway: "
        f"manifest and {len(amd64.blob_digests)} blobs, {size / 1024:.0f} KiB, each matching the pushed digest"
    )
    clock.detail("the nodes of a cluster pull the same way through containerd's hosts.toml: docs/nodes.md")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    own = "PREHEAT_DEMO_DIR" not in os.environ
    workdir = Path(os.environ.get("PREHEAT_DEMO_DIR") or tempfile.mkdtemp(prefix="preheat-demo."))
    processes: list[subprocess.Popen[bytes]] = []
    closers: list = []
    try:
        run(workdir, processes, closers)
        print("demo: done; everything it started is stopped and removed", flush=True)
        return 0
    except StepFailed as failed:
        print(f"demo: FAILED: {failed}", flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", flush=True)
        return 130
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        for close in reversed(closers):
            close()
        if own:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
