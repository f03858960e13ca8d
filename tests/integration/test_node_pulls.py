"""Nodes pull what the gateway preheated, from the gateway, with the origin registry stopped.

The scene (once per module): a Harbor-like origin (distribution behind the token service) holds
three images; Harbor's Dragonfly driver preheats two of them into the gateway's ``local``
cluster; then the origin is stopped. Real clients pull from the gateway's ``/v2/`` mirror with a
``pull``-scoped token: skopeo (``--src-creds``), and containerd (a daemon of the test's own,
``ctr content fetch --hosts-dir`` with the token in the mirror's ``header``). Everything pulled
is checked against the digests the origin was pushed. The third image, never preheated, misses
with the OCI error code, and containerd moves on to the upstream host, as hosts.toml promises:
to the stopped origin (its error names it), and to a running upstream (which serves it).

The origin is the test's own (built like ``tests/conftest.py``'s ``origin``, on the same token
service) so that stopping it harms no other test.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import require
from tests.containerd import Containerd, find_containerd, hosts_toml, write_hosts_toml
from tests.gateway_process import REPO_ROOT, GatewayProcess, gateway_config
from tests.harbor.driver import SUCCESS, DragonflyDriver
from tests.registry import (
    MissingPrerequisite,
    PushedImage,
    PushedIndex,
    Registry,
    TokenService,
    push_image,
    push_index,
    start_registry,
)

PLATFORM = "linux/amd64"


def find_skopeo() -> str:
    for candidate in ("/usr/bin/skopeo", "/usr/local/bin/skopeo"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise MissingPrerequisite("skopeo not installed: apt-get install skopeo")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def mirror_missing(gateway: GatewayProcess, pull_token: str) -> str | None:
    """Why the gateway cannot serve nodes yet (the mirror of issue 20 not landed), or None."""
    answer = httpx.get(
        f"{gateway.url}/v2/", headers={"Authorization": f"Bearer {pull_token}"}, timeout=10, trust_env=False
    )
    if answer.status_code == 404:
        return "the gateway does not serve the /v2/ registry mirror (gateway/endpoints/mirror.py, issue 20 item 2)"
    assert answer.status_code == 200, f"GET /v2/ with a pull token: {answer.status_code} {answer.text[:300]}"
    assert answer.headers.get("Docker-Distribution-API-Version") == "registry/2.0"
    return None


def create_pull_token(gateway: GatewayProcess) -> str:
    """``preheat-gateway token create --name nodes --scope pull``, or skip when the scope does not exist yet."""
    result = gateway.cli(
        "token", "create", "--config", str(gateway.config_path), "--name", "nodes", "--scope", "pull", check=False
    )
    if result.returncode != 0:
        pytest.skip(f"no pull-scoped tokens yet (issue 20 item 3): {result.stderr.strip()[:200]}")
    return result.stdout.strip().splitlines()[-1]


@dataclass
class Scene:
    origin: Registry
    gateway: GatewayProcess
    pull_token: str
    single: PushedImage  # Docker schema-2, preheated
    multi: PushedIndex  # OCI index, linux/amd64 preheated
    cold: PushedImage  # never preheated

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"nodes:{self.pull_token}".encode()).decode()

    @property
    def gateway_host(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def reference(self, repository: str, tag: str) -> str:
        return f"{self.origin.host}/{repository}:{tag}"


@pytest.fixture(scope="module")
def scene(
    registry_binary: str, token_service: TokenService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    origin = start_registry(tmp_path_factory.mktemp("node-origin"), token=token_service)
    workdir = tmp_path_factory.mktemp("node-gateway")
    gateway = GatewayProcess(workdir, gateway_config(workdir))
    try:
        single = push_image(origin, "library/app", "1.0", [300 * 1024, 400 * 1024], seed=71)
        multi = push_index(
            origin,
            "library/multi",
            "2.0",
            {"linux/amd64": [200 * 1024, 100 * 1024], "linux/arm64": [150 * 1024]},
            seed=72,
        )
        cold = push_image(origin, "library/cold", "3.0", [64 * 1024], seed=73)
        gateway.start()
        pull_token = create_pull_token(gateway)
        if reason := mirror_missing(gateway, pull_token):
            pytest.skip(reason)
        harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})
        for repository, tag in (("library/app", "1.0"), ("library/multi", "2.0")):
            bearer = f"Bearer {token_service.mint(repository)}"
            status = harbor.run_task(
                f"{origin.url}/v2/{repository}/manifests/{tag}", {"Authorization": bearer}, timeout=120
            )
            assert status.status == SUCCESS, f"{repository}:{tag}: {status}\n{gateway.logs()[-3000:]}"
        origin.stop()
        yield Scene(origin, gateway, pull_token, single, multi, cold)
    finally:
        gateway.kill()
        origin.stop()


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    require(find_containerd)
    with Containerd(tmp_path / "containerd") as daemon:
        yield daemon


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run([require(find_skopeo), *args], capture_output=True, text=True, timeout=120, env=env)


def assert_dir_copy(dest: Path, manifest_digest: str, blob_digests: list[str]) -> None:
    """skopeo's ``dir:`` layout: ``manifest.json`` byte-for-byte, each blob in a file named by its hex."""
    assert sha256((dest / "manifest.json").read_bytes()) == manifest_digest
    for digest in blob_digests:
        blob = dest / digest.removeprefix("sha256:")
        assert blob.is_file(), f"{digest} not copied: {sorted(p.name for p in dest.iterdir())}"
        assert sha256(blob.read_bytes()) == digest


