"""One store, three views: the legacy, Open API and Kraken dialects create and read the same jobs.

Also the dialect details Harbor depends on: the legacy status is always one of the four
strings every legacy Harbor handles (WAITING, RUNNING, SUCCESS, FAIL), Kraken turns only manifest pushes
into jobs, and a policy's ``cluster_ids`` reach the Open API and warm only those clusters.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HarborToken, MakeGateway, OriginImages
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.harbor.conftest import SecuredGateway, robot_credentials
from tests.harbor.driver import (
    FAIL,
    SUCCESS,
    DragonflyDriver,
    HarborError,
    KrakenDriver,
    LegacyDragonflyDriver,
    go_unmarshal,
)
from tests.harbor.test_conformance import cached
from tests.registry import Registry, wait_until

LEGACY_STATUSES = {"WAITING", "RUNNING", "SUCCESS", "FAIL"}


def manifest_url(origin: Registry, repository: str = "library/app", reference: str = "1.0") -> str:
    return f"{origin.url}/v2/{repository}/manifests/{reference}"


def legacy_status(gateway: GatewayUnderTest, job_id: int | str) -> dict[str, Any]:
    with gateway.client() as client:
        response = client.get(f"/preheats/{job_id}")
    assert response.status_code == 200, response.text
    return go_unmarshal(
        response.content, {"ID": str, "status": str, "startTime": str, "finishTime": str, "errorMsg": str}
    ) | {"raw": response.json()}


def openapi_job(gateway: GatewayUnderTest, job_id: int) -> dict[str, Any]:
    with gateway.client() as client:
        response = client.get(f"/oapi/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def listed_ids(gateway: GatewayUnderTest) -> set[int]:
    with gateway.client() as client:
        return {job["id"] for job in client.get("/oapi/v1/jobs", params={"per_page": 100}).json()}


def pat(gateway: GatewayUnderTest) -> dict[str, str]:
    return {"token": gateway.token}


# --- one store, three views -----------------------------------------------------------------


def test_a_legacy_job_is_the_same_job_in_the_open_api(
    secured: SecuredGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    harbor = LegacyDragonflyDriver(secured.url, "OAUTH", pat(secured.process))

    status = harbor.run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}, image="library/app", tag="1.0"
    )

    assert status.status == SUCCESS
    job = openapi_job(secured.process, int(status.task_id))
    assert job["source"] == "legacy" and job["state"] == "SUCCESS"
    assert job["args"]["url"] == manifest_url(origin) and job["args"]["headers"] is None
    assert int(status.task_id) in listed_ids(secured.process)


def test_an_open_api_job_reads_back_through_the_legacy_status_route(
    secured: SecuredGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    harbor = DragonflyDriver(secured.url, "OAUTH", pat(secured.process))

    status = harbor.run_task(manifest_url(origin), {"Authorization": harbor_token("library/app")})

    legacy = legacy_status(secured.process, status.task_id)
    assert legacy["ID"] == status.task_id and legacy["status"] == "SUCCESS" and legacy["errorMsg"] == ""


def test_a_kraken_job_reads_back_through_the_legacy_status_route_and_the_open_api(
    secured: SecuredGateway, origin: Registry, images: OriginImages
) -> None:
    harbor = KrakenDriver(secured.url, "OAUTH", pat(secured.process))

    status = harbor.run_task(manifest_url(origin), image="library/app", tag="1.0", digest=images.single.manifest_digest)

    assert status.status == SUCCESS  # Harbor stops here
    (job_id,) = harbor.job_ids()
    assert secured.process.wait_job(job_id)["state"] == "SUCCESS"
    legacy = legacy_status(secured.process, job_id)
    assert legacy["status"] == "SUCCESS" and legacy["finishTime"]
    assert openapi_job(secured.process, job_id)["source"] == "kraken"


def test_an_unknown_legacy_id_is_a_404_with_a_reason(secured: SecuredGateway) -> None:
    with secured.process.client() as client:
        for job_id in ("999999", "abc", "1" * 40):
            response = client.get(f"/preheats/{job_id}")
            assert response.status_code == 404 and "not found" in response.json()["errors"]


# --- the legacy dialect ------------------------------------------------------------------------


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """A 'registry' on 127.0.0.1 that accepts connections and never answers: work that runs until its deadline."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        server.close()


