"""A rolling restart behind a load balancer fails no Harbor request.

One failed poll ends a Harbor task (Harbor never retries it), so a replica going away must
first turn ``/readyz`` false while it still serves (``server.shutdown_delay_seconds``), every
response meanwhile saying ``Connection: close``; then stop accepting and answer what is in
flight; then hand its claimed tasks back to the store. The first tests pin that order on one
real gateway process; the last puts Debian's haproxy in front of two replicas on one
PostgreSQL and restarts each replica twice while 200 Harbor-style tasks create and poll.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HarborToken, MakeCache, MakeGateway, OriginImages, require
from tests.gateway_process import gateway_config
from tests.haproxy import Haproxy, find_haproxy
from tests.postgres import find_postgres, fresh_database
from tests.registry import Registry
from tests.tcprelay import TcpRelay

DELAY = 1.5  # server.shutdown_delay_seconds in these tests; haproxy checks every 200 ms


def job_body(
    origin: Registry, harbor_token: HarborToken, repository: str = "library/app", reference: str = "1.0"
) -> dict[str, Any]:
    return {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"{origin.url}/v2/{repository}/manifests/{reference}",
            "headers": {"Authorization": harbor_token(repository)},
        },
    }


def exchange(connection: socket.socket, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes."""
    connection.sendall(data)
    connection.settimeout(timeout)
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


# --- the order of a graceful stop, on one process -----------------------------------------------


def test_sigterm_turns_readiness_false_while_requests_are_still_served_with_connection_close(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, server={"shutdown_delay_seconds": DELAY}))
    with gateway.client() as client:
        assert client.get("/healthy").status_code == 200  # a kept-alive connection, opened before the signal
        gateway.process.terminate()
        time.sleep(0.3)

        ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
        served = client.get("/healthy")  # the same connection, during the delay

    assert ready.status_code == 503 and "shutting down" in ready.json()["errors"]
    assert served.status_code == 200 and served.headers["connection"] == "close"
    assert gateway.process.wait(15) in (0, -15)
    logs = gateway.logs()
    order = [
        logs.index(line) for line in ("draining: /readyz answers 503", "Shutting down", "Application shutdown complete")
    ]
    assert order == sorted(order), logs[-2000:]


