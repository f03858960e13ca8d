"""Third-party adapters (issue 4): ``pip install`` a package, name its adapter in the config, done.

The package under ``tests/fixtures_pkgs/echo_adapter`` registers ``echo`` in the entry-point
group ``harbor_preheat_gateway.adapters``. It is installed into this virtualenv for the
module's tests and uninstalled after them, once no other process (another xdist worker, another
session) running them still needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeGateway
from tests.gateway_process import gateway_config, run_cli
from tests.integration.test_adapters_files import run_job, state_of

PACKAGE = Path(__file__).resolve().parent.parent / "fixtures_pkgs" / "echo_adapter"
DISTRIBUTION = "preheat-echo-adapter"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=120)


USERS_FILE = (
    Path(tempfile.gettempdir()) / f"{DISTRIBUTION}-users-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]}"
)
"""The processes using the installed package, one pid a line: every process of this virtualenv shares it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def _users() -> Iterator[set[int]]:
    """The live users of the installed package, under a lock, saved as the block leaves them."""
    with open(f"{USERS_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = {int(pid) for pid in USERS_FILE.read_text().split()} if USERS_FILE.exists() else set()
        users = {pid for pid in users if _alive(pid)}
        yield users
        USERS_FILE.write_text("".join(f"{pid}\n" for pid in sorted(users)))


@pytest.fixture(scope="module")
def echo_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with _users() as users:  # the first user installs; xdist workers run this module's tests side by side
        if not users:
            source = tmp_path_factory.mktemp("echo") / "echo_adapter"
            shutil.copytree(PACKAGE, source)  # builds leave nothing in the repository
            installed = pip(
                "install", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", str(source)
            )
            assert installed.returncode == 0, installed.stdout + installed.stderr
        users.add(os.getpid())
    try:
        yield
    finally:
        with _users() as users:  # the last user uninstalls
            users.discard(os.getpid())
            if not users:
                pip("uninstall", "--yes", "--disable-pip-version-check", DISTRIBUTION)


def echo_cluster(**options: object) -> dict[str, object]:
    return {"id": 9, "name": "echo-nodes", "adapter": "echo", "hosts": ["node-a", "node-b"], **options}


def test_an_installed_adapter_runs_a_job_by_its_name(
    echo_installed: None, make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[echo_cluster()]))
    url = "http://127.0.0.1:9000/files/model.bin"

    job = run_job(gateway, {"type": "file", "url": url})

    assert job["state"] == "SUCCESS", job
    rows = state_of(job, 9)["results"][0]["success_tasks"]
    assert [(r["url"], r["hostname"], r["ip"]) for r in rows] == [
        (url, "node-a", "192.0.2.1"),
        (url, "node-b", "192.0.2.2"),
    ]
    with gateway.client() as client:
        [cluster] = client.get("/oapi/v1/clusters").json()
    assert (cluster["adapter"], cluster["health"]["reachable"]) == ("echo", True)


def test_an_installed_adapters_failure_is_its_clusters_failure(
    echo_installed: None, make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[echo_cluster(fail_on="forbidden")]))

    job = run_job(gateway, {"type": "file", "url": "http://127.0.0.1:9000/forbidden/x"})

    assert job["state"] == "FAILURE"
    assert (
        state_of(job, 9)["error"]
        == "cluster echo-nodes (id 9): echo refused a URL containing 'forbidden': remove it from the request"
    )
    assert state_of(job, 9)["results"][0]["failure_tasks"][0]["description"] == "echo refuses URLs with 'forbidden'"


def test_an_installed_adapters_options_are_checked_like_the_builtins(echo_installed: None, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "clusters:\n"
        "  - {id: 1, name: a, adapter: echo, hosts: [n1], colour: blue}\n"
        "  - {id: 2, name: b, adapter: echo, hosts: []}\n"
        "  - {id: 3, name: c, adapter: no-such-adapter}\n"
    )

    result = run_cli("check-config", str(config), check=False)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "clusters[0].colour: unknown key" in output
    assert "clusters[1].hosts: list at least one host" in output
    assert "clusters[2].adapter: unknown adapter 'no-such-adapter'" in output and "echo" in output, (
        "the choices include installed adapters"
    )
