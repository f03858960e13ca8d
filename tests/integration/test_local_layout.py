"""The ``local`` cache is a standard OCI image layout, bounded on disk (issue 20, items 1 and 4).

A real gateway (its server on a thread of the test process; processes where a test restarts
it) preheats real images from the ``origin`` registry; then skopeo, a real OCI tool, reads the
cache directory with its ``oci:`` transport, and what it copies is digest-checked. ``index.json`` names each preheated reference
``<origin host>/<repository>:<tag>`` (``@sha256:...`` when preheated by digest).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HarborToken, MakeGateway, OriginImages, require
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.registry import MissingPrerequisite, PushedImage, Registry

REF_NAME = "org.opencontainers.image.ref.name"


def find_skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        raise MissingPrerequisite("skopeo is not installed (apt-get install skopeo)")
    return path


def local_cluster(cache: Path, **options: Any) -> dict[str, Any]:
    return {"id": 1, "name": "local", "adapter": "local", "path": str(cache), **options}


def submit(
    gateway: GatewayUnderTest, origin: Registry, repository: str, reference: str, token: str, **args: Any
) -> int:
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/{repository}/manifests/{reference}",
            "headers": {"Authorization": token},
            **args,
        },
    }
    response = gateway.client().post("/oapi/v1/jobs", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def preheat(
    gateway: GatewayUnderTest, origin: Registry, repository: str, reference: str, token: str, **args: Any
) -> dict[str, Any]:
    return gateway.wait_job(submit(gateway, origin, repository, reference, token, **args))


def index_of(cache: Path) -> dict[str, dict[str, Any]]:
    """index.json's descriptors by their ref name."""
    index = json.loads((cache / "index.json").read_text())
    assert index["schemaVersion"] == 2
    return {entry["annotations"][REF_NAME]: entry for entry in index["manifests"]}


