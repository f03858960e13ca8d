"""Polling a job's status: the ordinary stack on every poll, and replies never more than a second old.

A poll of a pending or finished job passes through the same middleware as any request (its
``X-Request-Id``, its authentication, its one metrics sample). Replies may be served from a
per-process cache (``gateway.statuscache``), so what is specified here is how fresh they are:
a PATCH or DELETE is seen at once on the replica that took it and within about a second on
another, and progress saved by any replica is in every reply a second later.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth import hash_token, new_token
from gateway.config import build_config
from tests.conftest import HarborToken, MakeGateway, OriginImages, require
from tests.gateway_process import GatewayProcess, gateway_config
from tests.postgres import find_postgres, fresh_database
from tests.registry import Registry, free_port, wait_until
from tests.tcprelay import TcpRelay

ABOUT_A_SECOND = 1.5
"""How soon another replica's change must show: the one-second lifetime, with room for a slow machine."""
STATUS_ROUTE = "/oapi/v1/jobs/{id:int}"


class Poller:
    """An in-process gateway with a token, a pending job (its registry held shut) and a finished one."""

    def __init__(self, client: TestClient, token: str, frozen: TcpRelay) -> None:
        self.client = client
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"}
        self.pending = self.create(f"http://{frozen.host}/v2/app/manifests/1.0")
        self.finished = self.create(f"http://127.0.0.1:{free_port()}/v2/app/manifests/1.0")
        wait_until(
            lambda: self.get(self.finished).json()["state"] != "PENDING", message="the job on a closed port ends"
        )
        assert self.get(self.pending).json()["state"] == "PENDING"

    def create(self, url: str) -> int:
        body = {"type": "preheat", "args": {"type": "image", "url": url}}
        return int(self.client.post("/oapi/v1/jobs", json=body, headers=self.auth).json()["id"])

    def get(self, job_id: int, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.get(f"/oapi/v1/jobs/{job_id}", headers=self.auth if headers is None else headers)

    def store(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run a store call on the app's event loop, as another replica's write would land."""
        return self.client.portal.call(call, *args)  # type: ignore[union-attr]


@pytest.fixture
def poller(tmp_path: Path) -> Iterator[Poller]:
    frozen = TcpRelay("127.0.0.1", free_port())
    frozen.pause()  # connections are accepted and never answered: the job stays pending
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path / "state")},
            "auth": {"custom_header": "X-Api-Key"},
            "registries": {"allow": ["127.0.0.1"]},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")}],
        },
        source="test",
    )
    with TestClient(create_app(config)) as client:
        token = new_token()
        store = client.app.state.gateway.store  # type: ignore[attr-defined]
        client.portal.call(functools.partial(store.create_token, "t", hash_token(token), ["job"], None))  # type: ignore[union-attr]
        yield Poller(client, token, frozen)
        frozen.close()


def test_every_poll_of_a_pending_or_finished_job_carries_a_request_id(poller: Poller) -> None:
    for job_id in (poller.pending, poller.finished):
        ids = {poller.get(job_id).headers["X-Request-Id"] for _ in range(3)}
        assert len(ids) == 3, "each poll has an id of its own"
        echoed = poller.get(job_id, {**poller.auth, "X-Request-Id": "harbor-poll-7"})
        assert echoed.headers["X-Request-Id"] == "harbor-poll-7"


def test_every_poll_is_counted_once_under_its_route(poller: Poller) -> None:
    def polls_counted() -> float:
        families = text_string_to_metric_families(poller.client.get("/metrics").text)
        return sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "preheat_gateway_http_request_duration_seconds_count"
            and sample.labels == {"route": STATUS_ROUTE, "method": "GET", "status": "200"}
        )

    before = polls_counted()
    for job_id in (poller.pending, poller.finished) * 5:
        assert poller.get(job_id).status_code == 200

    assert polls_counted() - before == 10


def test_every_accepted_credential_gets_the_same_reply(poller: Poller) -> None:
    token = poller.token
    credentials = [
        {"Authorization": f"Bearer {token}"},
        {"X-Api-Key": token},
        {"Authorization": "Basic " + base64.b64encode(f"password:{token}".encode()).decode()},
    ]
    for job_id in (poller.pending, poller.finished):
        replies = {poller.get(job_id, headers).content for headers in credentials}
        assert len(replies) == 1


def test_no_poll_gets_through_without_a_verified_credential(poller: Poller) -> None:
    token = poller.token
    for job_id in (poller.pending, poller.finished):
        assert poller.get(job_id).status_code == 200  # a reply is at hand: it must not leak to these
        for headers in (
            {},
            {"Authorization": "Bearer phg_not-a-token"},
            {"Authorization": f"Basic {base64.b64encode(f'{token}:x'.encode()).decode()}"},
            {"X-Api-Key": "phg_wrong"},
            {"Authorization": f"Token {token}"},
        ):
            response = poller.get(job_id, headers)
            assert response.status_code == 401, headers
            assert token not in response.text
            assert "X-Request-Id" in response.headers


def test_a_job_that_does_not_exist_is_a_404_in_each_dialects_words(poller: Poller) -> None:
    def error(path: str) -> tuple[int, str]:
        response = poller.client.get(path, headers=poller.auth)
        return response.status_code, response.json()["errors"]

    assert error("/oapi/v1/jobs/999999") == (404, "job 999999 not found")
    assert error(f"/oapi/v1/jobs/{2**64}") == (404, f"job {str(2**64)[:30]} not found")
    assert error("/preheats/999999") == (404, "preheat task 999999 not found")
    assert error("/preheats/abc") == (
        404,
        "preheat task 'abc' not found: ids are the numbers POST /preheats returned",
    )


def test_a_head_of_a_status_has_its_headers_and_no_body(poller: Poller) -> None:
    for path in (f"/oapi/v1/jobs/{poller.pending}", f"/preheats/{poller.finished}"):
        got = poller.client.get(path, headers=poller.auth)
        head = poller.client.head(path, headers=poller.auth)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        assert head.headers["content-type"] == got.headers["content-type"] == "application/json"


def test_a_patch_or_delete_is_seen_at_once_by_the_replica_that_took_it(poller: Poller) -> None:
    for job_id in (poller.pending, poller.finished):
        assert poller.get(job_id).json()["bio"] == ""
        assert poller.client.get(f"/preheats/{job_id}", headers=poller.auth).status_code == 200

        poller.client.patch(f"/oapi/v1/jobs/{job_id}", json={"bio": "nightly"}, headers=poller.auth)
        assert poller.get(job_id).json()["bio"] == "nightly"

        assert poller.client.delete(f"/oapi/v1/jobs/{job_id}", headers=poller.auth).status_code == 200
        assert poller.get(job_id).status_code == 404
        assert poller.client.get(f"/preheats/{job_id}", headers=poller.auth).status_code == 404


def test_a_change_written_elsewhere_shows_within_a_second(poller: Poller) -> None:
    """Another replica's PATCH or DELETE, or the runner's progress save, reaches the store only."""
    gateway = poller.client.app.state.gateway  # type: ignore[attr-defined]
    for job_id in (poller.pending, poller.finished):
        assert poller.get(job_id).json()["bio"] == ""
        poller.store(gateway.store.set_bio, job_id, "set by another replica")
        time.sleep(1.05)
        assert poller.get(job_id).json()["bio"] == "set by another replica"

        poller.store(gateway.store.delete_job, job_id)
        time.sleep(1.05)
        assert poller.get(job_id).status_code == 404


# --- several replicas on one PostgreSQL -------------------------------------------------------------------


@pytest.fixture
def store_url() -> Iterator[str]:
    admin = require(find_postgres)
    with fresh_database(admin) as url:
        yield url


def replica(
    make_gateway: MakeGateway, tmp_path: Path, store_url: str, name: str, token: str | None = None
) -> GatewayProcess:
    config = gateway_config(
        tmp_path,
        clusters=[{"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / f"cache-{name}")}],
        store={"url": store_url, "secret_key_file": str(tmp_path / "shared-secret.key")},
        runner={"lease_seconds": 3, "poll_seconds": 0.5, "min_transfer_bytes_per_second": 0},
    )
    process = make_gateway(config, start=False)
    if token is not None:
        process._token = token  # one token, created once in the shared store
    return process.start()


def seconds_until(condition: Callable[[], bool], limit: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "never happened"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_patch_or_delete_on_one_replica_is_seen_on_the_other_within_a_second(
    make_gateway: MakeGateway, store_url: str, tmp_path: Path
) -> None:
    frozen = TcpRelay("127.0.0.1", free_port())
    frozen.pause()
    a = replica(make_gateway, tmp_path, store_url, "a")
    b = replica(make_gateway, tmp_path, store_url, "b", a.token)
    with a.client() as on_a, b.client() as on_b:
        pending = created(on_a, f"http://{frozen.host}/v2/app/manifests/1.0")
        finished = created(on_a, f"http://127.0.0.1:{free_port()}/v2/app/manifests/1.0")
        b.wait_job(finished)
        for job_id in (pending, finished):
            seen_at_once_here_and_within_a_second_there(on_a, on_b, f"/oapi/v1/jobs/{job_id}")
    frozen.close()


def created(client: httpx.Client, url: str) -> int:
    return int(
        client.post("/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": url}}).json()["id"]
    )


def seen_at_once_here_and_within_a_second_there(here: httpx.Client, there: httpx.Client, path: str) -> None:
    assert there.get(path).json()["bio"] == ""  # the other replica holds this reply now

    here.patch(path, json={"bio": "nightly"})
    assert here.get(path).json()["bio"] == "nightly"
    assert seconds_until(lambda: there.get(path).json()["bio"] == "nightly") < ABOUT_A_SECOND

    assert here.delete(path).status_code == 200
    assert here.get(path).status_code == 404
    assert seconds_until(lambda: there.get(path).status_code == 404) < ABOUT_A_SECOND


def test_progress_saved_by_one_replica_is_in_the_other_replicas_replies_a_second_later(
    make_gateway: MakeGateway,
    store_url: str,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    slow = TcpRelay("127.0.0.1", origin.port, rate_per_connection=16 << 10)
    a = replica(make_gateway, tmp_path, store_url, "a")
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{slow.url}/v2/library/app/manifests/1.0",
            "headers": {"Authorization": harbor_token("library/app")},
        },
    }
    job_id = a.client().post("/oapi/v1/jobs", json=body).json()["id"]
    with psycopg.connect(store_url, autocommit=True) as database:

        def saved() -> int:
            """Bytes the store holds as transferred: the last progress save, whoever made it."""
            row = database.execute("SELECT progress FROM tasks WHERE job_id = %s", (job_id,)).fetchone()
            return int(json.loads(row[0]).get("bytes_transferred", 0)) if row and row[0] else 0

        wait_until(lambda: saved() > 0, message="A saving progress")  # A holds the task
        b = replica(make_gateway, tmp_path, store_url, "b", a.token)
        with b.client() as on_b:

            def replied() -> int:
                job = on_b.get(f"/oapi/v1/jobs/{job_id}").json()
                assert job["state"] == "PENDING", job
                return int(job["result"]["job_states"][0]["progress"].get("bytes_transferred", 0))

            first = saved()
            for _ in range(4):
                replied()  # B may hold this reply for up to a second
                stored = saved()
                time.sleep(1.05)
                assert replied() >= stored
            assert saved() > first, "progress moved while B was polled"
    slow.close()
