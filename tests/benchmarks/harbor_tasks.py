"""A share of a thousand Harbor tasks, in a process of its own: health check, create, poll.

One Python process cannot send a thousand tasks' requests on time: once its event loop falls
behind, the timers of the tasks due meanwhile fire together, and the gateway sees clumps
that Harbor's Go job service would not send. ``bench_thousand_tags`` therefore splits the
tasks over a few of these processes, each with a light loop, and none of them shares a GIL
with the token service the caches call. Each task starts at an absolute time from the plan,
so the processes keep one schedule between them.

Input: a JSON plan on stdin (``gateway``, ``poll``, ``header`` for the registry and
``tasks``: ``[url, start time]``); the gateway token in ``HARBOR_TOKEN``. Output: one JSON
line, per task ``[state, late, sent, create seconds, ended]`` (``late``: how many seconds after
its planned start the task woke, this process's own lag; ``sent`` when its create left,
``ended`` the job's own ``updated_at``, both unix times).

Run by ``bench_thousand_tags``:  HARBOR_TOKEN=... python -m tests.benchmarks.harbor_tasks < plan.json
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import uvloop

from adapters.transport import new_client

TaskOutcome = tuple[str, float, float, float, float]


async def get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """A GET, retried once on a connection the server closed meanwhile (as Go's client does)."""
    try:
        return await client.get(path)
    except httpx.TransportError:
        return await client.get(path)


async def harbor_task(client: httpx.AsyncClient, url: str, header: str, start: float, poll: float) -> TaskOutcome:
    """Health check, create, poll: one task of Harbor's preheat execution."""
    await asyncio.sleep(max(0.0, start - time.time()))
    late = time.time() - start
    if (await get(client, "/healthy")).status_code != 200:
        return "UNHEALTHY", late, 0.0, 0.0, 0.0
    body = {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": url,
            "tag": "",
            "filtered_query_params": "",
            "headers": {"Authorization": header},
            "scope": "all_seed_peers",
            "concurrent_count": 0,
            "timeout": 0,
        },
        "scheduler_cluster_ids": None,
    }
    sent, started = time.time(), time.perf_counter()
    response = await client.post("/oapi/v1/jobs", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return f"CREATE {response.status_code}", late, sent, seconds, 0.0
    job_id = response.json()["id"]
    while True:
        await asyncio.sleep(poll)
        job = (await get(client, f"/oapi/v1/jobs/{job_id}")).json()
        if job["state"] != "PENDING":
            return job["state"], late, sent, seconds, datetime.fromisoformat(job["updated_at"]).timestamp()


async def run(plan: dict[str, Any]) -> list[TaskOutcome]:
    tasks = plan["tasks"]
    # Harbor's Go client keeps a connection per task; httpcore's pool scheduler is quadratic in
    # its size, so the tasks share the gateway's own aiohttp-backed client.
    limits = httpx.Limits(max_connections=max(1, len(tasks)), max_keepalive_connections=max(1, len(tasks)))
    client = new_client(
        timeout=30, limits=limits, trust_env=False, headers={"Authorization": f"Bearer {os.environ['HARBOR_TOKEN']}"}
    )
    client.base_url = httpx.URL(plan["gateway"])
    async with client:
        return await asyncio.gather(
            *(harbor_task(client, url, plan["header"], start, plan["poll"]) for url, start in tasks)
        )


def main() -> None:
    print(json.dumps(uvloop.run(run(json.load(sys.stdin)))), flush=True)  # the loop a Go client's speed asks for


if __name__ == "__main__":
    main()