def test_legacy_status_walks_waiting_running_fail_and_is_never_anything_else(
    make_gateway_thread: MakeGateway, silent_registry: str, tmp_path: Path
) -> None:
    # A registry that never answers leaves the create-time manifest check undecided: the job is accepted after 3 s.
    gateway = make_gateway_thread(gateway_config(tmp_path, runner={"workers": 1, "default_timeout": "8s"}))
    harbor = LegacyDragonflyDriver(gateway.url, "OAUTH", pat(gateway))
    stuck = harbor.preheat(f"{silent_registry}/v2/library/slow/manifests/1.0", {}).task_id
    wait_until(lambda: legacy_status(gateway, stuck)["status"] == "RUNNING", timeout=10, message="the first job runs")

    queued = harbor.preheat(f"{silent_registry}/v2/library/slow/manifests/2.0", {}).task_id
    first_look = legacy_status(gateway, queued)

    assert first_look["status"] == "WAITING"  # the only worker is busy: no task of it started
    assert first_look["startTime"] and "finishTime" not in first_look["raw"]
    seen = set()
    deadline = time.monotonic() + 30
    while legacy_status(gateway, stuck)["status"] != "FAIL" or legacy_status(gateway, queued)["status"] != "FAIL":
        seen |= {legacy_status(gateway, stuck)["status"], legacy_status(gateway, queued)["status"]}
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert seen <= LEGACY_STATUSES
    failed = legacy_status(gateway, stuck)
    assert "timed out" in failed["errorMsg"] and failed["finishTime"]
    errors = [state["error"] for state in openapi_job(gateway, int(stuck))["result"]["job_states"]]
    assert failed["errorMsg"] == "; ".join(errors)  # the same actionable text the Open API shows
    assert harbor.check_progress(stuck).status == FAIL


