"""The ``dragonfly`` adapter hands a cluster's share to an upstream Dragonfly manager (issue 4).

No Dragonfly manager can run here, so ``tests.fakes.dragonfly_manager`` stands in for one,
with the manager's exact wire shapes. Harbor's own driver (replayed by
``tests.harbor.driver``) talks to the gateway, so every answer is decoded as strictly as
Harbor decodes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeGateway
from tests.fakes.dragonfly_manager import FakeDragonflyManager
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.harbor.driver import FAIL, SUCCESS, DragonflyDriver
from tests.integration.test_adapters_files import run_job, state_of
from tests.registry import free_port

TOKEN = "df-personal-access-token-0123456789"
HARBOR_HEADER = {"Authorization": "Bearer harbor-minted-registry-token"}
MANIFEST = "http://127.0.0.1:5000/v2/library/app/manifests/1.0"


@pytest.fixture
def manager() -> Iterator[FakeDragonflyManager]:
    with FakeDragonflyManager(TOKEN) as fake:
        yield fake


def dragonfly_gateway(
    make_gateway_thread: MakeGateway, tmp_path: Path, manager_url: str, *, token: str = TOKEN, **options: Any
) -> GatewayUnderTest:
    cluster = {
        "id": 3,
        "name": "df-prod",
        "adapter": "dragonfly",
        "manager": manager_url,
        "token_env": "DF_TOKEN",
        "scheduler_cluster_ids": [1, 2],
        "poll_interval": "1s",
        **options,
    }
    return make_gateway_thread(gateway_config(tmp_path, clusters=[cluster]), env={"DF_TOKEN": token})


def harbor(gateway: GatewayUnderTest) -> DragonflyDriver:
    return DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})


def test_a_harbor_task_becomes_one_upstream_job_whose_rows_come_back(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url)

    status = harbor(gateway).run_task(MANIFEST, HARBOR_HEADER, scope="all_seed_peers")

    assert status.status == SUCCESS, status.error
    [created] = manager.created
    assert created["type"] == "preheat" and created["scheduler_cluster_ids"] == [1, 2]
    args = created["args"]
    assert (args["type"], args["url"], args["scope"], args["headers"]) == (
        "image",
        MANIFEST,
        "all_seed_peers",
        HARBOR_HEADER,
    )
    assert args["platform"] == "linux/amd64" and args["filtered_query_params"] == ""
    assert isinstance(args["timeout"], int) and 1700 * 10**9 < args["timeout"] <= 1800 * 10**9, "the time left, in ns"
    assert set(manager.authorizations) == {f"Bearer {TOKEN}"}
    rows = status.rows or []
    assert len(rows) == 4, "two blobs on a seed peer of each of two upstream scheduler clusters"
    assert {(row[1], row[2]) for row in rows} == {
        ("seed-1-0 (upstream cluster 1)", "10.0.1.5"),
        ("seed-2-0 (upstream cluster 2)", "10.0.2.5"),
    }
    assert {row[3] for row in rows} == {"3"}, "Harbor's Cluster ID column shows this gateway's cluster"
    assert all("/v2/library/app/blobs/sha256:" in row[0] for row in rows)


def test_an_upstream_failure_is_this_clusters_failure_quoting_the_upstream_errors(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    manager.mode = "fail"
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url)

    status = harbor(gateway).run_task(MANIFEST, HARBOR_HEADER)

    assert status.status == FAIL
    assert f"cluster df-prod (id 3): upstream Dragonfly job 1 on {manager.url} failed: " in status.error
    assert (
        "scheduler cluster 1: preheat failed: seed peer seed-1-0 could not download from the origin (503"
        in status.error
    )
    assert "scheduler cluster 2: preheat failed" in status.error


def test_a_refused_token_is_reported_as_such_without_the_token(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url, token="revoked-token-value")

    job = run_job(gateway, {"type": "image", "url": MANIFEST, "headers": HARBOR_HEADER})

    error = state_of(job, 3)["error"]
    assert job["state"] == "FAILURE"
    assert f"the Dragonfly manager at {manager.url} refused the token in $DF_TOKEN (401)" in error
    assert "personal access token with the job scope" in error
    assert "revoked-token-value" not in error and "revoked-token-value" not in gateway.logs()
    assert manager.created == []


def test_a_manager_that_is_down_fails_fast(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, down)
    started = time.monotonic()

    status = harbor(gateway).run_task(MANIFEST, HARBOR_HEADER)
    job = run_job(gateway, {"type": "image", "url": MANIFEST, "headers": HARBOR_HEADER})

    assert status.status == FAIL and status.error == "provider unhealthy", (
        "Harbor's health check fails the task at once"
    )
    error = state_of(job, 3)["error"]
    assert f"cannot reach the Dragonfly manager at {down}: connection refused" in error
    assert "clusters[0].manager" in error
    assert time.monotonic() - started < 15


def test_a_state_harbor_would_not_understand_is_reported_not_passed_on(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    manager.mode, manager.unknown_state = "unknown", "RUNNING"
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url)

    status = harbor(gateway).run_task(MANIFEST, HARBOR_HEADER)

    assert status.status == FAIL
    assert "upstream Dragonfly job 1" in status.error and "state 'RUNNING'" in status.error
    assert "Harbor would not understand" in status.error


def test_a_slow_job_is_polled_with_backoff_until_it_succeeds(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    manager.pending_seconds = 3.0
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url)

    status = harbor(gateway).run_task(MANIFEST, HARBOR_HEADER)

    assert status.status == SUCCESS, status.error
    assert 2 <= manager.polls[1] <= 6, f"polled {manager.polls[1]} times in 3 s: backoff, not a busy loop"


def test_a_job_still_pending_upstream_at_the_jobs_timeout_fails_in_bounded_time(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    manager.pending_seconds = 3600
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url)
    started = time.monotonic()

    job = run_job(gateway, {"type": "image", "url": MANIFEST, "headers": HARBOR_HEADER, "timeout": 4 * 10**9})

    assert time.monotonic() - started < 8
    error = state_of(job, 3)["error"]
    assert job["state"] == "FAILURE"
    assert f"upstream Dragonfly job 1 on {manager.url} was still PENDING after" in error
    assert "raise args.timeout" in error
    assert manager.created[0]["args"]["timeout"] <= 4 * 10**9


def test_a_manager_that_stops_answering_mid_job_is_reported_not_waited_for(
    make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    manager = FakeDragonflyManager(TOKEN, pending_seconds=3600)
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url, timeout="2s")
    with gateway.client() as client:
        job_id = client.post(
            "/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": MANIFEST}}
        ).json()["id"]
    deadline = time.monotonic() + 10
    while not manager.created and time.monotonic() < deadline:
        time.sleep(0.05)
    manager.close()

    job = gateway.wait_job(job_id, timeout=15)

    assert job["state"] == "FAILURE"
    assert f"the Dragonfly manager at {manager.url} stopped answering for more than 2s" in state_of(job, 3)["error"]


def test_file_preheats_are_forwarded_with_their_arguments(
    make_gateway_thread: MakeGateway,
    manager: FakeDragonflyManager,
    tmp_path: Path,
) -> None:
    gateway = dragonfly_gateway(make_gateway_thread, tmp_path, manager.url)
    urls = ["http://127.0.0.1:9000/models/a.bin?sig=1", "http://127.0.0.1:9000/models/b.bin?sig=2"]

    job = run_job(
        gateway,
        {
            "type": "file",
            "urls": urls,
            "tag": "v1",
            "application": "llm",
            "filtered_query_params": "sig&token",
            "piece_length": 4 << 20,
            "concurrent_count": 4,
            "count": 2,
            "scope": "all_peers",
            "concurrent_peer_count": 50,
            "platform": "linux/arm64",
        },
    )

    assert job["state"] == "SUCCESS", job
    args = manager.created[0]["args"]
    assert (args["type"], args["url"], args["urls"]) == ("file", "", urls)
    assert (args["tag"], args["application"], args["filtered_query_params"]) == ("v1", "llm", "sig&token")
    assert (args["piece_length"], args["concurrent_count"], args["count"], args["platform"]) == (
        4 << 20,
        4,
        2,
        "linux/arm64",
    )
    assert (args["scope"], args["concurrent_task_count"], args["concurrent_peer_count"]) == ("all_peers", 4, 50)
    # The manager gets the signed URLs; the job shows them without their signatures.
    assert {row["url"] for row in state_of(job, 3)["results"][0]["success_tasks"]} == {
        url.partition("?")[0] for url in urls
    }
