"""``preheat-gateway preheat``: a person (or a pipeline) preheats from the shell and reads the outcome."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROBOT_USER, MakeGateway, OriginImages
from tests.gateway_process import gateway_config
from tests.registry import Registry


def test_preheat_an_image_reference_and_wait_for_success(make_gateway: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path) -> None:
    config = gateway_config(tmp_path, registries={"allow": ["127.0.0.1"], "credentials": [{"host": origin.host, "username": ROBOT_USER, "password_env": "ROBOT_SECRET"}]})
    gateway = make_gateway(config, env={"ROBOT_SECRET": "robot-secret"})
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}

    done = gateway.cli("preheat", f"{origin.host}/library/app:1.0", "--plain-http", "--server", gateway.url, "--wait", "--interval", "0.2", env_extra=env)

    assert done.returncode == 0, done.stderr
    assert "job 1 created" in done.stdout and "job 1 SUCCESS" in done.stdout
    assert "BLOB URL" in done.stdout and images.single.layer_digests[0] in done.stdout
    assert "cluster 1" in done.stdout and "4/4 blobs" in done.stdout


def test_a_failed_preheat_exits_non_zero_with_the_error(make_gateway: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}

    failed = gateway.cli("preheat", f"{origin.url}/v2/library/app/manifests/nope", "--server", gateway.url, "--wait", "--interval", "0.2", check=False, env_extra=env)
    refused = gateway.cli("preheat", "not a reference", "--server", gateway.url, check=False, env_extra=env)
    unauthorized = gateway.cli("preheat", f"{origin.url}/v2/library/app/manifests/1.0", "--server", gateway.url, check=False, env_extra={"PREHEAT_GATEWAY_TOKEN": ""})

    assert failed.returncode == 1 and "FAILURE" in failed.stderr and "library/app" in failed.stderr
    assert refused.returncode == 2 and "neither an image reference" in refused.stderr
    assert unauthorized.returncode == 2 and "PREHEAT_GATEWAY_TOKEN" in unauthorized.stderr