def test_legacy_never_answers_208_even_for_an_image_preheated_before(
    secured: SecuredGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    harbor = LegacyDragonflyDriver(secured.url, "OAUTH", pat(secured.process))
    first = harbor.run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}, image="library/app", tag="1.0"
    )
    again = harbor.run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}, image="library/app", tag="1.0"
    )

    assert first.status == again.status == SUCCESS
    assert first.task_id != again.task_id and again.task_id
    assert 208 not in harbor.http_statuses


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        ({"type": "chart", "url": "http://127.0.0.1:5000/v2/a/manifests/b"}, "type 'chart' is not supported"),
        ({"type": "image", "url": ""}, "url is empty"),
        ({"type": "image"}, "url is empty"),
        ({"type": "image", "url": "http://127.0.0.1:5000/a:b"}, "not a manifest URL"),
        ({"type": "image", "url": 42}, "Expected str, got int"),
        (
            {"type": "image", "url": "http://127.0.0.1:5000/v2/a/manifests/b", "headers": {"Authorization": 7}},
            "headers.Authorization must be a string",
        ),
        (
            {"type": "image", "url": "http://127.0.0.1:5000/v2/a/manifests/b", "scope": "everyone"},
            "scope 'everyone' is not one of",
        ),
    ],
)
def test_a_bad_legacy_record_is_a_422_that_says_what_to_fix(record: Any, words: str, secured: SecuredGateway) -> None:
    with secured.process.client() as client:
        body = record if isinstance(record, bytes) else json.dumps(record).encode()
        response = client.post("/preheats", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert words in response.json()["errors"]


def test_legacy_keys_match_case_insensitively_and_null_means_absent_as_in_go(
    secured: SecuredGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    record = {
        "Type": "image",
        "URL": manifest_url(origin),
        "Headers": {"Authorization": harbor_token("library/app")},
        "Image": "library/app",
        "TAG": "1.0",
        "digest": None,
    }
    with secured.process.client() as client:
        response = client.post("/preheats", json=record)

    assert response.status_code == 200, response.text
    created = go_unmarshal(response.content, {"ID": str})
    assert list(response.json()) == ["ID"] and created["ID"].isdigit()
    assert secured.process.wait_job(int(created["ID"]))["state"] == "SUCCESS"


# --- the Kraken dialect ---------------------------------------------------------------------


def event(action: str, url: str, media_type: str = KrakenDriver.MEDIA_TYPE, **target: Any) -> dict[str, Any]:
    return {
        "Id": "e-" + action,
        "TimeStamp": "2026-11-27T10:00:00Z",
        "Action": action,
        "Target": {
            "MediaType": media_type,
            "Digest": "",
            "Repository": "library/app",
            "Url": url,
            "Tag": "1.0",
            **target,
        },
        "Request": None,
        "Actor": None,
    }


def test_kraken_turns_only_manifest_pushes_into_jobs(
    secured: SecuredGateway, origin: Registry, images: OriginImages
) -> None:
    harbor = KrakenDriver(secured.url, "OAUTH", pat(secured.process))
    blob = f"{origin.url}/v2/library/app/blobs/{images.single.config_digest}"
    notification = {
        "Events": [
            event("pull", manifest_url(origin)),
            event("delete", manifest_url(origin)),
            event("push", blob, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            event("push", manifest_url(origin)),
            event("push", manifest_url(origin, "library/multi", "2.0"), "application/vnd.oci.image.index.v1+json"),
        ]
    }

    answer = json.loads(harbor.notify(notification))

    assert answer["ignored"] == 3 and len(answer["jobs"]) == 2
    for job_id in answer["jobs"]:
        assert secured.process.wait_job(job_id)["state"] == "SUCCESS"


def test_kraken_accepts_a_registrys_own_lower_case_notification(
    secured: SecuredGateway, origin: Registry, images: OriginImages
) -> None:
    """Go decodes case-insensitively, so distribution's ``events``/``url`` shape is the same notification."""
    body = {
        "events": [
            {
                "id": "x",
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "repository": "library/app",
                    "url": manifest_url(origin, reference=images.single.manifest_digest),
                    "digest": images.single.manifest_digest,
                },
            }
        ]
    }
    with secured.process.client() as client:
        response = client.post("/registry/notifications", json=body)

    assert response.status_code == 200, response.text
    (job_id,) = response.json()["jobs"]
    assert secured.process.wait_job(job_id)["state"] == "SUCCESS"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not valid JSON"),
        ({"Events": {"Id": "x"}}, "Events must be a list"),
        ({"Events": ["push"]}, "Events[0] must be a JSON object"),
        (
            {"Events": [{"Action": "push", "Target": {"MediaType": KrakenDriver.MEDIA_TYPE, "Url": ""}}]},
            "Events[0].Target.Url is empty",
        ),
        (
            {"Events": [{"Action": "push", "Target": {"MediaType": KrakenDriver.MEDIA_TYPE, "Url": 5}}]},
            "Expected str, got int",
        ),
        ({"Events": [event("push", "http://127.0.0.1:5000/library/app:1.0")]}, "not a manifest URL"),
    ],
)
def test_a_bad_kraken_notification_is_a_422_and_creates_nothing(
    body: Any, words: str, make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    with gateway.client() as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post("/registry/notifications", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert words in response.json()["errors"]
    assert listed_ids(gateway) == set()


def test_a_kraken_event_for_a_registry_without_credentials_fails_naming_the_config_key(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))  # no registries.credentials
    harbor = KrakenDriver(gateway.url, "OAUTH", pat(gateway))

    status = harbor.run_task(manifest_url(origin), image="library/app", tag="1.0")

    assert status.status == SUCCESS  # what Harbor shows: it never looks again
    (job_id,) = harbor.job_ids()
    job = gateway.wait_job(job_id)
    assert job["state"] == "FAILURE"
    error = job["result"]["job_states"][0]["error"]
    assert f"registries.credentials for {origin.host}" in error, error
    assert legacy_status(gateway, job_id)["errorMsg"] == error
    assert "registries.credentials has no entry for " + origin.host in gateway.logs()


def test_a_kraken_event_uses_the_configured_robot_account(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, token_service: Any, tmp_path: Path
) -> None:
    from tests.conftest import ROBOT_PASSWORD, ROBOT_USER
    from tests.harbor.conftest import ROBOT_ENV

    gateway = make_gateway_thread(
        gateway_config(tmp_path, registries=robot_credentials(origin)), env={ROBOT_ENV: ROBOT_PASSWORD}
    )
    before = len(token_service.requests_by(ROBOT_USER))
    harbor = KrakenDriver(gateway.url, "OAUTH", pat(gateway))

    harbor.run_task(manifest_url(origin), image="library/app", tag="1.0")

    assert gateway.wait_job(harbor.job_ids()[0])["state"] == "SUCCESS"
    assert len(token_service.requests_by(ROBOT_USER)) > before
    assert ROBOT_PASSWORD not in gateway.logs()


# --- a policy's extra_attrs ------------------------------------------------------------------


def test_a_policy_restricted_to_cluster_2_warms_cluster_2_only(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    clusters = [
        {"id": 1, "name": "local-a", "adapter": "local", "path": str(tmp_path / "cache-1")},
        {"id": 2, "name": "local-b", "adapter": "local", "path": str(tmp_path / "cache-2")},
    ]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=clusters))
    harbor = DragonflyDriver(gateway.url, "OAUTH", pat(gateway))

    # extra_attrs {"scope": "all_peers", "cluster_ids": [2]} as Harbor 2.12+ sends them
    status = harbor.run_task(
        manifest_url(origin), {"Authorization": harbor_token("library/app")}, scope="all_peers", cluster_ids=[2]
    )

    assert status.status == SUCCESS, status.error
    assert {row[3] for row in status.rows or []} == {"2"}
    assert set(images.single.blob_digests) <= cached(tmp_path / "cache-2")  # the local cache may keep the manifests too
    assert not (tmp_path / "cache-1" / "blobs").exists() or cached(tmp_path / "cache-1") == set()
    job = openapi_job(gateway, int(status.task_id))
    assert [c["id"] for c in job["scheduler_clusters"]] == [2] and job["args"]["scope"] == "all_peers"


