"""deploy/compose: the demo's files are checked, and its services run here as local processes.

No Docker engine runs here, so ``docker compose up`` itself cannot be tested. What can be:
every program the compose file starts is real and on this machine (the gateway, the demo's
Python scripts, CNCF distribution as Debian's ``docker-registry`` 2.8), so
:class:`LocalCompose` reads ``compose.yaml`` and starts each service as a loopback process in
``depends_on`` order, with the service's own command, environment and config files, where
only host names, listen addresses and mount paths are rewritten (``origin:5000`` becomes
``127.0.0.1:PORT``, ``/demo-secrets`` a temporary directory, a mounted config file a rewritten
copy). The demo service must then push, preheat and see SUCCESS, exactly as in compose.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import require
from tests.deploy.dockerfile import REPO_ROOT, stages
from tests.gateway_process import run_cli
from tests.registry import find_registry_binary, free_port

COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
GATEWAY_IMAGE = "harbor-preheat-gateway"
# registry:2's own ENTRYPOINT/CMD amount to this (its /entrypoint.sh execs it).
REGISTRY_DEFAULT_COMMAND = ["registry", "serve", "/etc/docker/registry/config.yml"]
# A key that would hold a secret itself (``password``, ``REGISTRY_PROXY_PASSWORD``, ``token``).
SECRETISH = re.compile(r"(?:^|[_-])(?:password|passwd|secret|token)$", re.I)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def is_gateway_image(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith(GATEWAY_IMAGE + ":")


# ------------------------------------------------------------------------- static checks


def test_every_image_is_pinned_and_the_gateway_is_built_from_the_dockerfile() -> None:
    services = load_compose()["services"]
    assert {"setup", "token-service", "origin", "cache-a", "cache-b", "gateway", "demo"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
        if is_gateway_image(service):
            assert service["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}, name
            assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        else:
            assert re.fullmatch(r"registry:2\.\d+\.\d+", image), f"{name}: {image}"


def test_the_two_caches_pull_through_the_origin_and_everything_waits_for_what_it_needs() -> None:
    services = load_compose()["services"]
    cache_config = yaml.safe_load((COMPOSE_DIR / "registry" / "cache.yml").read_text())
    origin_config = yaml.safe_load((COMPOSE_DIR / "registry" / "origin.yml").read_text())
    for name in ("cache-a", "cache-b"):
        assert services[name]["environment"]["REGISTRY_PROXY_REMOTEURL"] == "http://origin:5000"
        assert services[name]["depends_on"]["origin"]["condition"] == "service_healthy"
    assert cache_config["proxy"]["remoteurl"] == "http://origin:5000"
    assert "password" not in cache_config["proxy"], "the caches' password comes from a generated file"
    assert set(origin_config["auth"]["token"]) == {"realm", "service", "issuer", "rootcertbundle"}
    assert services["demo"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency}'s health, which has no check"
                )


def test_long_running_gateway_image_services_are_hardened_and_bind_only_loopback() -> None:
    services = load_compose()["services"]
    for name in ("gateway", "token-service", "demo"):
        assert services[name]["read_only"] is True, name
        assert services[name]["cap_drop"] == ["ALL"], name
        assert "user" not in services[name], f"{name} runs as the image's non-root user"
    assert services["gateway"]["tmpfs"] == ["/tmp"]
    image_env = stages()[1][-1].env()
    for name in ("setup", "gateway"):
        assert f"gateway-state:{image_env['PREHEAT_GATEWAY_STATE_DIR']}" in services[name]["volumes"], name
        assert "./gateway.yaml:/etc/preheat-gateway/config.yaml:ro" in services[name]["volumes"], name
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_no_secret_is_written_into_the_demo_files() -> None:
    """Passwords and tokens are generated by setup.py at run time; the files only name them."""
    for path in [COMPOSE_FILE, *COMPOSE_DIR.glob("*.yaml"), *(COMPOSE_DIR / "registry").glob("*.yml")]:

        def walk(node: Any, where: str, path: Path = path) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if isinstance(value, (str, int)) and SECRETISH.search(str(key)):
                        raise AssertionError(f"{path.name}: {where}.{key} holds a literal secret-like value {value!r}")
                    walk(value, f"{where}.{key}")
            elif isinstance(node, list):
                for index, item in enumerate(node):
                    walk(item, f"{where}[{index}]")

        walk(yaml.safe_load(path.read_text()), "")
        assert "PRIVATE KEY" not in path.read_text()


def test_the_gateway_config_passes_check_config() -> None:
    names = set(re.findall(r"\b\w+_env: (\w+)", (COMPOSE_DIR / "gateway.yaml").read_text()))
    result = run_cli(
        "check-config", str(COMPOSE_DIR / "gateway.yaml"), env={name: "set-for-the-test" for name in names}, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and "1 local (local), 2 caches (mirror)" in result.stdout


# -------------------------------------------------------------------------- local compose


@dataclass
class LocalService:
    name: str
    spec: dict[str, Any]
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    mounts: list[tuple[str, str]] = field(default_factory=list)


class LocalCompose:
    """``compose.yaml``'s services as loopback processes (see the module docstring)."""

    def __init__(self, workdir: Path, registry_binary: str, overrides: dict[str, dict[str, str]]) -> None:
        self.compose = load_compose()
        self.workdir = workdir
        self.registry_binary = registry_binary
        self.overrides = overrides
        _, image_stages = stages()
        self.image_env = image_stages[-1].env()
        self.image_entrypoint = image_stages[-1].all("ENTRYPOINT")[-1].json_args() or []
        self.image_cmd = image_stages[-1].all("CMD")[-1].json_args() or []
        self.services = {name: LocalService(name, spec, free_port()) for name, spec in self.compose["services"].items()}
        self.volumes = {name: workdir / "volumes" / name for name in self.compose.get("volumes", {})}
        for path in self.volumes.values():
            path.mkdir(parents=True)
        self.stack = ExitStack()

    # The rewriting: host names to loopback ports, container paths to host paths.
    def hosts(self) -> list[tuple[str, str]]:
        """``name:port`` as the compose directory's files use them, each to its loopback port."""
        text = "".join(
            p.read_text() for p in COMPOSE_DIR.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml", ".py", ".sh")
        )
        pairs = {
            (f"{service.name}:{port}", f"127.0.0.1:{service.port}")
            for service in self.services.values()
            for port in re.findall(rf"(?<![\w.-]){re.escape(service.name)}:(\d+)", text)
        }
        return sorted(pairs, key=lambda p: -len(p[0]))

    def rewrite(self, service: LocalService, text: str) -> str:
        for container_path, host_path in sorted(service.mounts, key=lambda m: -len(m[0])):
            text = re.sub(rf"(?<![\w/]){re.escape(container_path)}(?=$|[/\s'\":,])", host_path, text)
        for old, new in self.hosts():
            text = re.sub(rf"(?<![\w.-]){re.escape(old)}\b", new, text)
        return re.sub(r"0\.0\.0\.0:\d+", f"127.0.0.1:{service.port}", text)  # its own listen address

    def prepare(self, service: LocalService) -> None:
        files: list[tuple[Path, str]] = []
        service.mounts = []
        for volume in service.spec.get("volumes", []):
            source, target, *_ = volume.split(":")
            if source.startswith("."):
                host = (COMPOSE_DIR / source).resolve()
                assert host.exists(), f"{service.name} mounts {source}, which does not exist"
                if host.is_file() and host.suffix in (".yml", ".yaml"):
                    files.append((host, target))
                service.mounts.append((target, str(host)))
            else:
                assert source in self.volumes, f"{service.name} mounts undeclared volume {source}"
                service.mounts.append((target, str(self.volumes[source])))
        # Mounted config files are rewritten copies, mounted in their place.
        for host, target in files:
            copy = self.workdir / "files" / service.name / host.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            service.mounts = [(t, h) for t, h in service.mounts if t != target]
            copy.write_text(self.rewrite(service, host.read_text()))
            service.mounts.append((target, str(copy)))

    def argv(self, service: LocalService) -> list[str]:
        spec = service.spec
        if is_gateway_image(spec):
            entrypoint = spec.get("entrypoint") or self.image_entrypoint
            # As in compose: a service's own entrypoint drops the image's CMD.
            command = spec.get("command") or ([] if "entrypoint" in spec else self.image_cmd)
            words = [*entrypoint, *command]
            if words[0] == "preheat-gateway":
                words = [sys.executable, "-m", "gateway", *words[1:]]
            elif words[0] == "python":
                words = [sys.executable, *words[1:]]
        else:
            words = [*(spec.get("entrypoint") or []), *(spec.get("command") or REGISTRY_DEFAULT_COMMAND)]
            words = [self.registry_binary if w == "registry" else w for w in words]
        return [self.rewrite(service, w) for w in words]

    def environment(self, service: LocalService) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREHEAT_GATEWAY_", "REGISTRY_", "DEMO_"))}
        env["PYTHONPATH"] = str(REPO_ROOT)
        if is_gateway_image(service.spec):
            env.update({k: v for k, v in self.image_env.items() if k.startswith(("PREHEAT_GATEWAY_", "PYTHON"))})
        else:
            env["REGISTRY_HTTP_ADDR"] = f"127.0.0.1:{service.port}"
        env.update({k: str(v) for k, v in (service.spec.get("environment") or {}).items()})
        env.update(self.overrides.get(service.name, {}))
        return {k: self.rewrite(service, v) for k, v in env.items()}

    def order(self) -> list[str]:
        done: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            assert name not in path, f"depends_on cycle: {(*path, name)}"
            if name in done:
                return
            for dependency in self.compose["services"][name].get("depends_on") or {}:
                visit(dependency, (*path, name))
            done.append(name)

        for name in self.compose["services"]:
            visit(name, ())
        return done

    def start(self, name: str) -> LocalService:
        service = self.services[name]
        self.prepare(service)
        service.log = self.workdir / f"{name}.log"
        service.process = subprocess.Popen(
            self.argv(service),
            env=self.environment(service),
            cwd=self.workdir,
            stdout=service.log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.stack.callback(self._stop, service)
        return service

    def run_to_completion(self, name: str, timeout: float = 180) -> tuple[int, str]:
        service = self.start(name)
        assert service.process is not None and service.log is not None
        try:
            code = service.process.wait(timeout)
        except subprocess.TimeoutExpired:
            service.process.kill()
            raise AssertionError(f"{name} did not finish in {timeout}s:\n{self.logs()}") from None
        return code, service.log.read_text(errors="replace")

    def wait_healthy(self, name: str, timeout: float = 30) -> None:
        service = self.services[name]
        url = f"http://127.0.0.1:{service.port}" + {"gateway": "/livez", "token-service": "/healthz"}.get(name, "/v2/")
        expected = {"origin": 401}.get(name, 200)
        deadline = time.monotonic() + timeout
        while True:
            assert service.process is not None
            if service.process.poll() is not None:
                raise AssertionError(f"{name} exited {service.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(url, timeout=1, trust_env=False).status_code == expected:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not healthy within {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def up(self) -> tuple[int, str]:
        """Start everything in depends_on order; returns the demo's exit status and output."""
        result: tuple[int, str] = (-1, "")
        for name in self.order():
            conditions = {
                c["condition"]
                for s in self.compose["services"].values()
                for d, c in (s.get("depends_on") or {}).items()
                if d == name
            }
            if name == "demo" or "service_completed_successfully" in conditions:
                result = self.run_to_completion(name)
                if name != "demo":
                    assert result[0] == 0, f"{name} failed:\n{result[1]}"
            else:
                self.start(name)
                self.wait_healthy(name)
        return result

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.name}\n{s.log.read_text(errors='replace')[-4000:]}"
            for s in self.services.values()
            if s.log and s.log.exists()
        )

    @staticmethod
    def _stop(service: LocalService) -> None:
        if service.process is not None and service.process.poll() is None:
            service.process.terminate()
            try:
                service.process.wait(15)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def local_compose(tmp_path: Path) -> Iterator[LocalCompose]:
    binary = require(find_registry_binary)
    # setup.py drops to UID 10001 only as root with DEMO_RUN_AS; here it runs as whoever runs
    # the tests, whose Python a UID 10001 may not even be able to read.
    compose = LocalCompose(tmp_path, binary, overrides={"setup": {"DEMO_RUN_AS": ""}})
    try:
        yield compose
    finally:
        compose.close()


