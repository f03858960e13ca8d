"""One job, or one registry, cannot hurt another (issue 17, section 2).

Each test runs a real gateway process against small registries of its own: a malicious one
that serves bad bytes for a digest another, legitimate registry serves correctly; registries
that drip one byte a second; and a Kraken caller that packs many events into one notification.
The legitimate job must succeed promptly, its own registry must receive its requests, the
dripping fetch must fail with a message naming the rate, and the creation limit must count jobs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MakeCache, MakeGateway, OriginImages
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import Registry
from tests.security.hostile import (
    Exchange,
    HostileServer,
    disk_bytes,
    image_manifest,
    sha256,
    survival,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
KIB = 1024


# --- a registry of the test's own ------------------------------------------------------------


class Image:
    """An image a test registry serves: its manifest for ``repository:1``, and its blobs by digest."""

    def __init__(self, repository: str, layers: list[bytes], *, seed: str) -> None:
        self.repository = repository
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        self.layers = layers
        self.manifest = image_manifest(self.config, [(sha256(layer), len(layer)) for layer in layers])
        self.blobs = {sha256(blob): blob for blob in [self.config, *layers]}

    @property
    def manifest_path(self) -> str:
        return f"/v2/{self.repository}/manifests/1"

    def blob_path(self, blob: bytes) -> str:
        return f"/v2/{self.repository}/blobs/{sha256(blob)}"


BlobAnswer = Callable[[Exchange, bytes], None]


def honest(exchange: Exchange, blob: bytes) -> None:
    exchange.send(200, blob, {"Content-Type": "application/octet-stream"})


def registry(images: list[Image], answer_blob: BlobAnswer = honest) -> Callable[[Exchange], None]:
    """A registry serving ``images``: manifests honestly, blobs as ``answer_blob`` says, 404 otherwise."""
    manifests = {image.manifest_path: image.manifest for image in images}
    blobs = {f"/v2/{image.repository}/blobs/{digest}": blob for image in images for digest, blob in image.blobs.items()}

    def answer(exchange: Exchange) -> None:
        if (manifest := manifests.get(exchange.path)) is not None:
            exchange.send(200, manifest, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(manifest)})
        elif (blob := blobs.get(exchange.path)) is not None:
            answer_blob(exchange, blob)
        else:
            exchange.json(404, {"errors": [{"code": "NOT_FOUND", "message": "no such thing"}]})

    return answer


def dripping(stop: threading.Event, hangups: list[float]) -> BlobAnswer:
    """Blobs announced whole, then sent one byte a second until the gateway hangs up (recorded in ``hangups``)."""

    def answer(exchange: Exchange, blob: bytes) -> None:
        exchange.head(200, {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))})
        for byte in blob:
            if stop.wait(1.0) or not exchange.write(bytes([byte])):
                break
        hangups.append(time.monotonic())

    return answer


def create_job(gateway: GatewayProcess, url: str, clusters: list[int] | None = None) -> int:
    body: dict[str, Any] = {"type": "preheat", "args": {"type": "image", "url": url}}
    if clusters is not None:
        body["scheduler_cluster_ids"] = clusters
    with gateway.client() as client:
        response = client.post("/oapi/v1/jobs", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def job_text(job: dict[str, Any]) -> str:
    """Every error and failure description of a job, one per line."""
    lines: list[str] = []
    for state in (job.get("result") or {}).get("job_states") or []:
        lines.append(state.get("error") or "")
        for result in state.get("results") or []:
            lines += [task.get("description") or "" for task in result.get("failure_tasks") or [] if task]
    return "\n".join(line for line in lines if line)


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> float:
    """Seconds until ``condition`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {message}")
        time.sleep(0.02)
    return time.monotonic() - started


def requested(server: HostileServer, path: str) -> int:
    return sum(1 for r in server.received if r.method == "GET" and r.path == path)


# --- 1. a shared fetch is joined only from the same source with the same authority ---------------


def test_bad_bytes_from_a_malicious_registry_never_fail_a_legitimate_job_for_the_same_digest(
    make_gateway: MakeGateway,
    tmp_path: Path,
) -> None:
    shared = os.urandom(256 * KIB)
    evil, legit = Image("evil/app", [shared], seed="evil"), Image("library/app", [shared], seed="legit")
    answered = threading.Event()

    def late_and_wrong(exchange: Exchange, blob: bytes) -> None:
        if blob is shared:  # holds the fetch open, then serves other bytes of the same length
            answered.wait(6)
            exchange.send(200, bytes(len(blob)), {"Content-Type": "application/octet-stream"})
        else:
            honest(exchange, blob)

    cache = tmp_path / "cache"
    with (
        HostileServer(registry([evil], late_and_wrong)) as malicious,
        HostileServer(registry([legit])) as honest_registry,
    ):
        gateway = make_gateway(
            gateway_config(tmp_path, clusters=[{"id": 1, "name": "local", "adapter": "local", "path": str(cache)}])
        )
        with survival(gateway) as watch:
            bad = create_job(gateway, malicious.url + evil.manifest_path)
            wait_until(
                lambda: requested(malicious, evil.blob_path(shared)) == 1,
                10,
                "the malicious registry is asked for the shared blob",
            )
            started = time.monotonic()
            good = gateway.wait_job(create_job(gateway, honest_registry.url + legit.manifest_path), timeout=20)
            good_seconds = time.monotonic() - started
            answered.set()
            bad_job = gateway.wait_job(bad, timeout=20)

        assert good["state"] == "SUCCESS", job_text(good)
        assert good_seconds < 3, f"the legitimate job took {good_seconds:.1f}s"
        assert requested(honest_registry, legit.blob_path(shared)) == 1, "it read the blob from its own registry"
        assert (cache / "blobs" / "sha256" / sha256(shared).split(":")[1]).read_bytes() == shared
        assert bad_job["state"] == "FAILURE" and sha256(shared) in job_text(bad_job)
        assert disk_bytes(cache / "tmp") == 0
    watch.assert_survived()


def test_a_job_on_a_mirror_is_not_held_up_by_a_malicious_registry_serving_the_same_digest(
    make_gateway: MakeGateway,
    make_cache: MakeCache,
    images: OriginImages,
    origin: Registry,
    tmp_path: Path,
) -> None:
    mirror = make_cache()
    layer_digest = images.single.blob_digests[-1]
    with httpx.Client() as client:  # the real bytes of one of the origin's layers, read through the cache
        real = client.get(f"{mirror.url}/v2/library/app/blobs/{layer_digest}").content
    assert sha256(real) == layer_digest
    evil = Image("evil/app", [real], seed="evil")
    stop = threading.Event()

    def slow_and_wrong(exchange: Exchange, blob: bytes) -> None:
        if blob is real:  # a slow copy, under its digest check, of bytes that will not match
            exchange.head(200, {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))})
            for _ in range(8):
                if stop.wait(0.5) or not exchange.write(bytes(len(blob) // 8)):
                    break
        else:
            honest(exchange, blob)

    clusters = [
        {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
        {"id": 2, "name": "mirror", "adapter": "mirror", "endpoints": [{"url": mirror.url}]},
    ]
    try:
        with HostileServer(registry([evil], slow_and_wrong)) as malicious:
            gateway = make_gateway(gateway_config(tmp_path, clusters=clusters))
            with survival(gateway) as watch:
                create_job(gateway, malicious.url + evil.manifest_path, clusters=[1])
                wait_until(
                    lambda: requested(malicious, evil.blob_path(real)) == 1,
                    10,
                    "the malicious registry is asked for the layer",
                )
                started = time.monotonic()
                good = gateway.wait_job(
                    create_job(gateway, f"{origin.url}/v2/library/app/manifests/1.0", clusters=[2]), timeout=30
                )
                good_seconds = time.monotonic() - started
            assert good["state"] == "SUCCESS", job_text(good)
            assert good_seconds < 2.5, f"the mirror job waited {good_seconds:.1f}s on the malicious registry's copy"
    finally:
        stop.set()
    watch.assert_survived()