def test_requests_under_way_when_the_listener_closes_are_answered(
    make_gateway: MakeGateway, origin: Registry, images: OriginImages, harbor_token: HarborToken, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, server={"shutdown_delay_seconds": DELAY}))
    body = httpx.Request("POST", "/", json=job_body(origin, harbor_token)).read()
    head = (
        f"POST /oapi/v1/jobs HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gateway.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status = head.replace(b"POST /oapi/v1/jobs", b"GET /readyz").split(b"Content-Type")[0] + b"\r\n"
    with (
        socket.create_connection(("127.0.0.1", gateway.port)) as in_body,
        socket.create_connection(("127.0.0.1", gateway.port)) as in_head,
    ):
        in_body.sendall(head + body[:10])  # the head is in, the body is not
        in_head.sendall(status[:20])  # half a request head
        gateway.process.terminate()
        time.sleep(DELAY + 0.5)  # the listener is closed now
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()

        created = exchange(in_body, body[10:])
        checked = exchange(in_head, status[20:])

    assert created.startswith(b"HTTP/1.1 200 ") and b"connection: close" in created.lower(), created[:300]
    assert checked.startswith(b"HTTP/1.1 503 ") and b"shutting down" in checked, checked[:300]
    assert gateway.process.wait(15) in (0, -15)


# --- haproxy, two replicas, 200 Harbor tasks --------------------------------------------------


@pytest.fixture
def store_url() -> Iterator[str]:
    admin = require(find_postgres)
    with fresh_database(admin) as url:
        yield url


@dataclass
class Tally:
    """What the Harbor-side tasks saw."""

    failures: list[str] = field(default_factory=list)
    created: dict[int, float] = field(default_factory=dict)
    ended: dict[int, str] = field(default_factory=dict)
    requests: int = 0


async def harbor_task(client: httpx.AsyncClient, body: dict[str, Any], start_after: float, tally: Tally) -> None:
    """One task of a preheat execution, as Harbor runs it: health check, create, poll every second until done.

    Any answer but a 200, or no answer, is what ends a Harbor task as failed.
    """
    await asyncio.sleep(start_after)

    async def call(method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        tally.requests += 1
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            tally.failures.append(f"{time.strftime('%X')} {method} {path}: {type(error).__name__}: {error}")
            return None
        if response.status_code != 200:
            tally.failures.append(
                f"{time.strftime('%X')} {method} {path}: {response.status_code} {response.text[:200]}"
            )
            return None
        return response

    if await call("GET", "/healthy") is None:
        return
    created = await call("POST", "/oapi/v1/jobs", json=body)
    if created is None:
        return
    job_id = created.json()["id"]
    tally.created[job_id] = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        polled = await call("GET", f"/oapi/v1/jobs/{job_id}")
        if polled is None:
            return
        if (state := polled.json()["state"]) != "PENDING":
            tally.ended[job_id] = state
            return


def run_harbor(url: str, token: str, bodies: list[dict[str, Any]], spread: float, tally: Tally) -> threading.Thread:
    async def main() -> None:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30, limits=limits
        ) as client:
            await asyncio.gather(
                *(harbor_task(client, body, spread * i / len(bodies), tally) for i, body in enumerate(bodies))
            )

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    return thread


def test_restarting_each_replica_twice_behind_haproxy_fails_no_poll_and_no_create(
    make_gateway: MakeGateway,
    make_cache: MakeCache,
    store_url: str,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    haproxy_binary = require(find_haproxy)
    # Every job warms two clusters: a local cache, done at once, and a mirror held shut until the
    # restarts are over, so every job is still running (or queued) when its replica stops and each
    # stop hands claimed tasks back. (The local cluster keeps /healthy answering 200 meanwhile.)
    relay = TcpRelay("127.0.0.1", make_cache().port)
    relay.pause()
    config = gateway_config(
        tmp_path,
        clusters=[
            {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
            {"id": 2, "name": "edge", "adapter": "mirror", "endpoints": [{"url": relay.url}]},
        ],
        store={"url": store_url, "secret_key_file": str(tmp_path / "shared-secret.key")},
        server={"shutdown_delay_seconds": DELAY},
        runner={"poll_seconds": 0.5, "min_transfer_bytes_per_second": 0},
        registries={"allow": ["127.0.0.1"], "read_timeout_seconds": 120},
    )
    a = make_gateway(config)
    b = make_gateway(config, start=False)
    b._token = a.token  # one token, in the shared store
    b.start()
    haproxy = Haproxy(haproxy_binary, tmp_path, {"a": a.port, "b": b.port})
    try:
        haproxy.wait_for("a", "UP")
        haproxy.wait_for("b", "UP")
        images_to_warm = [("library/app", "1.0"), ("library/multi", "2.0")]
        bodies = [job_body(origin, harbor_token, *images_to_warm[i % 2]) for i in range(200)]
        tally = Tally()
        harbor = run_harbor(haproxy.url, a.token, bodies, spread=8.0, tally=tally)
        time.sleep(2.0)  # creates are under way on both replicas

        for replica, name in [(a, "a"), (b, "b"), (a, "a"), (b, "b")]:
            assert replica.stop(timeout=30) in (0, -15)
            replica.start()
            haproxy.wait_for(name, "UP")
        relay.resume()
        harbor.join(90)

        assert not harbor.is_alive(), f"Harbor's tasks still polling: {len(tally.ended)} of {len(tally.created)} ended"
        assert tally.failures == [], f"{len(tally.failures)} failed of {tally.requests} requests:\n" + "\n".join(
            tally.failures[:20]
        )
        assert len(tally.created) == 200
        assert set(tally.ended.values()) == {"SUCCESS"} and len(tally.ended) == 200
        handed_back = [int(n) for n in re.findall(r"handed back (\d+) unfinished task", a.logs() + b.logs())]
        assert sum(handed_back) >= 32, f"stopping replicas hand their claimed tasks back: {handed_back}"
    finally:
        haproxy.close()
        relay.close()
