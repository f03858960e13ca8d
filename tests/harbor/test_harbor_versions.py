"""Every Harbor generation as its own code behaves: a failing preheat ends failed in seconds, and says why where Harbor can.

Harbor 2.1-2.7 end a legacy task only on ``FAIL``; no legacy Harbor shows ``errorMsg``, so what
the registry already says is answered by the create call, which every Harbor logs. Harbor 2.12+
turn each cluster's entry of a FAILURE job into one entry of an error list, so each entry says
what happened to its cluster. 2.12 sends no cluster ids. Times carry fractional seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages, require
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.harbor.driver import FAIL, SUCCESS, DragonflyDriver, HarborError, KrakenDriver, LegacyDragonflyDriver
from tests.registry import MissingPrerequisite, Registry, free_port

LEGACY_VERSIONS = ["2.1", "2.7", "2.8", "2.11"]
OPENAPI_VERSIONS = ["2.12", "2.13"]


def manifest_url(origin: Registry, reference: str = "1.0", repository: str = "library/app") -> str:
    return f"{origin.url}/v2/{repository}/manifests/{reference}"


def job_count(gateway: GatewayUnderTest) -> int:
    with gateway.client() as client:
        return int(client.get("/oapi/v1/jobs").headers["X-Total-Count"])


def harbor(version: str, gateway: GatewayUnderTest) -> DragonflyDriver:
    info = {"token": gateway.token}
    if version in LEGACY_VERSIONS:
        return LegacyDragonflyDriver(gateway.url, "OAUTH", info, version=version)
    return DragonflyDriver(gateway.url, "OAUTH", info, version=version)


def run(driver: DragonflyDriver, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
    if isinstance(driver, LegacyDragonflyDriver):
        return driver.run_task(url, headers, image="library/app", tag=url.rsplit("/", 1)[1], **kwargs)
    return driver.run_task(url, headers, **kwargs)


def error_list(shown: str) -> list[str]:
    """The messages of Harbor 2.12+'s logged error list."""
    return [entry["message"] for entry in json.loads(shown)["errors"]]


@pytest.fixture
def one_dead_cluster(make_gateway_thread: MakeGateway, tmp_path: Path) -> GatewayUnderTest:
    """A healthy local cluster and a mirror cluster whose only cache refuses connections: every job fails at run time."""
    clusters = [
        {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
        {"id": 2, "name": "dead", "adapter": "mirror", "endpoints": [{"url": f"http://127.0.0.1:{free_port()}"}]},
    ]
    return make_gateway_thread(gateway_config(tmp_path, clusters=clusters))


# --- a failure found while the job runs -----------------------------------------------------------


@pytest.mark.parametrize("version", LEGACY_VERSIONS + OPENAPI_VERSIONS)
def test_every_generation_ends_a_failing_preheat_as_failed_in_seconds(
    version: str, one_dead_cluster: GatewayUnderTest, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    driver = harbor(version, one_dead_cluster)
    started = time.monotonic()

    status = run(driver, manifest_url(origin), {"Authorization": harbor_token("library/app")}, timeout=30)

    assert status.status == FAIL
    assert time.monotonic() - started < 30
    assert "cluster dead (id 2): " in status.sent  # what the gateway answered
    if isinstance(driver, LegacyDragonflyDriver):
        assert status.error == ""  # Harbor 2.1-2.11 never show errorMsg: the console, API and log do
    else:
        messages = error_list(status.error)
        assert len(messages) == 2 and all(messages), messages  # no empty entry
        assert messages[0] == f"cluster local (id 1): succeeded, {len(images.single.blob_digests)} blobs warm"
        assert messages[1].startswith("cluster dead (id 2): ")


def test_a_legacy_failure_is_fail_the_one_status_harbor_2_1_ends_a_task_on(
    one_dead_cluster: GatewayUnderTest, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    driver = harbor("2.1", one_dead_cluster)
    task = driver.preheat(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}, image="library/app", tag="1.0"
    )
    one_dead_cluster.wait_job(int(task.task_id))

    with one_dead_cluster.client() as client:
        answer = client.get(f"/preheats/{task.task_id}").json()

    assert answer["status"] == "FAIL"  # FAILED would be polled by 2.1-2.7 until "status check timeout: 30m1s"
    assert "cluster dead (id 2)" in answer["errorMsg"]


# --- what the registry already says: answered by the create call ----------------------------------


@pytest.mark.parametrize("version", LEGACY_VERSIONS)
def test_a_missing_tag_is_the_create_calls_404_which_every_legacy_harbor_logs(
    version: str,
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    driver = harbor(version, gateway)

    status = run(driver, manifest_url(origin, "no-such-tag"), {"Authorization": harbor_token("library/app")})

    assert status.status == FAIL
    assert status.error.startswith(f'POST "{gateway.url}/preheats" error: 404 Not Found {{"errors":')
    assert "no job was created" in status.error and "library/app:no-such-tag not found" in status.error
    assert job_count(gateway) == 0
    assert "POST /preheats answered 404" in gateway.logs()


def test_a_refused_caller_token_is_the_create_calls_403(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))  # no registries.credentials to fall back on
    token = harbor_token("library/other")  # pull on another repository only

    with pytest.raises(HarborError) as refused:
        harbor("2.11", gateway).preheat(manifest_url(origin), {"Authorization": token}, image="library/app", tag="1.0")

    assert "error: 403 Forbidden" in str(refused.value) and "refused the token the caller sent" in str(refused.value)
    assert token.split()[1] not in str(refused.value) and token.split()[1] not in gateway.logs()
    assert job_count(gateway) == 0


def test_a_refused_caller_token_falls_back_to_configured_credentials_as_the_adapters_do(
    secured: Any, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    driver = LegacyDragonflyDriver(secured.url, "OAUTH", {"token": secured.process.token})

    status = driver.run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/other")}, image="library/app", tag="1.0"
    )

    assert status.status == SUCCESS, status.error  # the robot account of registries.credentials reads it


def test_the_open_api_and_kraken_accept_a_missing_tag_and_fail_the_job(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    """Harbor 2.12+ show the job's error; Kraken's notification is refused only for what is wrong with the event itself."""
    gateway = make_gateway_thread(gateway_config(tmp_path))
    url = manifest_url(origin, "no-such-tag")

    openapi = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token}).preheat(
        url, {"Authorization": harbor_token("library/app")}
    )
    kraken = KrakenDriver(gateway.url, "OAUTH", {"token": gateway.token})
    kraken.preheat(url, image="library/app", tag="no-such-tag")

    for job_id in (int(openapi.task_id), *kraken.job_ids()):
        assert gateway.wait_job(job_id)["state"] == "FAILURE"


# --- success: any | all --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["any", "all"])
def test_a_clusters_success_rule_decides_whether_a_failed_endpoint_fails_the_task(
    rule: str,
    make_gateway_thread: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    cache = make_cache()
    cluster = {
        "id": 1,
        "name": "edge",
        "adapter": "mirror",
        "success": rule,
        "endpoints": [{"url": cache.url}, {"url": f"http://127.0.0.1:{free_port()}"}],
    }
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=[cluster]))
    driver = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token}, version="2.12")

    status = driver.run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}, scope="all_seed_peers", timeout=60
    )

    if rule == "any":
        assert status.status == SUCCESS, status.error  # every blob reached one cache; the dead one is listed
        assert {row[4] for row in status.rows or []} == {"SUCCESS", "FAILURE"}
    else:
        assert status.status == FAIL
        (message,) = error_list(status.error)
        assert (
            message.startswith("cluster edge (id 1): ") and "every endpoint got every blob (success: all)" in message
        ), message


