"""DNS rebinding (issue 17, section 4): the policy is decided on the address actually connected to.

A hostile name answers a public address when the gateway checks it (at job creation, at a
redirect, when a registry names its token service) and 127.0.0.1 when the gateway connects.
Each test runs a real gateway process, its hostile servers and a scripted DNS server inside a
network namespace of its own (:mod:`tests.security.netns`): the gateway resolves with the
system resolver, as in production, and nothing can leave the namespace. Each asserts that the
loopback service behind the rebinding name never received a request (nor a credential), that
the job fails fast with a message saying why and which key would allow it, and that the
gateway survived (RSS, /healthy, no traceback).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import gateway_process
from tests.conftest import MakeGateway, require
from tests.gateway_process import GatewayProcess, gateway_config
from tests.security.hostile import Exchange, HostileServer, image_manifest, sha256, survival
from tests.security.netns import LOOPBACK, PUBLIC, ScriptedDNS, network_namespace

CONNECT_TIME = "resolved to 127.0.0.1, a non-public address, at connect time"
FAILS_WITHIN_SECONDS = 15.0
"""Retries of a refused connection included (the registry client treats a ConnectError as transient)."""
ROBOT_PASSWORD = "robot-password-for-the-mirror-only"


@dataclass
class World:
    """The namespace the test lives in: its DNS server and a gateway factory running inside it."""

    dns: ScriptedDNS
    make_gateway: MakeGateway
    tmp: Path


@pytest.fixture
def namespace(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with ExitStack() as stack:
        name = require(lambda: stack.enter_context(network_namespace()))
        # ``ip netns exec`` gives the gateway the namespace's resolv.conf (our DNS server).
        real = gateway_process.gateway_command
        monkeypatch.setattr(
            gateway_process, "gateway_command", lambda *args: ["ip", "netns", "exec", name, *real(*args)]
        )
        yield name


@pytest.fixture
def world(namespace: str, make_gateway: MakeGateway, tmp_path: Path) -> Iterator[World]:
    """Set up in this order so that the gateways are killed before the namespace goes."""
    dns = ScriptedDNS()
    try:
        yield World(dns, make_gateway, tmp_path)
    finally:
        dns.close()


def run_job(
    gateway: GatewayProcess, args: dict[str, Any], cluster_ids: list[int] | None = None
) -> tuple[dict[str, Any], float]:
    """Create a job through the Open API and wait for its end; returns it and the seconds it took."""
    started = time.monotonic()
    with gateway.client() as client:
        response = client.post(
            "/oapi/v1/jobs", json={"type": "preheat", "args": args, "scheduler_cluster_ids": cluster_ids}
        )
    assert response.status_code == 200, response.text
    job = gateway.wait_job(response.json()["id"], timeout=FAILS_WITHIN_SECONDS + 15)
    return job, time.monotonic() - started


def answering(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Callable[[Exchange], None]:
    return lambda exchange: exchange.send(status, body, headers)


LOOPBACK_SECRET = (
    b'{"errors": [{"code": "LOOPBACK_ONLY", "message": "internal admin service: you should not see this"}]}'
)


def test_a_manifest_url_whose_name_rebinds_to_loopback_is_never_fetched(world: World) -> None:
    internal = HostileServer(answering(404, LOOPBACK_SECRET, {"Content-Type": "application/json"}))
    world.dns.script("registry.rebind.test", [PUBLIC, LOOPBACK])  # public when checked, loopback ever after
    gateway = world.make_gateway(gateway_config(world.tmp, allow=[]))
    url = f"http://registry.rebind.test:{internal.port}/v2/library/app/manifests/1.0"

    with survival(gateway) as watch:
        job, seconds = run_job(
            gateway, {"type": "image", "url": url, "headers": {"Authorization": "Bearer harbor-token"}}
        )
    internal.close()

    text = json.dumps(job)
    assert internal.received == [], "the loopback service behind the name received a request"
    assert job["state"] == "FAILURE", text
    assert f"host registry.rebind.test:{internal.port} {CONNECT_TIME}" in text and "registries.allow" in text, text
    assert "LOOPBACK_ONLY" not in text and "should not see" not in text
    assert world.dns.asked["registry.rebind.test"] >= 2, "checked at creation, then looked up again to connect"
    assert seconds < FAILS_WITHIN_SECONDS
    watch.assert_survived()


def test_a_redirect_to_a_name_that_rebinds_to_loopback_is_not_followed(world: World) -> None:
    config = b'{"architecture": "amd64", "os": "linux"}'
    manifest = image_manifest(config, [])
    internal = HostileServer(answering(200, config))

    def registry_answer(exchange: Exchange) -> None:
        if "/manifests/" in exchange.path:
            exchange.send(200, manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        else:  # the blob lives "in object storage" on a name that rebinds
            exchange.send(
                307,
                headers={"Location": f"http://blobs.rebind.test:{internal.port}/{sha256(config)}?X-Amz-Signature=x"},
            )

    registry = HostileServer(registry_answer)
    world.dns.script(
        "blobs.rebind.test", [PUBLIC, LOOPBACK], cycle=True
    )  # public at every check, loopback at every connect
    gateway = world.make_gateway(gateway_config(world.tmp, allow=[LOOPBACK]))

    with survival(gateway) as watch:
        job, seconds = run_job(gateway, {"type": "image", "url": f"{registry.url}/v2/library/app/manifests/1.0"})
    internal.close()
    registry.close()

    text = json.dumps(job)
    assert internal.received == [], "the redirect was followed to the loopback service"
    assert job["state"] == "FAILURE", text
    assert f"host blobs.rebind.test:{internal.port} {CONNECT_TIME}" in text, text
    assert any("/blobs/" in r.path for r in registry.received), "the registry was asked for the blob and redirected"
    assert world.dns.asked["blobs.rebind.test"] >= 2
    assert seconds < FAILS_WITHIN_SECONDS
    watch.assert_survived()


def test_a_token_service_on_a_name_that_rebinds_to_loopback_receives_no_credentials(world: World) -> None:
    tokens = HostileServer(lambda exchange: exchange.json(200, {"token": "stolen-token", "expires_in": 300}))
    realm = f"http://auth.rebind.test:{tokens.port}/token"
    mirror = HostileServer(answering(401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}",service="mirror"'}))
    world.dns.script("auth.rebind.test", [PUBLIC, LOOPBACK], cycle=True)
    world.dns.script("origin.example.test", [PUBLIC])  # the image's origin: checked at creation, never contacted
    gateway = world.make_gateway(
        gateway_config(
            world.tmp,
            allow=[],
            clusters=[
                {
                    "id": 1,
                    "name": "mirrors",
                    "adapter": "mirror",
                    "endpoints": [{"url": mirror.url, "username": "robot$preheat", "password_env": "MIRROR_PASSWORD"}],
                }
            ],
        ),
        env={"MIRROR_PASSWORD": ROBOT_PASSWORD},
    )

    with survival(gateway) as watch:
        job, seconds = run_job(
            gateway, {"type": "image", "url": "http://origin.example.test/v2/library/app/manifests/1.0"}
        )
    tokens.close()
    mirror.close()

    text = json.dumps(job)
    assert tokens.authorizations() == [] and tokens.received == [], (
        "the token service on the rebinding name was contacted"
    )
    assert job["state"] == "FAILURE", text
    assert f"host auth.rebind.test:{tokens.port} {CONNECT_TIME}" in text, text
    assert mirror.received, "the configured mirror on loopback was reached (operator endpoints may be anywhere)"
    assert not any("Basic" in value for value in mirror.authorizations()), (
        "the mirror itself is never sent the password"
    )
    assert ROBOT_PASSWORD not in text and "stolen-token" not in text
    assert seconds < FAILS_WITHIN_SECONDS
    watch.assert_survived()


def test_a_file_url_whose_name_rebinds_to_loopback_is_never_fetched(world: World) -> None:
    internal = HostileServer(answering(200, b"internal file"))
    world.dns.script("files.rebind.test", [PUBLIC, LOOPBACK])
    gateway = world.make_gateway(gateway_config(world.tmp, allow=[]))

    with survival(gateway) as watch:
        job, seconds = run_job(gateway, {"type": "file", "url": f"http://files.rebind.test:{internal.port}/model.bin"})
    internal.close()

    text = json.dumps(job)
    assert internal.received == [], "the loopback service behind the name was fetched from"
    assert job["state"] == "FAILURE", text
    assert f"host files.rebind.test:{internal.port} {CONNECT_TIME}" in text, text
    assert not list((world.tmp / "cache").rglob("*.bin")) and "internal file" not in text
    assert seconds < FAILS_WITHIN_SECONDS
    watch.assert_survived()


def test_a_registry_allowed_by_name_may_live_on_a_private_address(world: World) -> None:
    """The operator's own internal registry, listed in registries.allow, is not a rebinding attack."""
    config = b'{"architecture": "amd64", "os": "linux"}'
    manifest = image_manifest(config, [])

    def registry_answer(exchange: Exchange) -> None:
        if "/manifests/" in exchange.path:
            exchange.send(200, manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        else:
            exchange.send(200, config)

    registry = HostileServer(registry_answer)
    world.dns.script("harbor.corp.test", [LOOPBACK])
    gateway = world.make_gateway(gateway_config(world.tmp, allow=["harbor.corp.test"]))

    job, _ = run_job(
        gateway, {"type": "image", "url": f"http://harbor.corp.test:{registry.port}/v2/library/app/manifests/1.0"}
    )
    registry.close()

    assert job["state"] == "SUCCESS", json.dumps(job)
    assert [r.path.split("?")[0] for r in registry.received] == [
        "/v2/library/app/manifests/1.0",
        f"/v2/library/app/blobs/{sha256(config)}",
    ]
