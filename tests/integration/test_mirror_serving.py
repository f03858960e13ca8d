"""The gateway serves its ``local`` cache read-only as a registry mirror (issue 20, items 2, 3, 5).

In-process first (Starlette's TestClient over a real OCI layout on disk): routing, the ``pull``
scope and its Basic challenge, ``ns`` and the single-origin rule, ``Range``, strict names and
digests, misses with OCI error codes, metrics. Then a real gateway process after a real preheat
from a token-protected origin that is stopped before anything is pulled: skopeo copies the image
with ``--src-creds x:TOKEN``; blobs leave by zero-copy sendfile (ranges included); and
``server.mirror_listen`` serves the mirror, and only the mirror, on an address of its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from adapters.layout import OciLayout
from adapters.manifest import Descriptor
from gateway.app import create_app
from gateway.auth import hash_token, new_token
from gateway.config import build_config
from tests.conftest import require
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import (
    MANIFEST_ACCEPT,
    MissingPrerequisite,
    PushedImage,
    Registry,
    TokenService,
    free_port,
    push_image,
    start_registry,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ORIGIN = "registry.example.com:5000"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredImage:
    manifest: bytes
    digest: str
    blobs: dict[str, bytes]


def store_image(root: Path, host: str, repository: str, tag: str, layers: list[bytes]) -> StoredImage:
    """Write an image into an OCI layout the way a preheat leaves it (checked blobs, then the index entry)."""
    layout = OciLayout(root)
    config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repository}).encode()
    blobs = {sha256(b): b for b in (config, *layers)}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(b), "size": len(b)}
                for b in layers
            ],
        }
    ).encode()
    for digest, data in {**blobs, sha256(manifest): manifest}.items():
        layout.path_of(digest).write_bytes(data)
        layout.blob_committed(digest, len(data))
    asyncio.run(layout.record(host, repository, tag, Descriptor(sha256(manifest), OCI_MANIFEST, len(manifest))))
    return StoredImage(manifest, sha256(manifest), blobs)


@dataclass
class Mirror:
    client: TestClient
    pull: str
    job: str
    both: str
    app: StoredImage
    twin_a: StoredImage
    twin_b: StoredImage

    def get(self, path: str, token: str | None = "pull", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {getattr(self, token)}")
        return self.client.request(kwargs.pop("method", "GET"), path, headers=headers, **kwargs)


def _in_process(tmp_path: Path, server: dict[str, Any] | None = None) -> Iterator[Mirror]:
    cache = tmp_path / "cache"
    app = store_image(cache, ORIGIN, "team/app/api", "1.0", [os.urandom(300_000), os.urandom(1000)])
    twin_a = store_image(cache, "a.example.com", "library/twin", "1", [b"from a" * 100])
    twin_b = store_image(cache, "b.example.com", "library/twin", "1", [b"from b" * 100])
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path / "state"), **(server or {})},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(cache)}],
        },
        source="test",
    )
    with TestClient(create_app(config)) as client:
        tokens = {}
        for name, scopes in (("pull", ["pull"]), ("job", ["job"]), ("both", ["job", "pull"])):
            tokens[name] = new_token()
            client.portal.call(
                client.app.state.gateway.store.create_token, name, hash_token(tokens[name]), scopes, None
            )  # type: ignore[union-attr,attr-defined]
        yield Mirror(client, tokens["pull"], tokens["job"], tokens["both"], app, twin_a, twin_b)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    yield from _in_process(tmp_path)


def assert_oci_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["code"] == code, error
    return error


# --- the base route and who may pull ----------------------------------------------------------


def test_v2_answers_with_the_api_version_to_a_pull_token(mirror: Mirror) -> None:
    response = mirror.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_a_request_without_credentials_gets_a_basic_challenge_registry_clients_follow(mirror: Mirror) -> None:
    for path in ("/v2/", "/v2/team/app/api/manifests/1.0", f"/v2/team/app/api/blobs/{mirror.app.digest}"):
        response = mirror.get(path, token=None)
        assert_oci_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == 'Basic realm="preheat-gateway"'
    api = mirror.get("/oapi/v1/jobs", token=None)
    assert api.status_code == 401 and api.headers["WWW-Authenticate"].startswith("Bearer")  # the API keeps its own


def test_the_token_is_taken_as_the_password_of_basic_whatever_the_user_name(mirror: Mirror) -> None:
    basic = "Basic " + base64.b64encode(f"x:{mirror.pull}".encode()).decode()
    assert mirror.get("/v2/team/app/api/manifests/1.0", token=None, headers={"Authorization": basic}).status_code == 200
    wrong = "Basic " + base64.b64encode(f"{mirror.pull}:nope".encode()).decode()  # a token in the name part is no proof
    assert_oci_error(mirror.get("/v2/", token=None, headers={"Authorization": wrong}), 401, "UNAUTHORIZED")


def test_a_pull_token_cannot_run_jobs_and_a_job_token_cannot_pull(mirror: Mirror) -> None:
    denied = assert_oci_error(mirror.get("/v2/team/app/api/manifests/1.0", token="job"), 403, "DENIED")
    assert "'pull' scope" in denied["message"]
    created = mirror.get(
        "/oapi/v1/jobs",
        token="pull",
        method="POST",
        json={"type": "preheat", "args": {"type": "image", "url": "http://127.0.0.1:1/v2/a/manifests/1"}},
    )
    assert created.status_code == 403 and "'job' scope" in created.json()["errors"]
    assert mirror.get("/v2/team/app/api/manifests/1.0", token="both").status_code == 200
    assert mirror.get("/oapi/v1/jobs", token="both").status_code == 200


def test_refused_pulls_are_counted_as_auth_failures(mirror: Mirror) -> None:
    mirror.get("/v2/", token=None)
    mirror.get("/v2/", token="job")
    metrics = mirror.get("/metrics", token=None).text
    assert 'preheat_gateway_auth_failures_total{reason="missing"} 1.0' in metrics
    assert 'preheat_gateway_auth_failures_total{reason="forbidden"} 1.0' in metrics


def test_the_anonymous_option_opens_pulls_only(tmp_path: Path) -> None:
    for anonymous in _in_process(tmp_path, {"mirror_anonymous": True}):
        assert anonymous.get("/v2/team/app/api/manifests/1.0", token=None).status_code == 200
        assert anonymous.get("/oapi/v1/jobs", token=None).status_code == 401


# --- manifests --------------------------------------------------------------------------------


def test_a_manifest_is_served_byte_for_byte_by_tag_and_by_digest(mirror: Mirror) -> None:
    for reference in ("1.0", mirror.app.digest):
        response = mirror.get(f"/v2/team/app/api/manifests/{reference}")
        assert response.status_code == 200
        assert response.content == mirror.app.manifest
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == mirror.app.digest
        assert response.headers["Content-Length"] == str(len(mirror.app.manifest))
    head = mirror.get("/v2/team/app/api/manifests/1.0", method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(mirror.app.manifest))
    assert head.headers["Docker-Content-Digest"] == mirror.app.digest


def test_containerds_ns_names_the_origin(mirror: Mirror) -> None:
    assert mirror.get("/v2/team/app/api/manifests/1.0", params={"ns": ORIGIN}).content == mirror.app.manifest
    assert_oci_error(mirror.get("/v2/team/app/api/manifests/1.0", params={"ns": "docker.io"}), 404, "MANIFEST_UNKNOWN")
    assert mirror.get("/v2/library/twin/manifests/1", params={"ns": "b.example.com"}).content == mirror.twin_b.manifest
    assert mirror.get("/v2/library/twin/manifests/1", params={"ns": "A.example.com"}).content == mirror.twin_a.manifest


def test_a_repository_held_from_several_origins_needs_ns(mirror: Mirror) -> None:
    error = assert_oci_error(mirror.get("/v2/library/twin/manifests/1"), 404, "MANIFEST_UNKNOWN")
    assert "a.example.com, b.example.com" in error["message"] and "ns=" in error["message"]


def test_a_miss_is_a_404_with_the_oci_code_and_nothing_is_fetched(mirror: Mirror) -> None:
    assert_oci_error(mirror.get("/v2/team/app/api/manifests/2.0"), 404, "MANIFEST_UNKNOWN")
    assert_oci_error(mirror.get("/v2/library/never/manifests/1.0"), 404, "MANIFEST_UNKNOWN")
    assert_oci_error(mirror.get("/v2/team/app/api/manifests/sha256:" + "0" * 64), 404, "MANIFEST_UNKNOWN")
    assert_oci_error(mirror.get("/v2/team/app/api/blobs/sha256:" + "0" * 64), 404, "BLOB_UNKNOWN")
    assert_oci_error(mirror.get("/v2/team/app/api/blobs/sha512:" + "0" * 128), 404, "BLOB_UNKNOWN")


# --- blobs and ranges -------------------------------------------------------------------------


def test_a_blob_is_served_whole_with_its_digest(mirror: Mirror) -> None:
    digest, data = max(mirror.app.blobs.items(), key=lambda item: len(item[1]))
    response = mirror.get(f"/v2/team/app/api/blobs/{digest}")
    assert response.status_code == 200 and response.content == data
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Accept-Ranges"] == "bytes"
    head = mirror.get(f"/v2/team/app/api/blobs/{digest}", method="HEAD")
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(len(data))


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=1000-", 1000, None),
        ("bytes=-500", -500, None),
        ("bytes=299990-400000", 299_990, None),
    ],
)
def test_a_range_is_a_206_with_content_range(mirror: Mirror, header: str, first: int, last: int | None) -> None:
    digest, data = max(mirror.app.blobs.items(), key=lambda item: len(item[1]))
    response = mirror.get(f"/v2/team/app/api/blobs/{digest}", headers={"Range": header})
    start = first if first >= 0 else len(data) + first
    end = last if last is not None else len(data) - 1
    assert response.status_code == 206
    assert response.content == data[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert response.headers["Content-Length"] == str(end - start + 1)


def test_an_unsatisfiable_range_is_a_416_and_other_ranges_get_the_whole_blob(mirror: Mirror) -> None:
    digest, data = max(mirror.app.blobs.items(), key=lambda item: len(item[1]))
    for header in (f"bytes={len(data)}-", "bytes=-0"):
        response = mirror.get(f"/v2/team/app/api/blobs/{digest}", headers={"Range": header})
        assert response.status_code == 416, header
        assert response.headers["Content-Range"] == f"bytes */{len(data)}"
    for header in ("bytes=0-1,5-6", "bytes=9-2", "items=0-1", "bytes=abc", "bytes=" + "9" * 30 + "-"):
        response = mirror.get(f"/v2/team/app/api/blobs/{digest}", headers={"Range": header})
        assert response.status_code == 200 and response.content == data, header


# --- hostile paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v2/%2e%2e/%2e%2e/etc/passwd/blobs/sha256:" + "0" * 64,
        "/v2/team/%2e%2e/%2e%2e/manifests/1.0",
        "/v2/Team/App/manifests/1.0",
        "/v2/team/app/manifests/..%2F..%2Fetc%2Fpasswd",
        "/v2/team/app/blobs/sha256:..%2F..%2F..%2Findex.json",
        "/v2/team/app/blobs/sha256:" + "0" * 63,
        "/v2/team/app/blobs/" + "a" * 5000,
        "/v2/" + "a/" * 200 + "manifests/1.0",
        "/v2/team/app/tags/list",
        "/v2/team/app/manifests/",
        "/v2/team/app/manifests/-dash",
    ],
)
def test_hostile_names_and_references_are_404s_before_the_filesystem(mirror: Mirror, path: str) -> None:
    response = mirror.get(path)
    assert response.status_code == 404, (path, response.status_code, response.text)
    assert response.json()["errors"][0]["code"] in {
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "MANIFEST_INVALID",
        "DIGEST_INVALID",
        "MANIFEST_UNKNOWN",
        "BLOB_UNKNOWN",
    }


def test_a_malformed_ns_is_a_400(mirror: Mirror) -> None:
    for ns in ("a b", "host/path", "x" * 300, "http://evil"):
        assert_oci_error(mirror.get("/v2/team/app/api/manifests/1.0", params={"ns": ns}), 400, "NAME_INVALID")


def test_the_mirror_is_read_only(mirror: Mirror) -> None:
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        assert mirror.get("/v2/team/app/api/manifests/1.0", method=method).status_code == 405


def test_hits_misses_and_bytes_are_counted(mirror: Mirror) -> None:
    mirror.get("/v2/team/app/api/manifests/1.0")
    digest, data = max(mirror.app.blobs.items(), key=lambda item: len(item[1]))
    mirror.get(f"/v2/team/app/api/blobs/{digest}")
    mirror.get("/v2/team/app/api/manifests/9.9")
    metrics = mirror.get("/metrics", token=None).text
    assert 'preheat_gateway_mirror_requests_total{kind="manifest",outcome="hit"} 1.0' in metrics
    assert 'preheat_gateway_mirror_requests_total{kind="blob",outcome="hit"} 1.0' in metrics
    assert 'preheat_gateway_mirror_requests_total{kind="manifest",outcome="miss"} 1.0' in metrics
    assert f"preheat_gateway_mirror_bytes_served_total {float(len(data) + len(mirror.app.manifest))}" in metrics


def test_with_its_own_listener_the_mirror_leaves_the_api_listener(tmp_path: Path) -> None:
    for separate in _in_process(tmp_path, {"mirror_listen": f"127.0.0.1:{free_port()}"}):
        assert separate.get("/v2/").status_code == 404  # TestClient's requests come in on the API listener
        assert separate.get("/oapi/v1/jobs", token="job").status_code == 200


# --- a real process, a real preheat, the origin stopped, real skopeo ------------------------------


def find_skopeo() -> str:
    found = shutil.which("skopeo")
    if found is None:
        raise MissingPrerequisite("skopeo not installed: apt-get install skopeo")
    return found


@dataclass
class Preheated:
    origin: Registry
    gateway: GatewayProcess
    cache: Path
    image: PushedImage
    cold: PushedImage
    pull: str

    def skopeo_copy(
        self, port: int, repository: str, tag: str, dest: Path, creds: str | None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        command = [
            require(find_skopeo),
            "copy",
            "--src-tls-verify=false",
            *(["--src-creds", creds] if creds else []),
            f"docker://127.0.0.1:{port}/{repository}:{tag}",
            f"dir:{dest}",
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def preheated(
    registry_binary: str, token_service: TokenService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Preheated]:
    origin = start_registry(tmp_path_factory.mktemp("mirror-origin"), token=token_service)
    workdir = tmp_path_factory.mktemp("mirror-gateway")
    cache = workdir / "cache"
    gateway = GatewayProcess(workdir, gateway_config(workdir))
    try:
        image = push_image(origin, "team/app/api", "1.0", [3 << 20, 700 * 1024, 1000], seed=81)
        cold = push_image(origin, "library/cold", "1.0", [64 * 1024], seed=82)
        gateway.start()
        pull = gateway.create_token("nodes", "--scope", "pull")
        body = {
            "type": "preheat",
            "args": {
                "type": "image",
                "url": f"{origin.url}/v2/team/app/api/manifests/1.0",
                "headers": {"Authorization": f"Bearer {token_service.mint('team/app/api')}"},
            },
        }
        with gateway.client() as client:
            job = gateway.wait_job(client.post("/oapi/v1/jobs", json=body).json()["id"], timeout=120)
        assert job["state"] == "SUCCESS", f"{job}\n{gateway.logs()[-3000:]}"
        origin.stop()
        yield Preheated(origin, gateway, cache, image, cold, pull)
    finally:
        gateway.kill()
        origin.stop()


def assert_dir_copy(dest: Path, image: PushedImage) -> None:
    assert sha256((dest / "manifest.json").read_bytes()) == image.manifest_digest
    for digest in image.blob_digests:
        assert sha256((dest / digest.removeprefix("sha256:")).read_bytes()) == digest


def test_skopeo_pulls_a_preheated_image_from_the_gateway_with_the_origin_stopped(
    preheated: Preheated, tmp_path: Path
) -> None:
    assert not preheated.origin.running
    result = preheated.skopeo_copy(
        preheated.gateway.port, "team/app/api", "1.0", tmp_path / "copy", f"x:{preheated.pull}"
    )
    assert result.returncode == 0, result.stderr + preheated.gateway.logs()[-2000:]
    assert_dir_copy(tmp_path / "copy", preheated.image)


def test_an_image_never_preheated_misses_with_404(preheated: Preheated, tmp_path: Path) -> None:
    answer = httpx.get(
        f"{preheated.gateway.url}/v2/library/cold/manifests/1.0",
        headers={"Authorization": f"Bearer {preheated.pull}", "Accept": MANIFEST_ACCEPT},
        trust_env=False,
    )
    assert_oci_error(answer, 404, "MANIFEST_UNKNOWN")
    result = preheated.skopeo_copy(
        preheated.gateway.port, "library/cold", "1.0", tmp_path / "cold", f"x:{preheated.pull}"
    )
    assert result.returncode != 0 and "manifest unknown" in result.stderr.lower(), result.stderr


def test_skopeo_is_refused_without_a_pull_token(preheated: Preheated, tmp_path: Path) -> None:
    anonymous = httpx.get(f"{preheated.gateway.url}/v2/", trust_env=False)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == 'Basic realm="preheat-gateway"'
    job_only = preheated.skopeo_copy(
        preheated.gateway.port, "team/app/api", "1.0", tmp_path / "job", f"x:{preheated.gateway.token}"
    )
    assert job_only.returncode != 0 and "denied" in job_only.stderr.lower(), job_only.stderr
    nothing = preheated.skopeo_copy(preheated.gateway.port, "team/app/api", "1.0", tmp_path / "none", None)
    assert nothing.returncode != 0 and "unsupported protocol scheme" not in nothing.stderr
    assert "unauthorized" in nothing.stderr.lower() or "401" in nothing.stderr, nothing.stderr


def test_blobs_leave_by_sendfile_whole_and_in_ranges(preheated: Preheated) -> None:
    digest = max(preheated.image.blob_digests, key=lambda d: preheated.image.sizes[d])
    data = (preheated.cache / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    headers = {"Authorization": f"Bearer {preheated.pull}"}
    with httpx.Client(base_url=preheated.gateway.url, headers=headers, trust_env=False, timeout=30) as client:
        for _ in range(3):  # one kept-alive connection: each response ends where its Content-Length says
            whole = client.get(f"/v2/team/app/api/blobs/{digest}")
            assert whole.status_code == 200 and sha256(whole.content) == digest
            part = client.get(f"/v2/team/app/api/blobs/{digest}", headers={"Range": "bytes=1048575-2097152"})
            assert part.status_code == 206 and part.content == data[1048575:2097153]
            assert client.get("/v2/team/app/api/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT}).status_code == 200
        assert (
            client.get(f"/v2/team/app/api/blobs/{digest}", headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        )


def test_mirror_listen_serves_the_mirror_alone_on_its_own_address(
    preheated: Preheated, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    workdir = tmp_path_factory.mktemp("mirror-listen")
    mirror_port = free_port()
    config = gateway_config(
        workdir,
        clusters=[{"id": 1, "name": "local", "adapter": "local", "path": str(preheated.cache)}],
        server={"mirror_listen": f"127.0.0.1:{mirror_port}"},
    )
    gateway = GatewayProcess(workdir, config).start()
    try:
        pull = gateway.create_token("nodes", "--scope", "pull")
        auth = {"Authorization": f"Bearer {pull}"}
        mirror_url = f"http://127.0.0.1:{mirror_port}"
        assert httpx.get(f"{mirror_url}/v2/", headers=auth, trust_env=False).status_code == 200
        assert httpx.get(f"{gateway.url}/v2/", headers=auth, trust_env=False).status_code == 404
        assert (
            httpx.get(
                f"{mirror_url}/healthy", headers={"Authorization": f"Bearer {gateway.token}"}, trust_env=False
            ).status_code
            == 404
        )
        assert (
            httpx.get(
                f"{gateway.url}/healthy", headers={"Authorization": f"Bearer {gateway.token}"}, trust_env=False
            ).status_code
            == 200
        )
        result = preheated.skopeo_copy(mirror_port, "team/app/api", "1.0", tmp_path / "copy", f"x:{pull}")
        assert result.returncode == 0, result.stderr + gateway.logs()[-2000:]
        assert_dir_copy(tmp_path / "copy", preheated.image)
        gateway.stop()
        assert "Application shutdown complete" in gateway.logs(), gateway.logs()[-2000:]
    finally:
        gateway.kill()
