"""The ``proxy`` adapter warms HTTP forward proxies (dfdaemon on every node) by pulling through them (issue 4).

A blob or file is warmed by fetching its ORIGIN URL through the proxy, read to the end,
digest-checked for blobs; image manifests are resolved through the proxy too, with Harbor's
token. Scopes behave as for mirrors. ``tests.fakes.forward_proxy`` is a real forward proxy
that counts what it relays.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HarborToken, MakeGateway, OriginImages
from tests.fakes.file_origin import FileOrigin
from tests.fakes.forward_proxy import ForwardProxy
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.integration.test_adapters_files import run_job, state_of
from tests.registry import Registry, free_port


@pytest.fixture
def proxies() -> Iterator[list[ForwardProxy]]:
    with ForwardProxy() as first, ForwardProxy() as second:
        yield [first, second]


def proxy_gateway(
    make_gateway_thread: MakeGateway, tmp_path: Path, proxies: list[Any], env: dict[str, str] | None = None
) -> GatewayUnderTest:
    cluster = {"id": 1, "name": "node-proxies", "adapter": "proxy", "proxies": proxies}
    return make_gateway_thread(gateway_config(tmp_path, clusters=[cluster]), env=env)


def image_args(origin: Registry, harbor_token: HarborToken, **extra: Any) -> dict[str, Any]:
    return {
        "type": "image",
        "url": f"{origin.url}/v2/library/app/manifests/1.0",
        "headers": {"Authorization": harbor_token("library/app")},
        **extra,
    }


def test_single_seed_peer_pulls_each_blob_through_one_proxy(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    proxies: list[ForwardProxy],
    tmp_path: Path,
) -> None:
    gateway = proxy_gateway(make_gateway_thread, tmp_path, [proxy.url for proxy in proxies])

    job = run_job(gateway, image_args(origin, harbor_token))

    assert job["state"] == "SUCCESS", job
    for digest in images.single.blob_digests:
        assert sum(proxy.count(f"/blobs/{digest}") for proxy in proxies) == 1
    assert proxies[0].count("/manifests/1.0") == 1, "the manifest is resolved through the proxy too"
    rows = state_of(job, 1)["results"][0]["success_tasks"]
    assert {row["url"] for row in rows} == {
        f"{origin.url}/v2/library/app/blobs/{d}" for d in images.single.blob_digests
    }
    assert {row["hostname"] for row in rows} == {f"127.0.0.1:{proxies[0].port}"}, (
        "proxies sharing a host are told apart by port"
    )
    assert {row["ip"] for row in rows} == {"127.0.0.1"}


def test_all_peers_pulls_every_blob_through_every_proxy(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    proxies: list[ForwardProxy],
    tmp_path: Path,
) -> None:
    gateway = proxy_gateway(make_gateway_thread, tmp_path, [proxy.url for proxy in proxies])

    job = run_job(gateway, image_args(origin, harbor_token, scope="all_peers"))

    assert job["state"] == "SUCCESS", job
    for proxy in proxies:
        assert proxy.count("/manifests/1.0") >= 1
        for digest in images.single.blob_digests:
            assert proxy.count(f"/blobs/{digest}") == 1
    assert len(state_of(job, 1)["results"][0]["success_tasks"]) == 2 * len(images.single.blob_digests)


def test_a_dead_proxy_is_skipped_for_the_next_one(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    proxies: list[ForwardProxy],
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = proxy_gateway(make_gateway_thread, tmp_path, [dead, proxies[1].url])

    job = run_job(gateway, image_args(origin, harbor_token))

    assert job["state"] == "SUCCESS", job
    assert all(proxies[1].count(f"/blobs/{d}") == 1 for d in images.single.blob_digests)


def test_blobs_are_digest_checked_so_a_corrupting_proxy_fails_its_rows(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    with ForwardProxy(corrupt=True) as corrupt, ForwardProxy() as good:
        only_corrupt = proxy_gateway(make_gateway_thread, tmp_path / "a", [corrupt.url])
        failed = run_job(only_corrupt, image_args(origin, harbor_token))
        both = proxy_gateway(make_gateway_thread, tmp_path / "b", [corrupt.url, good.url])
        recovered = run_job(both, image_args(origin, harbor_token))

    assert failed["state"] == "FAILURE"
    assert "failed its digest check" in state_of(failed, 1)["error"]
    assert "reached no proxy of cluster node-proxies" in state_of(failed, 1)["error"]
    assert recovered["state"] == "SUCCESS", recovered
    result = state_of(recovered, 1)["results"][0]
    assert {row["hostname"] for row in result["failure_tasks"]} == {f"127.0.0.1:{corrupt.port}"}
    assert {row["hostname"] for row in result["success_tasks"]} == {f"127.0.0.1:{good.port}"}


def test_a_proxy_with_credentials_gets_them_from_the_environment(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    with ForwardProxy(credentials=("preheat", "proxy-pass-123")) as guarded:
        config = [{"url": guarded.url, "username": "preheat", "password_env": "NODE_PROXY_PASSWORD"}]
        gateway = proxy_gateway(make_gateway_thread, tmp_path, config, env={"NODE_PROXY_PASSWORD": "proxy-pass-123"})
        job = run_job(gateway, image_args(origin, harbor_token))

    assert job["state"] == "SUCCESS", job
    assert guarded.refused == 0
    assert "proxy-pass-123" not in gateway.logs()


def test_a_proxy_refusing_the_gateways_credentials_is_named_with_the_key_to_fix(
    make_gateway_thread: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    with ForwardProxy(credentials=("preheat", "right-password")) as guarded:
        config = [{"url": guarded.url, "username": "preheat", "password_env": "NODE_PROXY_PASSWORD"}]
        gateway = proxy_gateway(make_gateway_thread, tmp_path, config, env={"NODE_PROXY_PASSWORD": "wrong-password"})
        job = run_job(gateway, image_args(origin, harbor_token))

    assert job["state"] == "FAILURE"
    error = state_of(job, 1)["error"]
    assert "proxy 127.0.0.1 refused the gateway (407 Proxy Authentication Required)" in error
    assert "clusters[0].proxies[0]" in error and "wrong-password" not in error


def test_the_seed_file_example_warms_a_proxy(
    make_gateway_thread: MakeGateway, proxies: list[ForwardProxy], tmp_path: Path
) -> None:
    gateway = proxy_gateway(make_gateway_thread, tmp_path, [proxies[0].url])
    with FileOrigin({"model.bin": b"x" * 300_000}) as files:
        url = f"{files.url}/files/model.bin"

        job = run_job(gateway, {"type": "file", "url": url})
        again = run_job(gateway, {"type": "file", "url": f"{url}?X-Amz-Signature=other"})

        assert files.count("/files/model.bin") == 1

    assert job["state"] == again["state"] == "SUCCESS"
    assert proxies[0].requests == [url], "the proxy fetched the origin URL, once for both signed forms"
    [row] = state_of(job, 1)["results"][0]["success_tasks"]
    assert (row["url"], row["hostname"]) == (url, "127.0.0.1")


def test_file_redirects_are_followed_through_the_proxy_without_the_callers_headers(
    make_gateway_thread: MakeGateway,
    proxies: list[ForwardProxy],
    tmp_path: Path,
) -> None:
    gateway = proxy_gateway(make_gateway_thread, tmp_path, [proxy.url for proxy in proxies])
    with FileOrigin({"a.bin": b"a" * 1000}) as files, FileOrigin({"a.bin": b"a" * 1000}) as storage:
        files.redirects["a.bin"] = f"{storage.url}/files/a.bin?Signature=s3"

        job = run_job(
            gateway,
            {
                "type": "file",
                "url": f"{files.url}/redirect/a.bin",
                "headers": {"X-Origin-Token": "t0k"},
                "scope": "all_peers",
            },
        )

        assert job["state"] == "SUCCESS", job
        assert [headers.get("X-Origin-Token") for _, headers in files.requests] == ["t0k", "t0k"]
        assert [headers.get("X-Origin-Token") for _, headers in storage.requests] == [None, None]
    for proxy in proxies:
        assert proxy.count("/redirect/a.bin") == 1 and proxy.count("/files/a.bin?Signature=s3") == 1