def on_disk(cache: Path) -> set[str]:
    found = set()
    for path in (cache / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"{path} is not its digest"
        found.add(f"sha256:{path.name}")
    return found


def skopeo_copy(cache: Path, name: str, out: Path, *extra: str) -> None:
    done = subprocess.run(
        [require(find_skopeo), "copy", "--quiet", *extra, f"oci:{cache}:{name}", f"dir:{out}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def assert_copied(out: Path, image: PushedImage) -> None:
    """skopeo's ``dir:`` copy holds the manifest and each blob, every one of them its digest."""
    manifest = (out / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == image.manifest_digest, (
        "the manifest is the origin's, byte for byte"
    )
    for digest in image.blob_digests:
        blob = (out / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == digest
        assert len(blob) == image.sizes[digest]


def test_a_preheated_image_is_an_oci_layout_that_skopeo_copies(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[local_cluster(cache)]))

    job = preheat(gateway, origin, "library/app", "1.0", harbor_token("library/app"))

    assert job["state"] == "SUCCESS", job
    assert json.loads((cache / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    name = f"{origin.host}/library/app:1.0"
    [entry] = index_of(cache).values()
    assert entry["annotations"][REF_NAME] == name
    assert (entry["digest"], entry["size"]) == (images.single.manifest_digest, images.single.manifest_size)
    # A Docker schema-2 manifest is recorded under its OCI equivalent (skopeo finds ref names only on OCI types),
    # its own type kept beside it; its bytes, hence its digest, are the origin's.
    assert images.single.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"]["io.harbor-preheat-gateway.media-type"] == images.single.media_type
    assert on_disk(cache) == {images.single.manifest_digest, *images.single.blob_digests}
    skopeo_copy(cache, name, tmp_path / "out")
    assert_copied(tmp_path / "out", images.single)


def test_an_index_is_stored_with_the_platforms_preheated_and_by_digest_preheats_are_named_by_digest(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[local_cluster(cache)]))
    multi, arm64 = images.multiarch, images.multiarch.images["linux/arm64"]

    jobs = [
        preheat(gateway, origin, "library/multi", "2.0", harbor_token("library/multi"), platform="linux/arm64"),
        preheat(gateway, origin, "library/app", images.single.manifest_digest, harbor_token("library/app")),
    ]

    assert [job["state"] for job in jobs] == ["SUCCESS", "SUCCESS"], jobs
    index = index_of(cache)
    assert index[f"{origin.host}/library/multi:2.0"]["digest"] == multi.index_digest
    assert index[f"{origin.host}/library/multi:2.0"]["mediaType"] == multi.media_type
    by_digest = f"{origin.host}/library/app@{images.single.manifest_digest}"
    assert index[by_digest]["digest"] == images.single.manifest_digest
    held = on_disk(cache)
    assert {multi.index_digest, arm64.manifest_digest, *arm64.blob_digests} <= held
    assert images.multiarch.images["linux/amd64"].manifest_digest not in held, "only the platform preheated"
    skopeo_copy(
        cache,
        f"{origin.host}/library/multi:2.0",
        tmp_path / "arm64",
        "--override-os",
        "linux",
        "--override-arch",
        "arm64",
    )
    assert_copied(tmp_path / "arm64", arm64)
    skopeo_copy(cache, by_digest, tmp_path / "by-digest")
    assert_copied(tmp_path / "by-digest", images.single)


def test_jobs_running_at_once_all_land_in_the_index(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[local_cluster(cache)]))
    app, multi = harbor_token("library/app"), harbor_token("library/multi")

    ids = [
        submit(gateway, origin, "library/app", "1.0", app),
        submit(gateway, origin, "library/multi", "2.0", multi, platform="all"),
        submit(gateway, origin, "library/app", images.single.manifest_digest, app),
    ]

    assert [gateway.wait_job(i)["state"] for i in ids] == ["SUCCESS"] * 3
    assert set(index_of(cache)) == {
        f"{origin.host}/library/app:1.0",
        f"{origin.host}/library/multi:2.0",
        f"{origin.host}/library/app@{images.single.manifest_digest}",
    }
    assert not [p for p in cache.iterdir() if p.name.startswith(".index.json")], "no temporary index is left"


# Processes: the first gateway's layout of the cache (adapters.layout's per-process registry) would outlive it
# in a thread's process until a garbage collection, and the second would reuse it instead of migrating.
def test_a_cache_of_bare_blobs_is_migrated_in_place_without_fetching_again(
    make_gateway: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = make_gateway(gateway_config(tmp_path, clusters=[local_cluster(cache)]))
    assert preheat(first, origin, "library/app", "1.0", harbor_token("library/app"))["state"] == "SUCCESS"
    first.stop()
    # What a cache looked like before it was a layout: raw config and layer blobs, nothing else.
    (cache / "index.json").unlink()
    (cache / "oci-layout").unlink()
    (cache / "blobs" / "sha256" / images.single.manifest_digest.removeprefix("sha256:")).unlink()
    fetched = {digest: origin.blob_requests(digest) for digest in images.single.blob_digests}

    second = make_gateway(gateway_config(tmp_path, clusters=[local_cluster(cache)]))
    job = preheat(second, origin, "library/app", "1.0", harbor_token("library/app"))

    assert job["state"] == "SUCCESS", job
    assert {digest: origin.blob_requests(digest) for digest in images.single.blob_digests} == fetched, (
        "no blob was fetched again"
    )
    assert (cache / "oci-layout").is_file()
    assert set(index_of(cache)) == {f"{origin.host}/library/app:1.0"}
    skopeo_copy(cache, f"{origin.host}/library/app:1.0", tmp_path / "out")
    assert_copied(tmp_path / "out", images.single)


def metric(gateway: GatewayUnderTest, name: str) -> float:
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith(f'preheat_gateway_{name}{{cluster="local"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for the local cluster")


def test_max_bytes_evicts_the_least_recently_used_image_whole(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    amd64 = images.multiarch.images["linux/amd64"]
    # Room for the app (1.2 MB) or the multi-arch image's amd64 half (0.5 MB), not for both.
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[local_cluster(cache, max_bytes="1.5MB")]))

    assert preheat(gateway, origin, "library/app", "1.0", harbor_token("library/app"))["state"] == "SUCCESS"
    assert metric(gateway, "local_cache_bytes") == sum(p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir())
    time.sleep(0.01)
    assert preheat(gateway, origin, "library/multi", "2.0", harbor_token("library/multi"))["state"] == "SUCCESS"

    assert set(index_of(cache)) == {f"{origin.host}/library/multi:2.0"}
    assert on_disk(cache) == {images.multiarch.index_digest, amd64.manifest_digest, *amd64.blob_digests}, (
        "the app went whole"
    )
    assert metric(gateway, "local_cache_evictions_total") == 1
    assert metric(gateway, "local_cache_max_bytes") == 1_500_000
    assert metric(gateway, "local_cache_bytes") <= 1_500_000


def test_an_image_larger_than_max_bytes_fails_its_task_saying_so(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[local_cluster(cache, max_bytes="1MiB")]))

    job = preheat(gateway, origin, "library/app", "1.0", harbor_token("library/app"))

    assert job["state"] == "FAILURE", job
    error = job["result"]["job_states"][0]["error"]
    assert (
        "max_bytes" in error
        and f"is {images.single.total_size + images.single.manifest_size} bytes" in error
        and "clusters[0]" in error
    ), error
    assert not on_disk(cache) & set(images.single.blob_digests), "no blob was fetched"
    assert index_of(cache) == {}


@pytest.mark.parametrize("max_bytes", ["lots", 0, "-5GB"])
def test_a_bad_max_bytes_is_a_config_error(max_bytes: object, tmp_path: Path) -> None:
    from gateway.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="max_bytes"):
        build_config(
            gateway_config(tmp_path, clusters=[local_cluster(tmp_path / "cache", max_bytes=max_bytes)]), source="test"
        )
