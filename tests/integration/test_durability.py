"""No accepted job is ever lost: SIGKILL mid-preheat, restart, the same id ends SUCCESS."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages
from tests.gateway_process import gateway_config
from tests.registry import Registry
from tests.tcprelay import TcpRelay


@pytest.fixture
def frozen_cache(make_cache: MakeCache) -> Iterator[tuple[Registry, TcpRelay]]:
    cache = make_cache()
    relay = TcpRelay("127.0.0.1", cache.port)
    try:
        yield cache, relay
    finally:
        relay.close()


def test_a_job_survives_sigkill_and_restart(
    make_gateway: MakeGateway,
    frozen_cache: tuple[Registry, TcpRelay],
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache, relay = frozen_cache
    config = gateway_config(
        tmp_path, clusters=[{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": relay.url}]}]
    )
    gateway = make_gateway(config)
    secret = harbor_token("library/app")
    relay.pause()
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/library/app/manifests/1.0",
            "headers": {"Authorization": secret},
        },
    }
    job_id = gateway.client().post("/oapi/v1/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 10
    while relay.connections == 0:  # the gateway is now inside the job, blocked on the cache
        assert time.monotonic() < deadline, "the gateway never reached the cache"
        time.sleep(0.05)

    gateway.kill()
    database = Path(gateway.config["server"]["state_dir"]) / "gateway.db"
    assert secret.split()[1].encode() not in database.read_bytes(), "Harbor's token must be sealed at rest"
    relay.resume()
    gateway.start()

    job = gateway.wait_job(job_id, timeout=60)
    assert job["state"] == "SUCCESS", job
    assert job["id"] == job_id
    for digest in images.single.blob_digests:
        assert cache.wait_for_blob(digest)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT secret FROM jobs WHERE id = ?", (job_id,)).fetchone() == (None,), (
            "secrets are purged when a job ends"
        )


def test_sigterm_hands_unfinished_work_back_and_a_restart_finishes_it(
    make_gateway: MakeGateway,
    frozen_cache: tuple[Registry, TcpRelay],
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    _cache, relay = frozen_cache
    gateway = make_gateway(
        gateway_config(
            tmp_path, clusters=[{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": relay.url}]}]
        )
    )
    relay.pause()
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/library/app/manifests/1.0",
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }
    job_id = gateway.client().post("/oapi/v1/jobs", json=body).json()["id"]
    while relay.connections == 0:
        time.sleep(0.05)

    started = time.monotonic()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it ended.
    assert gateway.stop() in (0, -15)
    assert time.monotonic() - started < 12, "shutdown must not wait for a stuck backend"
    assert "handed back 1 unfinished task" in gateway.logs()
    relay.resume()
    gateway.start()

    assert gateway.wait_job(job_id, timeout=60)["state"] == "SUCCESS"


def test_delete_cancels_in_flight_work_promptly(
    make_gateway: MakeGateway,
    frozen_cache: tuple[Registry, TcpRelay],
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache, relay = frozen_cache
    gateway = make_gateway(
        gateway_config(
            tmp_path, clusters=[{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": relay.url}]}]
        )
    )
    relay.pause()
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/library/app/manifests/1.0",
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }
    with gateway.client() as client:
        job_id = client.post("/oapi/v1/jobs", json=body).json()["id"]
        while relay.connections == 0:
            time.sleep(0.05)

        assert client.delete(f"/oapi/v1/jobs/{job_id}").status_code == 200

        assert client.get(f"/oapi/v1/jobs/{job_id}").status_code == 404
        assert client.get("/readyz").status_code == 200
    relay.resume()
    time.sleep(1.0)
    assert "stopped: the job was canceled, deleted or taken over" in gateway.logs()
    assert not any(cache.blob_on_disk(d) for d in images.single.blob_digests), "canceled work must not go on"
