"""Health per cluster (issue 4): what ``/oapi/v1/clusters``, ``/healthy`` and ``/readyz`` say.

``GET /oapi/v1/clusters`` shows each cluster's adapter and its last health check (reachable,
latency, error). ``/healthy`` (Harbor's "Test connection" and the start of every task) answers
503 with the reason when no cluster is usable, so Harbor fails fast; ``/readyz`` depends on
the store alone, never on backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import MakeGateway
from tests.fakes.dragonfly_manager import FakeDragonflyManager
from tests.fakes.forward_proxy import ForwardProxy
from tests.fakes.kraken_proxy import FakeKrakenProxy
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.registry import free_port


def dead() -> str:
    return f"http://127.0.0.1:{free_port()}"


def clusters_of(gateway: GatewayUnderTest) -> dict[str, dict[str, Any]]:
    with gateway.client() as client:
        response = client.get("/oapi/v1/clusters")
    assert response.status_code == 200, response.text
    return {cluster["name"]: cluster for cluster in response.json()}


def test_clusters_show_their_adapter_and_last_health(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    with FakeDragonflyManager("good-token") as manager, FakeKrakenProxy() as kraken, ForwardProxy() as proxy:
        clusters = [
            {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
            {"id": 2, "name": "df-ok", "adapter": "dragonfly", "manager": manager.url, "token_env": "DF_GOOD"},
            {"id": 3, "name": "df-bad-token", "adapter": "dragonfly", "manager": manager.url, "token_env": "DF_BAD"},
            {"id": 4, "name": "df-down", "adapter": "dragonfly", "manager": (df_down := dead())},
            {"id": 5, "name": "kraken", "adapter": "kraken", "endpoint": kraken.url},
            {"id": 6, "name": "proxies", "adapter": "proxy", "proxies": [proxy.url, proxy_down := dead()]},
            {"id": 7, "name": "mirror-down", "adapter": "mirror", "endpoints": [{"url": dead()}]},
        ]
        gateway = make_gateway_thread(
            gateway_config(tmp_path, clusters=clusters), env={"DF_GOOD": "good-token", "DF_BAD": "bad-token"}
        )

        found = clusters_of(gateway)

    assert {name: c["adapter"] for name, c in found.items()} == {
        "local": "local",
        "df-ok": "dragonfly",
        "df-bad-token": "dragonfly",
        "df-down": "dragonfly",
        "kraken": "kraken",
        "proxies": "proxy",
        "mirror-down": "mirror",
    }
    for cluster in found.values():
        assert set(cluster["health"]) >= {"reachable", "latency_ms", "error"}
        assert cluster["health"]["latency_ms"] >= 0
    reachable = {name: c["health"]["reachable"] for name, c in found.items()}
    assert reachable == {
        "local": True,
        "df-ok": True,
        "df-bad-token": False,
        "df-down": False,
        "kraken": True,
        "proxies": True,
        "mirror-down": False,
    }
    assert "refused the token in $DF_BAD (401)" in found["df-bad-token"]["health"]["error"]
    assert "bad-token" not in found["df-bad-token"]["health"]["error"].replace("$DF_BAD", "")
    assert found["df-down"]["health"]["error"] == f"cannot reach the Dragonfly manager at {df_down}: connection refused"
    assert proxy_down.rpartition(":")[2] in found["proxies"]["health"]["error"], (
        "a dead proxy is named even if another works"
    )
    assert found["df-ok"]["health"]["error"] == ""


def test_healthy_answers_503_with_the_reason_when_no_cluster_is_usable(
    make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    clusters = [
        {"id": 1, "name": "df", "adapter": "dragonfly", "manager": dead()},
        {"id": 2, "name": "kraken", "adapter": "kraken", "endpoint": (kraken_down := dead())},
        {"id": 3, "name": "proxies", "adapter": "proxy", "proxies": [dead()]},
    ]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=clusters))

    with gateway.client() as client:
        healthy = client.get("/healthy")
        ready = client.get("/readyz")

    assert healthy.status_code == 503
    reason = healthy.json()["errors"]
    assert reason.startswith("no cluster is usable: ")
    assert "cluster 1: cannot reach the Dragonfly manager" in reason
    assert f"cluster 2: cannot reach Kraken at {kraken_down}" in reason
    assert "cluster 3: proxy 127.0.0.1:" in reason
    assert ready.status_code == 200, "readiness never depends on backends"


def test_healthy_answers_ok_while_one_cluster_is_usable(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    with FakeKrakenProxy() as kraken:
        clusters = [
            {"id": 1, "name": "df", "adapter": "dragonfly", "manager": dead()},
            {"id": 2, "name": "kraken", "adapter": "kraken", "endpoint": kraken.url},
        ]
        gateway = make_gateway_thread(gateway_config(tmp_path, clusters=clusters))
        with gateway.client() as client:
            healthy = client.get("/healthy")

    assert healthy.status_code == 200
    assert healthy.json() == "OK"
