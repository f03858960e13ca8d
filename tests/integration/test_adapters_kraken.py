"""The ``kraken`` adapter tells an upstream Kraken proxy about an image, as Harbor's Kraken driver does (issue 4).

Kraken offers no progress, so SUCCESS means "Kraken accepted the notification".
``tests.fakes.kraken_proxy`` records what it was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HarborToken, MakeGateway, OriginImages
from tests.fakes.kraken_proxy import FakeKrakenProxy
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.integration.test_adapters_files import run_job, state_of
from tests.registry import Registry, free_port

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture
def kraken() -> Iterator[FakeKrakenProxy]:
    with FakeKrakenProxy() as fake:
        yield fake


def kraken_gateway(
    make_gateway_thread: MakeGateway, tmp_path: Path, endpoint: str, env: dict[str, str] | None = None, **options: Any
) -> GatewayUnderTest:
    cluster = {"id": 4, "name": "kraken", "adapter": "kraken", "endpoint": endpoint, **options}
    return make_gateway_thread(gateway_config(tmp_path, clusters=[cluster]), env=env)


def test_a_preheat_posts_the_notification_harbors_kraken_driver_posts(
    make_gateway_thread: MakeGateway,
    kraken: FakeKrakenProxy,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    gateway = kraken_gateway(make_gateway_thread, tmp_path, kraken.url)
    url = f"{origin.url}/v2/library/app/manifests/1.0"

    job = run_job(gateway, {"type": "image", "url": url, "headers": {"Authorization": harbor_token("library/app")}})

    assert job["state"] == "SUCCESS", job
    [notification] = kraken.notifications
    [event] = notification["Events"]
    assert set(event) == {"Id", "TimeStamp", "Action", "Target", "Request", "Actor"}
    assert event["Action"] == "push" and event["Request"] is None and event["Actor"] is None
    assert event["Target"] == {
        "MediaType": DOCKER_MANIFEST,
        "Digest": images.single.manifest_digest,
        "Repository": "library/app",
        "Url": url,
        "Tag": "1.0",
    }
    [row] = state_of(job, 4)["results"][0]["success_tasks"]
    assert (row["url"], row["hostname"], row["ip"]) == (url, f"127.0.0.1:{kraken.port}", "127.0.0.1")
    assert "SUCCESS means Kraken accepted" in row["description"], "honest: Kraken gives no progress"


def test_a_manifest_named_by_digest_needs_no_read_from_the_origin(
    make_gateway_thread: MakeGateway, kraken: FakeKrakenProxy, tmp_path: Path
) -> None:
    gateway = kraken_gateway(make_gateway_thread, tmp_path, kraken.url)
    digest = "sha256:" + "4b" * 32
    url = f"http://127.0.0.1:{free_port()}/v2/library/alpine/manifests/{digest}"

    job = run_job(gateway, {"type": "image", "url": url})

    assert job["state"] == "SUCCESS", job
    assert kraken.notifications[0]["Events"][0]["Target"]["Digest"] == digest
    assert kraken.notifications[0]["Events"][0]["Target"]["Tag"] == ""


def test_the_auth_header_comes_from_the_environment(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    secret = "Bearer kraken-notify-secret"
    with FakeKrakenProxy(required_auth=secret) as guarded:
        accepted = kraken_gateway(
            make_gateway_thread, tmp_path / "a", guarded.url, env={"KRAKEN_AUTH": secret}, auth_env="KRAKEN_AUTH"
        )
        refused = kraken_gateway(make_gateway_thread, tmp_path / "b", guarded.url)
        url = "http://127.0.0.1:5000/v2/library/alpine/manifests/sha256:" + "4b" * 32

        ok = run_job(accepted, {"type": "image", "url": url})
        no = run_job(refused, {"type": "image", "url": url})

    assert ok["state"] == "SUCCESS", ok
    assert no["state"] == "FAILURE"
    error = state_of(no, 4)["error"]
    assert f"Kraken at {guarded.url} refused the notification (401)" in error and "clusters[0].auth_env" in error
    assert "kraken-notify-secret" not in state_of(ok, 4)["results"][0]["success_tasks"][0]["description"]
    assert "kraken-notify-secret" not in accepted.logs()


def test_kraken_refusing_or_down_is_this_clusters_failure(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    url = "http://127.0.0.1:5000/v2/library/alpine/manifests/sha256:" + "4b" * 32
    with FakeKrakenProxy(status=503) as broken:
        failing = run_job(
            kraken_gateway(make_gateway_thread, tmp_path / "a", broken.url), {"type": "image", "url": url}
        )
    down_url = f"http://127.0.0.1:{free_port()}"
    down = run_job(kraken_gateway(make_gateway_thread, tmp_path / "b", down_url), {"type": "image", "url": url})

    assert failing["state"] == down["state"] == "FAILURE"
    assert "did not accept the notification for library/alpine@sha256:" in state_of(failing, 4)["error"]
    assert "503: kraken: build-index unavailable" in state_of(failing, 4)["error"]
    assert f"cannot reach Kraken at {down_url}: connection refused" in state_of(down, 4)["error"]


def test_files_are_refused_per_cluster(
    make_gateway_thread: MakeGateway, kraken: FakeKrakenProxy, tmp_path: Path
) -> None:
    gateway = kraken_gateway(make_gateway_thread, tmp_path, kraken.url)

    job = run_job(gateway, {"type": "file", "url": "http://127.0.0.1:9000/models/a.bin"})

    assert job["state"] == "FAILURE"
    assert "Kraken preheats images only" in state_of(job, 4)["error"]
    assert kraken.notifications == []