# --- (a) skopeo -------------------------------------------------------------------------------


def test_skopeo_copies_a_preheated_image_from_the_gateway_with_the_origin_stopped(scene: Scene, tmp_path: Path) -> None:
    assert not scene.origin.running
    dest = tmp_path / "app"
    result = skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        f"nodes:{scene.pull_token}",
        f"docker://{scene.gateway_host}/library/app:1.0",
        f"dir:{dest}",
    )
    assert result.returncode == 0, result.stderr
    assert_dir_copy(dest, scene.single.manifest_digest, scene.single.blob_digests)


def test_skopeo_copies_the_preheated_platform_of_a_multi_arch_image(scene: Scene, tmp_path: Path) -> None:
    source = f"docker://{scene.gateway_host}/library/multi:2.0"
    creds = ("--src-tls-verify=false", "--src-creds", f"nodes:{scene.pull_token}")
    raw = subprocess.run(
        [
            require(find_skopeo),
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            f"nodes:{scene.pull_token}",
            source,
        ],
        capture_output=True,
        timeout=60,
    )
    assert raw.returncode == 0, raw.stderr
    assert sha256(raw.stdout) == scene.multi.index_digest, "the index is served byte for byte"
    dest = tmp_path / "multi"
    result = skopeo("copy", *creds, "--override-os", "linux", "--override-arch", "amd64", source, f"dir:{dest}")
    assert result.returncode == 0, result.stderr
    amd64 = scene.multi.images[PLATFORM]
    assert_dir_copy(dest, amd64.manifest_digest, amd64.blob_digests)


def test_skopeo_without_the_pull_token_is_refused_with_a_challenge_it_can_follow(scene: Scene, tmp_path: Path) -> None:
    answer = httpx.get(f"{scene.gateway.url}/v2/", timeout=10, trust_env=False)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].lower().startswith(("basic realm=", 'bearer realm="http'))
    result = skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "nodes:phg_wrong",
        f"docker://{scene.gateway_host}/library/app:1.0",
        f"dir:{tmp_path / 'denied'}",
    )
    assert result.returncode != 0
    assert "unsupported protocol scheme" not in result.stderr
    assert re.search(r"401|unauthorized|authentication required", result.stderr, re.I), result.stderr


# --- (b) containerd ---------------------------------------------------------------------------


def test_containerd_pulls_a_preheated_image_through_the_gateway_as_its_hosts_toml_mirror(
    scene: Scene, containerd: Containerd, tmp_path: Path
) -> None:
    hosts_dir = tmp_path / "certs.d"
    write_hosts_toml(
        hosts_dir,
        scene.origin.host,
        hosts_toml(scene.origin.url, [f"http://{scene.gateway_host}"], {"Authorization": scene.basic}),
    )
    reference = scene.reference("library/multi", "2.0")
    fetched = containerd.fetch(reference, hosts_dir, platform=PLATFORM)
    assert fetched.ok, fetched
    assert "trying next host" not in fetched.output, "the gateway answered everything"
    assert containerd.image_target(reference) == scene.multi.index_digest
    amd64 = scene.multi.images[PLATFORM]
    for digest in (scene.multi.index_digest, amd64.manifest_digest, *amd64.blob_digests):
        assert containerd.verified(digest), f"{digest} missing or corrupt in containerd's content store"


def test_containerd_pulls_a_docker_schema2_image_with_a_bearer_header(
    scene: Scene, containerd: Containerd, tmp_path: Path
) -> None:
    hosts_dir = tmp_path / "certs.d"
    write_hosts_toml(
        hosts_dir,
        scene.origin.host,
        hosts_toml(scene.origin.url, [f"http://{scene.gateway_host}"], {"Authorization": f"Bearer {scene.pull_token}"}),
    )
    reference = scene.reference("library/app", "1.0")
    fetched = containerd.fetch(reference, hosts_dir)
    assert fetched.ok, fetched
    assert containerd.image_target(reference) == scene.single.manifest_digest
    assert all(containerd.verified(d) for d in (scene.single.manifest_digest, *scene.single.blob_digests))


# --- (c) a miss -------------------------------------------------------------------------------


def test_an_image_never_preheated_is_a_404_with_the_oci_code_and_never_fetched(scene: Scene) -> None:
    headers = {"Authorization": f"Bearer {scene.pull_token}"}
    ns = {"ns": scene.origin.host}
    with httpx.Client(base_url=scene.gateway.url, headers=headers, timeout=10, trust_env=False) as client:
        manifest = client.get("/v2/library/cold/manifests/3.0", params=ns)
        blob = client.get(f"/v2/library/cold/blobs/{scene.cold.layer_digests[0]}", params=ns)
        head = client.head("/v2/library/cold/manifests/3.0", params=ns)
    assert manifest.status_code == 404 and manifest.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert blob.status_code == 404 and blob.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert head.status_code == 404


