"""What an upstream the operator configured (a Dragonfly manager, a Kraken proxy) answers is bounded too.

Such an upstream is trusted with the work but not with the gateway's memory: a compromised or
broken manager answering a create or a health check with a gzip bomb or an endless body costs
the gateway at most ``UPSTREAM_ANSWER_BYTES`` (a Dragonfly job with its rows) or
``UPSTREAM_PROBE_BYTES`` (a health check, a Kraken acknowledgement), and the job fails saying so.
"""

from __future__ import annotations

import time
from pathlib import Path

from adapters.bounded import UPSTREAM_ANSWER_BYTES, UPSTREAM_PROBE_BYTES
from tests.conftest import MakeGateway
from tests.gateway_process import GatewayProcess, gateway_config
from tests.security.hostile import Exchange, HostileServer, survival
from tests.security.registry_attacks import gzip_bomb

MANIFEST = "http://127.0.0.1:5000/v2/library/app/manifests/sha256:" + "a" * 64


def create_and_wait(gateway: GatewayProcess) -> tuple[dict, float]:
    started = time.monotonic()
    with gateway.client() as client:
        response = client.post("/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": MANIFEST}})
    assert response.status_code == 200, response.text
    return gateway.wait_job(response.json()["id"], timeout=60), time.monotonic() - started


def errors_of(job: dict) -> str:
    return "\n".join(state.get("error") or "" for state in job["result"]["job_states"])


def bomb_on_create(exchange: Exchange) -> None:
    """Healthy to a health check; a create is answered with 1 GiB of zeros in 1 MiB of gzip."""
    if exchange.request.method == "POST":
        exchange.send(200, gzip_bomb(1024), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    else:
        exchange.json(200, {"data": []} if "jobs" in exchange.path else "OK")


def endless_on_create(exchange: Exchange) -> None:
    """A create is refused with a 512 MiB body, streamed; anything else is healthy."""
    if exchange.request.method == "POST":
        exchange.head(422, {"Content-Type": "application/json", "Content-Length": str(512 << 20)})
        exchange.stream(b'{"errors": "' + b"x" * (1 << 20), 512 << 20)
    else:
        exchange.json(200, {"data": []} if "jobs" in exchange.path else "OK")


def dragonfly_gateway(make_gateway: MakeGateway, tmp_path: Path, manager: HostileServer) -> GatewayProcess:
    cluster = {"id": 3, "name": "df", "adapter": "dragonfly", "manager": manager.url, "poll_interval": "1s"}
    return make_gateway(gateway_config(tmp_path, clusters=[cluster]))


def test_a_dragonfly_manager_answering_a_create_with_a_gzip_bomb_costs_no_more_than_the_answer_cap(
    make_gateway: MakeGateway,
    tmp_path: Path,
) -> None:
    gzip_bomb(1024)  # built (and kept) before the job is timed
    with HostileServer(bomb_on_create) as manager:
        gateway = dragonfly_gateway(make_gateway, tmp_path, manager)
        with survival(gateway) as watch:
            job, seconds = create_and_wait(gateway)

    assert job["state"] == "FAILURE"
    assert f"answered creating the job with more than {UPSTREAM_ANSWER_BYTES} bytes" in errors_of(job)
    assert seconds < 15
    assert [r.method for r in manager.received].count("POST") == 1, "a create that was answered is never sent again"
    watch.assert_survived()


def test_a_dragonfly_manager_refusing_with_an_endless_body_fails_the_job_within_the_cap(
    make_gateway: MakeGateway,
    tmp_path: Path,
) -> None:
    with HostileServer(endless_on_create) as manager:
        gateway = dragonfly_gateway(make_gateway, tmp_path, manager)
        with survival(gateway) as watch:
            job, seconds = create_and_wait(gateway)

    assert job["state"] == "FAILURE"
    assert f"more than {UPSTREAM_ANSWER_BYTES} bytes" in errors_of(job)
    assert seconds < 15
    watch.assert_survived()


def test_a_kraken_proxy_answering_with_a_gzip_bomb_fails_the_job_within_the_probe_cap(
    make_gateway: MakeGateway,
    tmp_path: Path,
) -> None:
    bomb = gzip_bomb(1024)  # built before the job is timed

    def kraken(exchange: Exchange) -> None:
        if exchange.request.method == "POST":
            exchange.send(500, bomb, {"Content-Encoding": "gzip"})
        else:
            exchange.send(200, b"OK")

    with HostileServer(kraken) as proxy:
        cluster = {"id": 4, "name": "kraken", "adapter": "kraken", "endpoint": proxy.url}
        gateway = make_gateway(gateway_config(tmp_path, clusters=[cluster]))
        with survival(gateway) as watch:
            job, seconds = create_and_wait(gateway)

    assert job["state"] == "FAILURE"
    assert f"answered the notification with more than {UPSTREAM_PROBE_BYTES} bytes" in errors_of(job)
    assert seconds < 15
    watch.assert_survived()
