"""Harbor 2.12+ preheats real images into local and mirror clusters (issue: gateway core)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages
from tests.gateway_process import gateway_config
from tests.harbor.driver import FAIL, SUCCESS, DragonflyDriver
from tests.registry import Registry


def manifest_url(origin: Registry, repository: str, reference: str) -> str:
    return f"{origin.url}/v2/{repository}/manifests/{reference}"


def cached_digests(cache_dir: Path) -> set[str]:
    """Every blob in a local cache, re-hashed: a file's name must be its content's digest."""
    found = set()
    for path in (cache_dir / "blobs" / "sha256").glob("*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        found.add(f"sha256:{path.name}")
    return found


def test_harbor_task_warms_the_local_cache(make_gateway: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(manifest_url(origin, "library/app", "1.0"), {"Authorization": harbor_token("library/app")})

    assert status.status == SUCCESS, status.error
    assert {row[0] for row in status.rows or []} == {f"{origin.url}/v2/library/app/blobs/{d}" for d in images.single.blob_digests}
    assert {row[3] for row in status.rows or []} == {"1"}
    assert cached_digests(tmp_path / "cache") == set(images.single.blob_digests)


def test_a_missing_tag_fails_fast_with_a_useful_message(make_gateway: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})
    started = time.monotonic()

    status = harbor.run_task(manifest_url(origin, "library/app", "no-such-tag"), {"Authorization": harbor_token("library/app")})

    assert status.status == FAIL
    assert "library/app:no-such-tag" in status.error and "not found" in status.error
    assert time.monotonic() - started < 10
