"""Harbor 2.12+ preheats real images into local and mirror clusters (issue: gateway core)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages
from tests.gateway_process import gateway_config, run_cli
from tests.harbor.driver import FAIL, SUCCESS, DragonflyDriver
from tests.registry import Registry, wait_until
from tests.tcprelay import TcpRelay


def manifest_url(origin: Registry, repository: str, reference: str) -> str:
    return f"{origin.url}/v2/{repository}/manifests/{reference}"


def cached_digests(cache_dir: Path) -> set[str]:
    """Every blob in a local cache, re-hashed: a file's name must be its content's digest."""
    found = set()
    for path in (cache_dir / "blobs" / "sha256").glob("*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        found.add(f"sha256:{path.name}")
    return found


def test_harbor_task_warms_the_local_cache(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(manifest_url(origin, "library/app", "1.0"), {"Authorization": harbor_token("library/app")})

    assert status.status == SUCCESS, status.error
    assert {row[0] for row in status.rows or []} == {
        f"{origin.url}/v2/library/app/blobs/{d}" for d in images.single.blob_digests
    }
    assert {row[3] for row in status.rows or []} == {"1"}
    assert cached_digests(tmp_path / "cache") == {
        images.single.manifest_digest,
        *images.single.blob_digests,
    }  # an OCI layout: the manifest too


def test_a_missing_tag_fails_fast_with_a_useful_message(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})
    started = time.monotonic()

    status = harbor.run_task(
        manifest_url(origin, "library/app", "no-such-tag"), {"Authorization": harbor_token("library/app")}
    )

    assert status.status == FAIL
    assert "library/app:no-such-tag" in status.error and "not found" in status.error
    assert time.monotonic() - started < 10


def mirror_cluster(*caches: Registry, cluster_id: int = 2, name: str = "eu-west", **extra: object) -> dict[str, object]:
    return {"id": cluster_id, "name": name, "adapter": "mirror", "endpoints": [{"url": c.url} for c in caches], **extra}


def test_all_seed_peers_warms_every_cache_of_a_mirror_cluster(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    caches = [make_cache(), make_cache()]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[mirror_cluster(*caches)]))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(
        manifest_url(origin, "library/app", "1.0"),
        {"Authorization": harbor_token("library/app")},
        scope="all_seed_peers",
    )

    assert status.status == SUCCESS, status.error
    assert len(status.rows or []) == 2 * len(images.single.blob_digests)
    for cache in caches:
        for digest in images.single.blob_digests:
            assert cache.wait_for_blob(digest), f"{digest} never reached {cache.url}"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    blobs = len(images.single.blob_digests)
    assert f'preheat_gateway_blob_checks_total{{check="sha256"}} {blobs}.0' in metrics, (
        "one copy of each blob is hashed with sha256"
    )
    assert f'preheat_gateway_blob_checks_total{{check="fingerprint"}} {blobs}.0' in metrics, (
        "the other cache's copy is compared with it"
    )


def test_verify_size_warms_every_cache_counting_bytes_instead_of_hashing_them(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    caches = [make_cache(), make_cache()]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[mirror_cluster(*caches, verify="size")]))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(
        manifest_url(origin, "library/app", "1.0"),
        {"Authorization": harbor_token("library/app")},
        scope="all_seed_peers",
    )

    assert status.status == SUCCESS, status.error
    for cache in caches:
        for digest in images.single.blob_digests:
            assert cache.wait_for_blob(digest), f"{digest} never reached {cache.url}"


def test_an_unknown_verify_mode_is_refused_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "clusters:\n  - {id: 1, name: m, adapter: mirror, endpoints: [{url: 'http://127.0.0.1:5000'}], verify: md5}\n"
    )

    result = run_cli("check-config", str(config), check=False)

    assert result.returncode == 2
    assert "clusters[0].verify: invalid enum value 'md5' (allowed: digest, size)" in result.stdout


def test_single_seed_peer_warms_each_blob_on_one_cache(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    caches = [make_cache(), make_cache()]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[mirror_cluster(*caches)]))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(manifest_url(origin, "library/app", "1.0"), {"Authorization": harbor_token("library/app")})

    assert status.status == SUCCESS, status.error
    assert sorted(row[0].rsplit("/", 1)[1] for row in status.rows or []) == sorted(images.single.blob_digests)
    for digest in images.single.blob_digests:
        assert caches[0].wait_for_blob(digest)
    assert not any(caches[1].blob_on_disk(d) for d in images.single.blob_digests)


def test_a_dead_cache_node_is_listed_but_the_others_carry_the_preheat(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    dead, alive = make_cache(), make_cache()
    dead.stop()
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[mirror_cluster(dead, alive)]))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})
    url, header = manifest_url(origin, "library/app", "1.0"), {"Authorization": harbor_token("library/app")}

    everywhere = harbor.run_task(url, header, scope="all_seed_peers")
    single = harbor.run_task(url, header)

    assert everywhere.status == SUCCESS, everywhere.error
    failures = [row for row in everywhere.rows or [] if row[4] == "FAILURE"]
    assert len(failures) == len(images.single.blob_digests)
    assert all(dead.host in row[5] and "connection refused" in row[5] for row in failures), failures
    assert single.status == SUCCESS, single.error
    for digest in images.single.blob_digests:
        assert alive.wait_for_blob(digest)


def test_a_cluster_whose_every_cache_is_down_fails_within_seconds(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    dead = make_cache()
    dead.stop()
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[mirror_cluster(dead)]))
    job = (
        gateway.client()
        .post(
            "/oapi/v1/jobs",
            json={"type": "preheat", "args": {"type": "image", "url": manifest_url(origin, "library/app", "1.0")}},
        )
        .json()
    )
    started = time.monotonic()

    result = gateway.wait_job(job["id"], timeout=30)

    assert result["state"] == "FAILURE"
    error = result["result"]["job_states"][0]["error"]
    assert "eu-west" in error and dead.host.split(":")[0] in error and "connection refused" in error
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("request_platform", "cluster_platform", "expected"),
    [
        ("linux/arm64", None, ["linux/arm64"]),
        ("", "linux/arm64", ["linux/arm64"]),
        ("", None, ["linux/amd64"]),
        ("all", None, ["linux/amd64", "linux/arm64"]),
    ],
)
def test_a_multi_arch_index_warms_the_chosen_platforms(
    request_platform: str,
    cluster_platform: str | None,
    expected: list[str],
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cluster = {
        "id": 1,
        "name": "local",
        "adapter": "local",
        "path": str(tmp_path / "cache"),
        **({"platform": cluster_platform} if cluster_platform else {}),
    }
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[cluster]))
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": manifest_url(origin, "library/multi", "2.0"),
            "platform": request_platform,
            "headers": {"Authorization": harbor_token("library/multi")},
        },
    }

    job = gateway.wait_job(gateway.client().post("/oapi/v1/jobs", json=body).json()["id"])

    assert job["state"] == "SUCCESS", job
    wanted = {images.multiarch.index_digest} | {
        d
        for platform in expected
        for d in [images.multiarch.images[platform].manifest_digest, *images.multiarch.images[platform].blob_digests]
    }
    assert cached_digests(tmp_path / "cache") == wanted


def test_a_platform_the_index_lacks_fails_naming_what_it_has(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": manifest_url(origin, "library/multi", "2.0"),
            "platform": "linux/s390x",
            "headers": {"Authorization": harbor_token("library/multi")},
        },
    }

    job = gateway.wait_job(gateway.client().post("/oapi/v1/jobs", json=body).json()["id"])

    assert job["state"] == "FAILURE"
    assert "no matching manifest for platform linux/s390x" in job["result"]["job_states"][0]["error"]
    assert "linux/amd64, linux/arm64" in job["result"]["job_states"][0]["error"]


def test_a_token_the_registry_refuses_fails_the_task_with_advice(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, token_service: object, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})
    untrusted = f"Bearer {token_service.mint_untrusted('library/app')}"  # type: ignore[attr-defined]

    status = harbor.run_task(manifest_url(origin, "library/app", "1.0"), {"Authorization": untrusted})

    assert status.status == FAIL
    assert "refused the token" in status.error and "registries.credentials" in status.error


def test_duplicate_and_repeated_preheats_all_succeed_without_refetching(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache = make_cache()
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[mirror_cluster(cache)]))
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": manifest_url(origin, "library/app", "1.0"),
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }
    with gateway.client() as client:
        first_wave = [client.post("/oapi/v1/jobs", json=body).json()["id"] for _ in range(5)]
        assert all(gateway.wait_job(job_id)["state"] == "SUCCESS" for job_id in first_wave)
        for digest in images.single.blob_digests:  # the cache logs a stored blob a moment after serving it
            wait_until(
                lambda digest=digest: cache.upstream_blob_fetches(digest) >= 1,
                message=f"the cache's log line for {digest}",
            )
        fetched_after_first_wave = {d: cache.upstream_blob_fetches(d) for d in images.single.blob_digests}

        again = client.post("/oapi/v1/jobs", json=body).json()["id"]
        assert gateway.wait_job(again)["state"] == "SUCCESS"

    assert all(count == 1 for count in fetched_after_first_wave.values()), fetched_after_first_wave
    assert {d: cache.upstream_blob_fetches(d) for d in images.single.blob_digests} == fetched_after_first_wave


def test_a_bandwidth_cap_slows_a_mirror_cluster_to_its_rate(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    total = sum(images.single.sizes.values())
    cap = total / 1048576 / 3  # MiB/s at which the image takes about 3 s
    gateway = make_gateway_thread(
        gateway_config(tmp_path, clusters=[mirror_cluster(make_cache(), bandwidth_mib_per_second=cap)])
    )
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": manifest_url(origin, "library/app", "1.0"),
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }
    started = time.monotonic()

    job = gateway.wait_job(gateway.client().post("/oapi/v1/jobs", json=body).json()["id"])

    assert job["state"] == "SUCCESS"
    assert time.monotonic() - started > 1.8  # the first second's allowance is free; the rest waits


def test_a_connection_dropped_mid_blob_is_retried(
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache = make_cache()
    flaky = TcpRelay("127.0.0.1", cache.port, cut_first_after=150 * 1024)
    try:
        gateway = make_gateway_thread(
            gateway_config(
                tmp_path, clusters=[{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": flaky.url}]}]
            )
        )
        body = {
            "type": "preheat",
            "args": {
                "type": "image",
                "url": manifest_url(origin, "library/app", "1.0"),
                "headers": {"Authorization": harbor_token("library/app")},
            },
        }

        job = gateway.wait_job(gateway.client().post("/oapi/v1/jobs", json=body).json()["id"])

        assert flaky.cuts == 1, "the first connection was cut mid-response"
        assert job["state"] == "SUCCESS", job["result"]["job_states"][0]["error"]
    finally:
        flaky.close()
