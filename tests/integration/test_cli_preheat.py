"""``preheat-gateway preheat``: a person (or a pipeline) preheats from the shell and reads the outcome."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

from tests.conftest import ROBOT_USER, MakeGateway, OriginImages
from tests.gateway_process import gateway_config
from tests.registry import Registry


def test_preheat_an_image_reference_and_wait_for_success(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    config = gateway_config(
        tmp_path,
        registries={
            "allow": ["127.0.0.1"],
            "credentials": [{"host": origin.host, "username": ROBOT_USER, "password_env": "ROBOT_SECRET"}],
        },
    )
    gateway = make_gateway_thread(config, env={"ROBOT_SECRET": "robot-secret"})
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}

    done = gateway.cli(
        "preheat",
        f"{origin.host}/library/app:1.0",
        "--plain-http",
        "--server",
        gateway.url,
        "--wait",
        "--interval",
        "0.2",
        env_extra=env,
    )

    assert done.returncode == 0, done.stderr
    assert "job 1 created" in done.stdout and "job 1 SUCCESS" in done.stdout
    assert "BLOB URL" in done.stdout and images.single.layer_digests[0] in done.stdout
    assert "cluster 1" in done.stdout and "4/4 blobs" in done.stdout


def test_a_failed_preheat_exits_non_zero_with_the_error(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}

    failed = gateway.cli(
        "preheat",
        f"{origin.url}/v2/library/app/manifests/nope",
        "--server",
        gateway.url,
        "--wait",
        "--interval",
        "0.2",
        check=False,
        env_extra=env,
    )
    refused = gateway.cli("preheat", "not a reference", "--server", gateway.url, check=False, env_extra=env)
    unauthorized = gateway.cli(
        "preheat",
        f"{origin.url}/v2/library/app/manifests/1.0",
        "--server",
        gateway.url,
        check=False,
        env_extra={"PREHEAT_GATEWAY_TOKEN": ""},
    )

    assert failed.returncode == 1 and "FAILURE" in failed.stderr and "library/app" in failed.stderr
    assert refused.returncode == 2 and "neither an image reference" in refused.stderr
    assert unauthorized.returncode == 2 and "PREHEAT_GATEWAY_TOKEN" in unauthorized.stderr


def test_a_repeat_of_a_warm_image_says_already_warm(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    config = gateway_config(
        tmp_path,
        registries={
            "allow": ["127.0.0.1"],
            "credentials": [{"host": origin.host, "username": ROBOT_USER, "password_env": "ROBOT_SECRET"}],
        },
    )
    gateway = make_gateway_thread(config, env={"ROBOT_SECRET": "robot-secret"})
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}
    preheat = (
        "preheat",
        f"{origin.host}/library/app:1.0",
        "--plain-http",
        "--server",
        gateway.url,
        "--wait",
        "--interval",
        "0.2",
    )

    first = gateway.cli(*preheat, env_extra=env)
    again = gateway.cli(*preheat, env_extra=env)

    assert "already warm" not in first.stdout and "1.2 MiB/1.2 MiB" in first.stdout
    assert "4/4 blobs  already warm (1.2 MiB)  SUCCESS" in again.stdout, again.stdout
    assert "job 2 SUCCESS" in again.stdout


def test_a_file_preheat_without_cluster_ids_skips_mirror_clusters(
    make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "model.bin").write_bytes(b"\x07" * 500_000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "files"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model.bin"
    clusters = [
        {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
        {"id": 2, "name": "eu-mirror", "adapter": "mirror", "endpoints": [{"url": "http://127.0.0.1:9"}]},
    ]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=clusters))
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}
    try:
        done = gateway.cli(
            "preheat", "--type", "file", url, "--server", gateway.url, "--wait", "--interval", "0.2", env_extra=env
        )
        named = gateway.cli(
            "preheat",
            "--type",
            "file",
            url,
            "--cluster",
            "2",
            "--server",
            gateway.url,
            "--wait",
            "--interval",
            "0.2",
            check=False,
            env_extra=env,
        )
    finally:
        server.shutdown()
        server.server_close()

    assert "job 1 SUCCESS" in done.stdout and "cluster 2" not in done.stdout
    assert "1/1 files  0.5 MiB fetched  SUCCESS" in done.stdout and "FILE URL" in done.stdout
    with gateway.client() as client:
        assert [
            task["results"][0]["scheduler_cluster_id"]
            for task in client.get("/oapi/v1/jobs/1").json()["result"]["job_states"]
        ] == [1]
    assert named.returncode == 1 and "the mirror adapter does not preheat files" in named.stderr