def test_containerd_moves_from_the_gateways_404_to_the_stopped_upstream_and_says_so(
    scene: Scene, containerd: Containerd, tmp_path: Path
) -> None:
    hosts_dir = tmp_path / "certs.d"
    write_hosts_toml(
        hosts_dir,
        scene.origin.host,
        hosts_toml(scene.origin.url, [f"http://{scene.gateway_host}"], {"Authorization": scene.basic}),
    )
    fetched = containerd.fetch(scene.reference("library/cold", "3.0"), hosts_dir)
    assert not fetched.ok
    assert re.search(
        rf'trying next host - response was http.StatusNotFound"? host="?{re.escape(scene.gateway_host)}', fetched.output
    ), fetched
    error = fetched.output.strip().splitlines()[-1]
    assert f'"{scene.origin.url}/v2/library/cold/manifests/3.0"' in error and "connection refused" in error, (
        f"the error names the upstream it fell back to: {error}"
    )


def test_with_an_upstream_up_containerd_falls_back_to_it_for_what_was_never_preheated(
    scene: Scene, containerd: Containerd, tmp_path: Path
) -> None:
    """A public upstream (an open distribution: ctr's password grant is a POST the test token service
    does not serve) holds an image the gateway never preheated: the gateway's 404 sends containerd on."""
    with start_registry(tmp_path / "public") as upstream:
        image = push_image(upstream, "library/fresh", "4.0", [96 * 1024], seed=74)
        hosts_dir = tmp_path / "certs.d"
        write_hosts_toml(
            hosts_dir,
            upstream.host,
            hosts_toml(upstream.url, [f"http://{scene.gateway_host}"], {"Authorization": scene.basic}),
        )
        reference = f"{upstream.host}/library/fresh:4.0"
        before = len(upstream.access_log())
        fetched = containerd.fetch(reference, hosts_dir)
    served = upstream.access_log()[before:]
    assert fetched.ok, fetched
    assert re.search(
        rf'trying next host - response was http.StatusNotFound"? host="?{re.escape(scene.gateway_host)}', fetched.output
    ), fetched
    assert containerd.image_target(reference) == image.manifest_digest
    assert all(containerd.verified(d) for d in (image.manifest_digest, *image.blob_digests))
    agents = {entry.user_agent.split("/")[0] for entry in served}
    assert agents == {"containerd"}, f"only the node fetched from the upstream, the gateway never did: {agents}"


# --- docs/nodes.md's snippets, loaded by containerd itself ------------------------------------


def test_the_documented_hosts_toml_pulls_through_the_gateway(
    scene: Scene, containerd: Containerd, tmp_path: Path
) -> None:
    """docs/nodes.md's gateway hosts.toml, with its example names replaced by the test's."""
    from tests.unit.test_nodes_doc import documented_gateway_hosts_toml

    text = documented_gateway_hosts_toml(
        origin=scene.origin.url, gateway=f"http://{scene.gateway_host}", token=scene.pull_token
    )
    hosts_dir = tmp_path / "certs.d"
    write_hosts_toml(hosts_dir, scene.origin.host, text)
    reference = scene.reference("library/app", "1.0")
    fetched = containerd.fetch(reference, hosts_dir)
    assert fetched.ok, f"{fetched}\n--- hosts.toml\n{text}"
    assert containerd.image_target(reference) == scene.single.manifest_digest


# --- ./scripts/demo ---------------------------------------------------------------------------


DEMO_STEPS = ("origin registry", "pushed", "gateway", "preheat", "origin stopped", "skopeo")


def mirror_not_built() -> str | None:
    """Which piece of issue 20 the demo needs is not in this checkout yet, or None."""
    from gateway import auth

    if not (REPO_ROOT / "gateway" / "endpoints" / "mirror.py").is_file():
        return "gateway/endpoints/mirror.py (the /v2/ registry mirror, issue 20 item 2)"
    if "pull" not in getattr(auth, "SCOPES", ()):
        return "the pull token scope (gateway/auth.py SCOPES, issue 20 item 3)"
    return None


def test_the_demo_runs_every_step_and_cleans_up(registry_binary: str, tmp_path: Path) -> None:
    require(find_skopeo)
    if missing := mirror_not_built():
        pytest.skip(f"the demo pulls from the gateway's mirror: missing {missing}")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=240, env=env, cwd=REPO_ROOT
    )
    if result.returncode == 3:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    for step in DEMO_STEPS:
        assert any(step in line.lower() and re.search(r"\d+\.\d+ ?s", line) for line in lines), (
            f"no timed step naming {step!r}:\n{result.stdout}"
        )
    assert not list(tmp_path.glob("preheat-demo*")), "the demo removed its temporary directory"
