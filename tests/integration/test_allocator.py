"""The serving process keeps blob buffers in its heap instead of faulting them in on every read."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from gateway.allocator import tune_for_streaming
from tests.conftest import HarborToken, MakeCache, MakeGateway
from tests.gateway_process import gateway_config
from tests.registry import Registry, push_image

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator is tuned on glibc only")

GLIBC_DEFAULT_TOP_PAD = "glibc.malloc.top_pad=131072"


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[7])


def faults_warming(
    make_gateway: MakeGateway, cache: Registry, origin: Registry, token: str, work: Path, env: dict[str, str]
) -> int:
    """Page faults the gateway process takes while it warms the 64 MiB image into ``cache``."""
    gateway = make_gateway(
        gateway_config(
            work, clusters=[{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": cache.url}]}]
        ),
        env=env,
    )
    client = gateway.client()
    before = minor_faults(gateway.process.pid)  # type: ignore[union-attr]
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/library/big/manifests/1.0",
            "headers": {"Authorization": token},
        },
    }
    job = gateway.wait_job(client.post("/oapi/v1/jobs", json=body).json()["id"])
    assert job["state"] == "SUCCESS", job
    return minor_faults(gateway.process.pid) - before  # type: ignore[union-attr]


def test_warming_a_blob_does_not_fault_its_buffers_in_afresh(
    make_gateway: MakeGateway,
    make_cache: MakeCache,
    origin: Registry,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    push_image(origin, "library/big", "1.0", [64 << 20], seed=11)
    token = harbor_token("library/big")
    tuned = faults_warming(make_gateway, make_cache(), origin, token, tmp_path / "tuned", {})
    # The operator's own setting (here glibc's default, spelled out) is kept, so nothing is tuned.
    default = faults_warming(
        make_gateway, make_cache(), origin, token, tmp_path / "default", {"GLIBC_TUNABLES": GLIBC_DEFAULT_TOP_PAD}
    )

    pages = (64 << 20) // 4096
    assert tuned < pages // 4 < default, (
        f"{tuned} page faults tuned, {default} with glibc's defaults, for {pages} pages of blob"
    )


@pytest.mark.parametrize(
    ("environment", "tuned"),
    [
        ({}, True),
        ({"MALLOC_ARENA_MAX": "2"}, True),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}, False),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0:" + GLIBC_DEFAULT_TOP_PAD}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, False),
    ],
)
def test_an_operators_own_allocator_settings_are_kept(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], tuned: bool
) -> None:
    for name in os.environ:
        if name.startswith("MALLOC_") or name == "GLIBC_TUNABLES":
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert tune_for_streaming() is tuned