def blobs_on_disk(root: Path) -> set[str]:
    return {f"sha256:{p.parent.name}" for p in root.glob("docker/registry/v2/blobs/sha256/*/*/data")}


def test_the_demo_pushes_preheats_into_both_clusters_and_succeeds(local_compose: LocalCompose) -> None:
    code, output = local_compose.up()

    assert code == 0, f"demo exited {code}:\n{output}\n{local_compose.logs()}"
    assert re.search(r"job \d+ finished: SUCCESS", output), output
    assert "cluster 1 SUCCESS" in output and "cluster 2 SUCCESS" in output
    # all_seed_peers: both caches now hold everything the origin does (manifest, config and
    # two layers); the local cluster holds the image's three blobs.
    stored = blobs_on_disk(local_compose.volumes["origin-data"])
    assert len(stored) == 4
    for cache in ("cache-a-data", "cache-b-data"):
        deadline = time.monotonic() + 15  # a cache stores a served blob in the background
        while blobs_on_disk(local_compose.volumes[cache]) != stored and time.monotonic() < deadline:
            time.sleep(0.1)
        assert blobs_on_disk(local_compose.volumes[cache]) == stored, cache
    local_cache = local_compose.volumes["gateway-state"] / "cache" / "blobs" / "sha256"
    warmed_locally = {f"sha256:{p.name}" for p in local_cache.iterdir()}
    assert warmed_locally == stored  # the local cache is an OCI layout: the manifest is stored beside its blobs
    # Every secret was generated at run time, and the gateway printed no first-start token.
    secrets_dir = local_compose.volumes["demo-secrets"]
    assert {p.name for p in secrets_dir.iterdir()} >= {
        "token.key",
        "token.crt",
        "admin-password",
        "robot-password",
        "cache-password",
        "gateway-token",
    }
    assert oct(os.stat(secrets_dir / "token.key").st_mode & 0o777) == "0o600"
    assert "Created personal access token" not in (local_compose.workdir / "gateway.log").read_text()

    # `docker compose up` again: setup keeps what it made, the demo pushes nothing new and passes.
    token = (secrets_dir / "gateway-token").read_text()
    code, output = local_compose.run_to_completion("setup")
    assert code == 0, output
    assert (secrets_dir / "gateway-token").read_text() == token
    code, output = local_compose.run_to_completion("demo")
    assert code == 0 and re.search(r"job \d+ finished: SUCCESS", output), output