def test_an_unknown_success_rule_is_a_config_error(tmp_path: Path) -> None:
    from gateway.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="success"):
        build_config(
            {"clusters": [{"id": 1, "name": "a", "adapter": "local", "path": str(tmp_path), "success": "most"}]},
            source="test",
        )


# --- 2.12 without cluster ids -------------------------------------------------------------------


@pytest.mark.parametrize(("version", "warmed"), [("2.12", {"1", "2"}), ("2.13", {"2"})])
def test_harbor_2_12_sends_no_cluster_ids_so_its_policies_warm_every_cluster(
    version: str,
    warmed: set[str],
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    clusters = [
        {"id": i, "name": f"local-{i}", "adapter": "local", "path": str(tmp_path / f"cache-{i}")} for i in (1, 2)
    ]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=clusters))
    driver = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token}, version=version)

    status = driver.run_task(manifest_url(origin), {"Authorization": harbor_token("library/app")}, cluster_ids=[2])

    assert status.status == SUCCESS, status.error
    assert {row[3] for row in status.rows or []} == warmed


# --- times --------------------------------------------------------------------------------------

GO_DECODER = """package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

type openAPIJob struct {
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

type legacyInfo struct {
	StartTime  time.Time `json:"startTime"`
	FinishTime time.Time `json:"finishTime"`
}

func main() {
	var job openAPIJob
	var info legacyInfo
	for i, target := range []any{&job, &info} {
		data, err := os.ReadFile(os.Args[i+1])
		if err == nil {
			err = json.Unmarshal(data, target)
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Println(job.UpdatedAt.Sub(job.CreatedAt).Nanoseconds(), info.FinishTime.Sub(info.StartTime).Nanoseconds())
}
"""


def find_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise MissingPrerequisite("go not installed: apt-get install golang-go")
    return go


def test_times_have_fractional_seconds_and_decode_in_gos_time_type(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    go = require(find_go)
    gateway = make_gateway_thread(gateway_config(tmp_path))
    status = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token}).run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}
    )
    assert status.status == SUCCESS, status.error
    with gateway.client() as client:
        job = client.get(f"/oapi/v1/jobs/{status.task_id}").content
        info = client.get(f"/preheats/{status.task_id}").content
    (tmp_path / "job.json").write_bytes(job)
    (tmp_path / "info.json").write_bytes(info)
    (tmp_path / "decode.go").write_text(GO_DECODER)

    decoded = subprocess.run(
        [go, "run", str(tmp_path / "decode.go"), str(tmp_path / "job.json"), str(tmp_path / "info.json")],
        capture_output=True,
        text=True,
        timeout=180,
        env={"GOCACHE": str(tmp_path / "gocache"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )

    assert decoded.returncode == 0, decoded.stdout + decoded.stderr
    job_ns, legacy_ns = map(int, decoded.stdout.split())
    assert 0 < job_ns < 30 * 10**9 and 0 < legacy_ns < 30 * 10**9  # a true duration, not "duration: 0s"
    assert "." in json.loads(job)["updated_at"] and "." in json.loads(info)["finishTime"]
