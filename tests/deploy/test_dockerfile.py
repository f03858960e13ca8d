"""deploy/Dockerfile: read, not built (no Docker engine runs here), and its parts exercised.

What a build would settle is checked as far as it can be without one: the instructions
(pinned base, non-root numeric user, state volume, HEALTHCHECK, STOPSIGNAL, ENTRYPOINT/CMD,
no secrets), which files the Dockerfile-specific ignore file lets into the build context, the
default config baked into the image (``check-config``), and the HEALTHCHECK's own command run
against a gateway started the way the image starts it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import REPO_ROOT, Instruction, Stage, stages
from tests.gateway_process import run_cli
from tests.registry import free_port

IGNORE_FILE = REPO_ROOT / "deploy" / "Dockerfile.dockerignore"
IMAGE_CONFIG = REPO_ROOT / "deploy" / "docker" / "config.yaml"
STATE_DIR = "/var/lib/preheat-gateway"


def final_stage() -> Stage:
    return stages()[1][-1]


def healthcheck_command(instruction: Instruction) -> list[str]:
    """``HEALTHCHECK --flag=... CMD ["exec", "form"]`` -> the exec form's words."""
    rest = instruction.args
    while rest.startswith("--"):
        rest = rest.split(" ", 1)[1].lstrip()
    assert rest.startswith("CMD "), f"HEALTHCHECK must use CMD: {instruction.args}"
    return json.loads(rest[4:])


# ------------------------------------------------------------------------------ instructions


def test_multi_stage_on_a_pinned_python_3_11_slim_base() -> None:
    _args, found = stages()
    assert len(found) >= 2 and found[0].name, "a named build stage, then the runtime stage"
    for stage in found:
        repository, _, tag = stage.base.partition("@")[0].rpartition(":")
        assert repository in ("python", "docker.io/library/python"), stage.base
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), (
            f"{stage.base}: pin a 3.11 patch release of -slim, never latest"
        )
    assert not found[-1].all("RUN") or all("pip install" not in i.args for i in found[-1].all("RUN")), (
        "the runtime stage copies the venv; it installs nothing"
    )
    assert any(i.args.startswith("--from=") and "/opt/venv" in i.args for i in found[-1].all("COPY"))


def test_runs_as_a_numeric_non_root_user_with_state_in_a_volume() -> None:
    stage = final_stage()
    user = stage.all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), f"USER {user}: numeric and not root"
    env = stage.env()
    assert env["PREHEAT_GATEWAY_STATE_DIR"] == STATE_DIR
    assert env["TMPDIR"] == "/tmp"
    volumes = {v for i in stage.all("VOLUME") for v in json.loads(i.args)}
    assert volumes == {STATE_DIR, "/tmp"}, "the only writable paths, so --read-only works"
    setup = " ".join(i.args for i in stage.all("RUN"))
    assert re.search(rf"install -d -o {uid} -g {gid or uid} .*{STATE_DIR}", setup), (
        "the state directory belongs to the user"
    )


def test_healthcheck_stopsignal_entrypoint_and_cmd() -> None:
    stage = final_stage()
    [health] = stage.all("HEALTHCHECK")
    command = healthcheck_command(health)
    assert command[0] == "python", "no curl in the slim image"
    assert "/livez" in stage.env()["PREHEAT_GATEWAY_HEALTHCHECK_URL"]
    assert re.search(r"--interval=\d+s", health.args) and re.search(r"--timeout=\d+s", health.args)
    assert [i.args for i in stage.all("STOPSIGNAL")] == ["SIGTERM"]
    assert [i.json_args() for i in stage.all("ENTRYPOINT")] == [["preheat-gateway"]]
    assert [i.json_args() for i in stage.all("CMD")] == [["serve", "--config", "/etc/preheat-gateway/config.yaml"]]
    labels = " ".join(i.args for i in stage.all("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_no_secret_in_the_image() -> None:
    for instruction in [i for s in stages()[1] for i in s.instructions]:
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)\w*=", instruction.args, re.I), instruction
    assert not re.search(r"^\s*(password|secret|token)\s*:", IMAGE_CONFIG.read_text(), re.M | re.I)


# ------------------------------------------------------------------------------ build context


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace("\0/", "(?:.*/)?").replace("\0", ".*").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def context_files() -> set[str]:
    patterns = [
        line.strip() for line in IGNORE_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    extra = ["gateway/__pycache__/app.cpython-311.pyc", ".venv/bin/python", ".git/HEAD"]
    return {p for p in [*listed, *extra] if (REPO_ROOT / p).exists() or p in extra if not ignored(p, patterns)}


def test_the_build_context_holds_the_package_and_nothing_else() -> None:
    files = context_files()
    assert "pyproject.toml" in files and "deploy/docker/config.yaml" in files
    assert any(f.startswith("gateway/console/templates/") for f in files) or not list(
        (REPO_ROOT / "gateway/console").glob("templates/*")
    )
    allowed = re.compile(r"^(pyproject\.toml|README\.md|LICENSE|deploy/docker/config\.yaml|(gateway|adapters)/.+)$")
    assert not {f for f in files if not allowed.match(f)}, "only the package's sources may enter the image"
    assert not {f for f in files if "__pycache__" in f or f.endswith(".pyc")}
    for source in ("gateway/cli.py", "adapters/base.py"):
        assert source in files


def test_every_copied_file_is_in_the_build_context() -> None:
    files = context_files()
    for instruction in final_stage().all("COPY"):
        if instruction.args.startswith("--from="):
            continue
        source = instruction.args.split()[0]
        assert source in files, f"COPY {source}: not in the build context (see {IGNORE_FILE.name})"


# ------------------------------------------------------------------------- running the parts


def test_the_image_default_config_passes_check_config(tmp_path: Path) -> None:
    result = run_cli("check-config", str(IMAGE_CONFIG), env={"PREHEAT_GATEWAY_STATE_DIR": str(tmp_path)}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def image_like_gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The gateway as the image runs it: its ENV, its default config, its CMD; paths and port local."""
    stage = final_stage()
    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        IMAGE_CONFIG.read_text().replace(STATE_DIR, str(state)).replace("0.0.0.0:8080", f"127.0.0.1:{port}")
    )
    env = {**os.environ, **{k: v for k, v in stage.env().items() if k != "PATH"}}
    env.update(
        PREHEAT_GATEWAY_STATE_DIR=str(state),
        HOME=str(state),
        TMPDIR=str(tmp_path),
        PREHEAT_GATEWAY_HEALTHCHECK_URL=f"http://127.0.0.1:{port}/livez",
    )
    command = [i.json_args() for i in stage.all("CMD")][-1]
    assert command is not None
    command = [c.replace("/etc/preheat-gateway/config.yaml", str(config)) for c in command]
    log = tmp_path / "gateway.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *command], env=env, cwd=state, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield process, env, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_healthcheck(env: dict[str, str]) -> int:
    command = healthcheck_command(final_stage().all("HEALTHCHECK")[0])
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=10).returncode


def test_the_healthcheck_passes_while_serving_and_sigterm_stops_it_cleanly(image_like_gateway) -> None:  # type: ignore[no-untyped-def]
    process, env, log = image_like_gateway
    assert run_healthcheck(env) == 0
    assert "Created personal access token 'default'" in log.read_text(), "docker logs show the first token"

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    # uvicorn drains, shuts the application down, then re-raises the signal (ignored by a
    # container's PID 1, whose exit status is then 0).
    assert process.wait(20) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    assert time.monotonic() - started < 15, "graceful, within the uvicorn drain"
    assert run_healthcheck(env) != 0, "and the healthcheck notices"
