"""The polling fast path answers exactly as the full stack would, and only when it may."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth import hash_token, new_token
from gateway.config import build_config


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path / "state")},
            "auth": {"custom_header": "X-Api-Key"},
            "registries": {"allow": ["127.0.0.1"]},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")}],
        },
        source="test",
    )
    with TestClient(create_app(config)) as test_client:
        token = new_token()
        test_client.portal.call(test_client.app.state.gateway.store.create_token, "t", hash_token(token), ["job"], None)  # type: ignore[union-attr,attr-defined]
        yield test_client, token


def finished_job(client: TestClient, token: str) -> int:
    body = {"type": "preheat", "args": {"type": "image", "url": "http://127.0.0.1:1/v2/app/manifests/1.0"}}
    job_id = client.post("/oapi/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"}).json()["id"]
    deadline = time.monotonic() + 30
    while (
        client.get(f"/oapi/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).json()["state"] == "PENDING"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return job_id


def test_a_cached_finished_job_is_served_identically_for_every_accepted_credential(
    client: tuple[TestClient, str],
) -> None:
    test_client, token = client
    job_id = finished_job(test_client, token)
    gateway = test_client.app.state.gateway  # type: ignore[attr-defined]
    assert ("openapi", job_id) in gateway.rendered

    credentials = [
        {"Authorization": f"Bearer {token}"},
        {"X-Api-Key": token},
        {"Authorization": "Basic " + base64.b64encode(f"password:{token}".encode()).decode()},
    ]
    bodies = {test_client.get(f"/oapi/v1/jobs/{job_id}", headers=h).content for h in credentials}
    gateway.rendered.clear()
    slow = test_client.get(f"/oapi/v1/jobs/{job_id}", headers=credentials[0]).content

    assert bodies == {slow}


def test_the_fast_path_never_lets_an_unverified_caller_through(client: tuple[TestClient, str]) -> None:
    test_client, token = client
    job_id = finished_job(test_client, token)
    for headers in (
        {},
        {"Authorization": "Bearer phg_not-a-token"},
        {"Authorization": f"Basic {base64.b64encode(f'{token}:x'.encode()).decode()}"},
        {"X-Api-Key": "phg_wrong"},
        {"Authorization": f"Token {token}"},
    ):
        response = test_client.get(f"/oapi/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 401, headers
        assert token not in response.text
