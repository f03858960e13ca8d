"""Dragonfly's preheat arguments: each has a meaning where it can have one, and is refused elsewhere.

On a cluster of several endpoints (registry mirrors here, real pull-through caches), ``ips``
picks endpoints by address, ``count`` and ``percentage`` how many of them, in configured order.
Out of range values get Dragonfly's bounds back in a 422; an argument no target gives a meaning
to is refused, naming the cluster, instead of being dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import build_config
from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.registry import Registry

MIRROR = 2


def mirror_gateway(make_gateway_thread: MakeGateway, tmp_path: Path, urls: list[str]) -> GatewayUnderTest:
    clusters = [
        {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
        {"id": MIRROR, "name": "edge", "adapter": "mirror", "endpoints": [{"url": url} for url in urls]},
    ]
    return make_gateway_thread(gateway_config(tmp_path, clusters=clusters, allow=["127.0.0.1", "localhost"]))


def preheat(gateway: GatewayUnderTest, url: str, token: str, **args: Any) -> httpx.Response:
    ids = args.pop("scheduler_cluster_ids", [MIRROR])
    body = {
        "type": "preheat",
        "args": {"type": "image", "url": url, "headers": {"Authorization": token}, **args},
        "scheduler_cluster_ids": ids,
    }
    return httpx.post(
        f"{gateway.url}/oapi/v1/jobs", json=body, headers={"Authorization": f"Bearer {gateway.token}"}, timeout=10
    )


def warmed(caches: list[Registry], images: OriginImages) -> list[bool]:
    """Which caches hold every blob of the image."""
    return [all(cache.blob_on_disk(d) for d in images.single.blob_digests) for cache in caches]


@pytest.fixture
def three_caches(make_cache: MakeCache) -> list[Registry]:
    return [make_cache(), make_cache(), make_cache()]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"count": 2}, [True, True, False]),
        ({"percentage": 34}, [True, True, False]),  # 34% of 3 endpoints, rounded up: 2
        ({"percentage": 33}, [True, False, False]),
        ({"count": 200}, [True, True, True]),
    ],
)
def test_count_and_percentage_warm_the_first_endpoints_as_configured(
    make_gateway_thread: MakeGateway,
    three_caches: list[Registry],
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
    choice: dict[str, int],
    expected: list[bool],
) -> None:
    gateway = mirror_gateway(make_gateway_thread, tmp_path, [cache.url for cache in three_caches])

    created = preheat(
        gateway, f"{origin.url}/v2/library/app/manifests/1.0", harbor_token("library/app"), scope="all_peers", **choice
    )

    assert created.status_code == 200, created.text
    job = gateway.wait_job(created.json()["id"])
    assert job["state"] == "SUCCESS", job
    assert warmed(three_caches, images) == expected
    assert created.json()["args"] | choice == created.json()["args"], "the job shows what it was asked"


def test_ips_pick_endpoints_by_address_and_an_unknown_one_fails_before_anything_is_warmed(
    make_gateway_thread: MakeGateway,
    three_caches: list[Registry],
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    first, second, third = three_caches
    urls = [first.url.replace("127.0.0.1", "localhost"), second.url, third.url]
    gateway = mirror_gateway(make_gateway_thread, tmp_path, urls)
    url = f"{origin.url}/v2/library/app/manifests/1.0"

    created = preheat(gateway, url, harbor_token("library/app"), scope="all_seed_peers", ips=["localhost"])
    assert gateway.wait_job(created.json()["id"])["state"] == "SUCCESS"
    assert warmed(three_caches, images) == [True, False, False]

    missing = preheat(gateway, url, harbor_token("library/app"), scope="all_seed_peers", ips=["10.9.9.9"])
    job = gateway.wait_job(missing.json()["id"])
    assert job["state"] == "FAILURE"
    error = job["result"]["job_states"][0]["error"]
    assert "ips 10.9.9.9 name no endpoint of cluster edge" in error and "localhost" in error, error
    assert warmed(three_caches, images) == [True, False, False]


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A gateway in-process: what is refused is decided before any job exists, with no process boundary."""
    tmp = tmp_path_factory.mktemp("refusing")
    config = build_config(
        {
            "server": {"state_dir": str(tmp / "state")},
            "auth": {"mode": "none"},
            "registries": {"allow": ["127.0.0.1"]},
            "clusters": [
                {"id": 1, "name": "local", "adapter": "local", "path": str(tmp / "cache")},
                {"id": MIRROR, "name": "edge", "adapter": "mirror", "endpoints": [{"url": "http://127.0.0.1:1"}]},
            ],
        },
        source="test",
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


def create(client: TestClient, **args: Any) -> httpx.Response:
    ids = args.pop("scheduler_cluster_ids", [MIRROR])
    url = "http://127.0.0.1:5000/v2/library/app/manifests/1.0"
    body = {"type": "preheat", "args": {"type": "image", "url": url, **args}, "scheduler_cluster_ids": ids}
    return client.post("/oapi/v1/jobs", json=body)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"count": 0, "scope": "all_peers"}, "count must be between 1 and 200"),
        ({"count": 201, "scope": "all_peers"}, "count must be between 1 and 200"),
        ({"percentage": 101, "scope": "all_peers"}, "percentage must be between 1 and 100"),
        ({"concurrent_task_count": 101}, "concurrent_task_count must be between 1 and 100 (0 or absent: 8)"),
        ({"concurrent_peer_count": 1001}, "concurrent_peer_count must be between 1 and 1000 (0 or absent: 500)"),
        ({"count": 1, "ips": ["127.0.0.1"], "scope": "all_peers"}, "ips and count each choose endpoints"),
        ({"count": 1}, "count chooses which endpoints to warm, for scope all_seed_peers or all_peers"),
        ({"ips": ["bad address!"], "scope": "all_peers"}, "is not an IP address or host name"),
        ({"certificate_chain": ["not a certificate"]}, "certificate_chain[0] is neither PEM text nor base64"),
        (
            {"count": 1, "scope": "all_peers", "scheduler_cluster_ids": [1]},
            "cluster local (id 1, adapter local) gives count no meaning",
        ),
        (
            {"insecure_skip_verify": True, "scheduler_cluster_ids": [MIRROR]},
            "cluster edge (id 2, adapter mirror) gives insecure_skip_verify no meaning",
        ),
    ],
)
def test_out_of_range_and_meaningless_arguments_are_refused_with_a_message(
    refusing: TestClient, args: dict[str, Any], message: str
) -> None:
    response = create(refusing, **args)

    assert response.status_code == 422, response.text
    assert message in response.json()["errors"], response.text


def test_without_cluster_ids_an_argument_some_target_cannot_use_names_the_clusters_that_can(
    refusing: TestClient,
) -> None:
    response = create(refusing, scope="all_peers", count=1, scheduler_cluster_ids=None)

    assert response.status_code == 422
    assert "clusters that use them: 2 (edge)" in response.json()["errors"]