# --- behind a reverse proxy -------------------------------------------------------------------


@pytest.mark.parametrize("driver", [LegacyDragonflyDriver, KrakenDriver, DragonflyDriver])
def test_every_dialect_works_under_a_path_prefix(
    driver: type[DragonflyDriver],
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    from tests.conftest import ROBOT_PASSWORD
    from tests.harbor.conftest import ROBOT_ENV

    gateway = make_gateway_thread(
        gateway_config(tmp_path, server={"root_path": "/harbor"}, registries=robot_credentials(origin)),
        env={ROBOT_ENV: ROBOT_PASSWORD},
    )
    harbor = driver(
        f"http://127.0.0.1:{gateway.port}/harbor/", "OAUTH", pat(gateway)
    )  # as typed into Harbor, slash and all

    if isinstance(harbor, (LegacyDragonflyDriver, KrakenDriver)):
        status = harbor.run_task(
            manifest_url(origin), {"Authorization": harbor_token("library/app")}, image="library/app", tag="1.0"
        )
    else:
        status = harbor.run_task(manifest_url(origin), {"Authorization": harbor_token("library/app")})

    assert status.status == SUCCESS, status.error


def test_harbors_http_errors_carry_the_gateways_message(secured: SecuredGateway) -> None:
    harbor = LegacyDragonflyDriver(secured.url, "OAUTH", pat(secured.process))
    with pytest.raises(HarborError, match=r"error: 422 Unprocessable Entity .*not a manifest URL"):
        harbor.preheat("http://127.0.0.1:1/nothing", {})
    assert httpx.get(secured.url + "/preheats", timeout=5).status_code == 401
