"""Several replicas on one PostgreSQL: shared jobs, unique ids, and work that survives a replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages, require
from tests.gateway_process import GatewayProcess, gateway_config
from tests.postgres import find_postgres, fresh_database
from tests.registry import Registry, wait_until
from tests.tcprelay import TcpRelay


@pytest.fixture
def store_url() -> Iterator[str]:
    admin = require(find_postgres)
    with fresh_database(admin) as url:
        yield url


def replica_config(tmp_path: Path, store_url: str, relay: TcpRelay) -> dict[str, Any]:
    return gateway_config(
        tmp_path,
        clusters=[{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": relay.url}]}],
        store={"url": store_url, "secret_key_file": str(tmp_path / "shared-secret.key")},
        runner={"lease_seconds": 3, "poll_seconds": 0.5},
    )


def start_replica(make_gateway: MakeGateway, config: dict[str, Any], token: str | None = None) -> GatewayProcess:
    replica = make_gateway(config, start=False)
    if token is not None:
        replica._token = token  # one token, created once in the shared store
    return replica.start()


def test_replicas_share_jobs_and_never_reuse_an_id(
    make_gateway: MakeGateway,
    make_cache: MakeCache,
    store_url: str,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    relay = TcpRelay("127.0.0.1", make_cache().port)
    config = replica_config(tmp_path, store_url, relay)
    a = start_replica(make_gateway, config)
    b = start_replica(make_gateway, config, a.token)
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/library/app/manifests/1.0",
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }

    ids = [(a if i % 2 else b).client().post("/oapi/v1/jobs", json=body).json()["id"] for i in range(6)]

    assert len(set(ids)) == 6
    for job_id in ids:
        assert b.wait_job(job_id)["state"] == "SUCCESS"
        assert a.wait_job(job_id)["state"] == "SUCCESS"
    relay.close()


def test_a_killed_replicas_task_is_finished_by_another(
    make_gateway: MakeGateway,
    make_cache: MakeCache,
    store_url: str,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache = make_cache()
    relay = TcpRelay("127.0.0.1", cache.port)
    config = replica_config(tmp_path, store_url, relay)
    a = start_replica(make_gateway, config)
    relay.pause()
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/library/app/manifests/1.0",
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }
    job_id = a.client().post("/oapi/v1/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 10
    while relay.connections == 0:  # replica A holds the task and is blocked inside it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    b = start_replica(make_gateway, config, a.token)

    a.kill()
    relay.resume()
    job = b.wait_job(job_id, timeout=60)

    assert job["state"] == "SUCCESS", job
    for digest in images.single.blob_digests:
        assert cache.wait_for_blob(digest)
        wait_until(
            lambda digest=digest: cache.upstream_blob_fetches(digest) >= 1, message=f"the cache's log line for {digest}"
        )
        assert cache.upstream_blob_fetches(digest) == 1, "warmed once: A never got past the frozen cache"
    relay.close()
