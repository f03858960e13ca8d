"""The Open API's outside contract: shapes, bad input, limits, secrets, tokens and the CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.conftest import HarborToken, MakeGateway, OriginImages
from tests.gateway_process import REPO_ROOT, GatewayProcess, GatewayUnderTest, gateway_config, run_cli
from tests.harbor.driver import DragonflyDriver, DragonflyJobResponse
from tests.registry import Registry, free_port


def contract_config(tmp_path: Path) -> dict[str, Any]:
    clusters = [
        {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
        {"id": 2, "name": "eu-west", "adapter": "mirror", "endpoints": [{"url": "http://127.0.0.1:9"}]},
    ]
    return gateway_config(tmp_path, clusters=clusters, auth={"token_cache_seconds": 0})


@pytest.fixture
def gateway(make_gateway_thread: MakeGateway, tmp_path: Path) -> GatewayUnderTest:
    return make_gateway_thread(contract_config(tmp_path))


@pytest.fixture
def gateway_process(make_gateway: MakeGateway, tmp_path: Path) -> GatewayProcess:
    """A process: ``create_token`` runs the CLI's code in this process, and its store's ``open()`` (``_private``,
    ``os.close`` of the database file) drops every POSIX lock this process holds on it, a thread's gateway's
    too; the ``token list`` process then deletes the write-ahead log under that gateway, which never sees
    the revocation."""
    return make_gateway(contract_config(tmp_path))


def create(gateway: GatewayUnderTest, body: object, **kwargs: object) -> httpx.Response:
    with gateway.client() as client:
        if isinstance(body, (bytes, str)):
            return client.post("/oapi/v1/jobs", content=body, headers={"Content-Type": "application/json"}, **kwargs)  # type: ignore[arg-type]
        return client.post("/oapi/v1/jobs", json=body, **kwargs)  # type: ignore[arg-type]


def image_body(url: str, **args: object) -> dict[str, object]:
    return {"type": "preheat", "args": {"type": "image", "url": url, **args}}


VALID_URL = "http://127.0.0.1:5000/v2/library/app/manifests/1.0"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "Expected object"),
        ({"type": "preheat"}, "missing required field args"),
        ({"type": "preheat", "args": {"type": "image", "url": VALID_URL, "timeout": "10s"}}, "$.args.timeout"),
        (
            {"type": "preheat", "args": {"type": "image", "url": VALID_URL}, "scheduler_cluster_ids": ["1"]},
            "$.scheduler_cluster_ids[0]",
        ),
        ({"type": "sync_peers", "args": {"url": VALID_URL}}, "job type 'sync_peers' is not supported"),
        (image_body(VALID_URL, type="tarball"), "args.type 'tarball' is not supported"),
        (image_body(""), "args.url is empty"),
        (image_body("ftp://127.0.0.1/v2/a/manifests/b"), "not an http(s) URL"),
        (image_body("http://127.0.0.1:5000/library/app:1.0"), "not a manifest URL"),
        (image_body("http://evil.example.com/v2/library/app/manifests/1.0"), "add it to registries.allow"),
        (
            {**image_body(VALID_URL), "scheduler_cluster_ids": [1, 9]},
            "unknown cluster id 9: this gateway has clusters 1 (local), 2 (eu-west)",
        ),
        (
            image_body(VALID_URL, scope="everyone"),
            "scope 'everyone' is not one of single_seed_peer, all_seed_peers, all_peers",
        ),
        (image_body(VALID_URL, platform="amd64"), "is not os/arch"),
        (image_body(VALID_URL, timeout=-1), "timeout cannot be negative"),
    ],
)
def test_bad_requests_get_a_422_that_says_what_to_fix_and_create_nothing(
    gateway: GatewayUnderTest, body: object, words: str
) -> None:
    response = create(gateway, body)

    assert response.status_code == 422, response.text
    assert words in response.json()["errors"]
    with gateway.client() as client:
        assert client.get("/oapi/v1/jobs").json() == []


def test_bodies_over_the_limit_are_refused_before_being_read(gateway: GatewayUnderTest) -> None:
    response = create(gateway, b"{" + b" " * (2 << 20) + b"}")

    assert response.status_code == 413
    assert "server.max_body_bytes" in response.json()["errors"]


def test_unknown_routes_ids_and_methods_are_4xx_json(gateway: GatewayUnderTest) -> None:
    with gateway.client() as client:
        assert client.get("/oapi/v1/jobs/999").status_code == 404
        assert client.get("/oapi/v1/jobs/abc").status_code == 404
        assert client.put("/oapi/v1/jobs/1").status_code == 405
        assert client.get("/oapi/v1/jobs", params={"per_page": "x"}).status_code == 400
        assert client.get("/oapi/v1/jobs", params={"per_page": 100000}).status_code == 400
        assert client.get("/oapi/v1/jobs", params={"state": "RUNNING"}).status_code == 400
        assert all("errors" in r.json() for r in (client.get("/nope"), client.patch("/oapi/v1/jobs/1", content=b"{}")))


def test_credentials_are_required_everywhere_but_the_probes(gateway: GatewayUnderTest) -> None:
    with gateway.client(token=None) as anonymous, gateway.client(token="phg_wrong") as wrong:
        for path in ("/healthy", "/oapi/v1/jobs", "/oapi/v1/jobs/1", "/oapi/v1/clusters"):
            assert anonymous.get(path).status_code == 401
            assert wrong.get(path).status_code == 401
        assert anonymous.get("/livez").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
    assert DragonflyDriver(gateway.url, "OAUTH", {"token": "phg_wrong"}).health() is False
    assert DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token}).health() is True


def test_a_job_renders_exactly_as_harbor_decodes_it_with_every_secret_blanked(
    gateway: GatewayUnderTest, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    secret = harbor_token("library/app")
    body = {
        **image_body(
            f"{origin.url}/v2/library/app/manifests/1.0",
            headers={"Authorization": secret},
            username="robot",
            password="hunter2-secret",
        ),
        "scheduler_cluster_ids": [1],
    }

    created = create(gateway, body)
    job = gateway.wait_job(created.json()["id"])

    assert created.status_code == 200
    decoded = msgspec.json.decode(created.content, type=DragonflyJobResponse)
    assert isinstance(decoded.id, int) and decoded.state == "PENDING"
    assert re.fullmatch(r"group_[0-9a-f-]{36}", created.json()["task_id"])
    assert job["state"] == "SUCCESS"
    assert job["args"]["headers"] is None and job["args"]["password"] == "" and job["args"]["username"] == "robot"
    assert job["scheduler_clusters"][0]["id"] == 1 and job["scheduler_clusters"][0]["name"] == "local"
    with gateway.client() as client:
        listing = client.get("/oapi/v1/jobs", params={"state": "SUCCESS"})
    everything = created.text + json.dumps(job) + listing.text + gateway.logs()
    assert secret.split()[1] not in everything and "hunter2-secret" not in everything
    assert listing.headers["X-Total-Count"] == "1"


def test_jobs_list_filter_page_patch_and_delete(
    gateway: GatewayUnderTest, origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    header = {"Authorization": harbor_token("library/app")}
    with gateway.client() as client:
        ids = [
            create(
                gateway,
                {
                    **image_body(f"{origin.url}/v2/library/app/manifests/{tag}", headers=header),
                    "bio": tag,
                    "scheduler_cluster_ids": [1],
                },
            ).json()["id"]
            for tag in ("1.0", "missing-a", "missing-b")
        ]
        for job_id in ids:
            gateway.wait_job(job_id)

        page = client.get("/oapi/v1/jobs", params={"page": 1, "per_page": 2})
        failed = client.get("/oapi/v1/jobs", params={"state": "FAILURE"}).json()
        patched = client.patch(f"/oapi/v1/jobs/{ids[0]}", json={"bio": "warm before the release"})
        deleted = client.delete(f"/oapi/v1/jobs/{ids[1]}")

        assert [job["id"] for job in page.json()] == [ids[2], ids[1]]
        assert page.headers["X-Total-Count"] == "3" and 'rel="next"' in page.headers["Link"]
        assert {job["id"] for job in failed} == {ids[1], ids[2]}
        assert patched.json()["bio"] == "warm before the release"
        assert client.get(f"/oapi/v1/jobs/{ids[0]}").json()["bio"] == "warm before the release"
        assert deleted.status_code == 200 and client.get(f"/oapi/v1/jobs/{ids[1]}").status_code == 404


def test_creating_a_job_answers_at_once_whatever_the_registry_does(gateway: GatewayUnderTest) -> None:
    with socket.socket() as silent:  # the kernel accepts connections for it; nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v2/library/app/manifests/1.0"
        started = time.monotonic()
        response = create(gateway, {**image_body(url), "scheduler_cluster_ids": [1]})
        took = time.monotonic() - started

    assert response.status_code == 200
    assert took < 10.0  # a create that waited on the registry would wait out the 30 s read timeout


def test_clusters_list_names_adapters_and_health(gateway: GatewayUnderTest) -> None:
    with gateway.client() as client:
        clusters = {c["id"]: c for c in client.get("/oapi/v1/clusters").json()}
    assert clusters[1]["adapter"] == "local" and clusters[1]["health"]["reachable"] is True
    assert clusters[2]["adapter"] == "mirror" and clusters[2]["health"]["reachable"] is False
    assert "127.0.0.1" in clusters[2]["health"]["error"]


def test_tokens_are_created_listed_and_revoked_from_the_cli(gateway_process: GatewayProcess) -> None:
    token = gateway_process.create_token("ci-robot", "--expires", "90d")
    with gateway_process.client(token=token) as client:
        assert client.get("/healthy").status_code == 200

    listing = gateway_process.cli("token", "list", "--config", str(gateway_process.config_path)).stdout
    revoked = gateway_process.cli("token", "revoke", "ci-robot", "--config", str(gateway_process.config_path))
    duplicate = gateway_process.cli(
        "token", "create", "--config", str(gateway_process.config_path), "--name", "ci-robot", check=False
    )

    assert re.fullmatch(r"phg_[A-Za-z0-9_-]{43}", token)
    assert "ci-robot" in listing and "active" in listing and token not in listing
    assert revoked.returncode == 0
    with gateway_process.client(token=token) as client:
        response = client.get("/healthy")
    assert response.status_code == 401 and "revoked" in response.json()["errors"] and token not in response.text
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr


def test_check_config_prints_every_error_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "server: {listen: nowhere, colour: blue}\n"
        "registries: {allow: ['has space']}\n"
        "clusters:\n"
        "  - {id: 1, name: a, adapter: local}\n"
        "  - {id: 1, name: b, adapter: mirror, endpoints: [{url: 'not a url'}]}\n"
        "  - {id: 3, name: c, adapter: teleport}\n"
        "  - {id: 'four', name: d, adapter: local, path: /tmp/x}\n"
    )

    result = run_cli("check-config", str(config), check=False)

    assert result.returncode == 2
    lines = result.stdout.splitlines()
    for expected in (
        "server.colour: unknown key",
        "server.listen: 'nowhere' is not host:port",
        "registries.allow[0]:",
        "clusters[0].path: required key is missing",
        "clusters[1].id: 1 is already used by clusters[0]",
        "clusters[1].endpoints[0].url:",
        "clusters[2].adapter: unknown adapter 'teleport'",
        "clusters[3].id: expected int, got str",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    good = tmp_path / "good.yaml"
    good.write_text(f"clusters: [{{id: 1, name: local, adapter: local, path: {tmp_path}/cache}}]\n")
    assert run_cli("check-config", str(good)).stdout.startswith(f"{good}: OK")


def test_the_embedded_default_prints_a_token_once_and_serves_with_auth_on(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PREHEAT_GATEWAY_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREHEAT_GATEWAY_CONFIG", None)

    def serve() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        process.terminate()
        output, _ = process.communicate(timeout=15)
        return process, output

    _, first = serve()
    token = re.search(r"phg_[A-Za-z0-9_-]{43}", first)
    assert token is not None and "auth mode OAuth" in first
    assert (tmp_path / "state" / "gateway.db").exists() and (
        tmp_path / "state" / "secret.key"
    ).stat().st_mode & 0o777 == 0o600
    _, second = serve()
    assert "phg_" not in second, "the token is printed once, on first start only"


def test_served_under_a_path_prefix_behind_a_reverse_proxy(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path, server={"root_path": "/harbor"}))
    with gateway.client() as client:
        assert client.get("/healthy").status_code == 200  # the proxy forwards /harbor/... unchanged
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gateway.port}", headers={"Authorization": f"Bearer {gateway.token}"}
    ) as stripped:
        assert stripped.get("/oapi/v1/clusters").status_code == 200  # the proxy strips the prefix


def test_ids_too_large_for_any_store_are_simply_not_found(gateway: GatewayUnderTest) -> None:
    with gateway.client() as client:
        for method in ("GET", "PATCH", "DELETE"):
            response = client.request(method, "/oapi/v1/jobs/999999999999999999999999999999", json={"bio": "x"})
            assert response.status_code == 404, (method, response.text)
