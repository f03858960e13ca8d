"""What one request costs the gateway's event loop, route by route, with no network in between.

Under a burst every request waits for the ones queued before it on the event loop, so a
route's own cost sets how long a burst keeps a create waiting (``bench_thousand_tags``). Here
the ASGI app is called directly, one request after another, on an embedded store: what is
left is the gateway's code, from the first middleware to the last byte of the response. Each
figure is set beside a bare Starlette route returning the same kind of JSON, measured in the
same rounds. The runner is not started, so no warming competes; one job is finished through
the store, as a worker would, so that its poll is answered from the one-second status cache.

Run:  .venv/bin/python -m tests.benchmarks.bench_request_cost [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.auth import hash_token, new_token
from gateway.config import Config, build_config
from gateway.store import TaskProgress, TaskResult

HARBOR_CREATE = {
    "type": "preheat",
    "args": {
        "type": "image",
        "url": "http://127.0.0.1:5000/v2/library/service/manifests/v1",
        "tag": "",
        "filtered_query_params": "",
        "headers": {"Authorization": "Bearer " + "x" * 400},
        "scope": "all_seed_peers",
        "concurrent_count": 0,
        "timeout": 0,
    },
    "scheduler_cluster_ids": None,
}


async def call(
    app: Any, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> int:
    """One request through the ASGI app, as uvicorn would hand it over; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {"gateway": app.state.gateway} if hasattr(app.state, "gateway") else {},  # the lifespan's state
    }
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()  # no disconnect while the response is written
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def bare_app() -> Starlette:
    async def ok(_request: Request) -> Response:
        return Response(b'"OK"', media_type="application/json")

    return Starlette(routes=[Route("/healthy", ok)])


async def cost_us(request: Callable[[], Any], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await request()
    return (time.perf_counter() - started) / count * 1e6


async def main(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cost-", dir="/var/tmp") as work:
        figures = await measure(Path(work), count, rounds)
    floor = statistics.median(figures["bare Starlette route (floor)"])
    print(f"{count} requests per route and round, {rounds} interleaved rounds; median per request:")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"  {name:46s} {median:7.0f} us   {median / floor:5.1f}x the bare route")


def embedded_config(work: Path, source: str) -> Config:
    """The embedded default in ``work``, one local cluster, no limit on creates: the request path alone."""
    return build_config(
        {
            "server": {"state_dir": str(work), "create_rate_per_second": 0},
            "registries": {"allow": ["127.0.0.1"]},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(work / "cache")}],
        },
        source=source,
    )


async def measure(work: Path, count: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per request of each route, one figure per round."""
    app = create_app(embedded_config(work, "bench_request_cost"))
    gateway = app.state.gateway
    await gateway.store.open()  # no lifespan: the runner stays stopped
    app.state.ready = True
    token = new_token()
    await gateway.store.create_token("bench", hash_token(token), ["job"], None)
    auth = [(b"authorization", f"Bearer {token}".encode())]
    body = json.dumps(HARBOR_CREATE).encode()

    async def create() -> None:
        assert await call(app, "POST", "/oapi/v1/jobs", body, auth) == 200, "create refused"

    await create()  # this one finishes, as if a worker had run it
    [claim] = await gateway.store.claim_tasks("bench", 1, 60)
    await gateway.store.finish_task(
        claim.task_id, "bench", state="SUCCESS", error="", progress=TaskProgress(), result=TaskResult()
    )
    await create()  # and this one stays pending
    pending_id = (await gateway.store.list_jobs(limit=1))[0][0].id
    bare = bare_app()
    routes: dict[str, Callable[[], Any]] = {
        "bare Starlette route (floor)": lambda: call(bare, "GET", "/healthy"),
        "GET /livez (middlewares only)": lambda: call(app, "GET", "/livez"),
        "GET /healthy (Harbor, every task)": lambda: call(app, "GET", "/healthy", headers=auth),
        "POST /oapi/v1/jobs (Harbor create)": create,
        "GET /oapi/v1/jobs/{id} (pending)": lambda: call(app, "GET", f"/oapi/v1/jobs/{pending_id}", headers=auth),
        "GET /oapi/v1/jobs/{id} (finished, cached)": lambda: call(
            app, "GET", f"/oapi/v1/jobs/{claim.job_id}", headers=auth
        ),
    }
    try:
        for request in routes.values():  # warm caches, the token cache and the health cache
            await cost_us(request, 50)
        figures: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(rounds):  # interleaved, so the machine's noise falls on every route alike
            for name, request in routes.items():
                figures[name].append(await cost_us(request, count))
        return figures
    finally:
        await gateway.store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(main(args.requests, args.rounds))  # the loop the gateway serves on
