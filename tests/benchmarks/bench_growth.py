"""Cost growth: create latency, poll throughput, list latency and memory at 10, 1,000 and 10,000 stored jobs.

The store is filled directly (finished jobs, as a long-lived gateway accumulates them), then
a gateway is started on it and measured over HTTP: creates one after another, wrk on a
finished job's status, the first and a deep page of the job list, and peak RSS.

Run:  .venv/bin/python -m tests.benchmarks.bench_growth [--sizes 10,1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from adapters.base import TaskRow
from gateway.store import NewJob, TaskResult, open_store
from tests.benchmarks.common import peak_rss_mib, wrk
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import free_port


async def fill(database: Path, count: int) -> None:
    store = open_store(f"sqlite:///{database}")
    await store.open()
    rows = [
        TaskRow(
            url=f"https://harbor.example.com/v2/library/app/blobs/sha256:{i:064x}", hostname="cache-a", ip="10.0.0.5"
        )
        for i in range(6)
    ]
    for number in range(count):
        now = time.time()
        job = await store.create_job(
            NewJob(
                task_id=f"group_{number}",
                type="preheat",
                source="openapi",
                args={"type": "image", "urls": [f"https://harbor.example.com/v2/library/app/manifests/v{number}"]},
                cluster_ids=None,
                target_cluster_ids=[1],
                bio="",
                secret=None,
                deadline=now + 1800,
                created_at=now,
            )
        )
        claim = (await store.claim_tasks("filler", 1, 30))[0]
        await store.finish_task(
            claim.task_id,
            "filler",
            state="SUCCESS",
            error="",
            progress=job.tasks[0].progress,
            result=TaskResult(success_tasks=rows, failure_tasks=[]),
        )
    await store.close()


def measure(size: int, work: Path) -> dict[str, float]:
    gateway = GatewayProcess(work / "gw", gateway_config(work, allow=["*"]))
    asyncio.run(fill(Path(gateway.config["server"]["state_dir"]) / "gateway.db", size))
    gateway.start()
    try:
        client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.token}"}, timeout=30)
        body = {
            "type": "preheat",
            "args": {"type": "image", "url": f"http://127.0.0.1:{free_port()}/v2/library/app/manifests/1.0"},
        }
        creates = []
        for _ in range(100):
            started = time.perf_counter()
            assert client.post("/oapi/v1/jobs", json=body).status_code == 200
            creates.append(time.perf_counter() - started)
        creates.sort()
        started = time.perf_counter()
        first_page = client.get("/oapi/v1/jobs", params={"page": 1, "per_page": 10})
        first = time.perf_counter() - started
        started = time.perf_counter()
        client.get("/oapi/v1/jobs", params={"page": max(1, size // 20), "per_page": 10})
        deep = time.perf_counter() - started
        assert first_page.status_code == 200
        while client.get("/oapi/v1/jobs", params={"state": "PENDING", "per_page": 1}).headers["X-Total-Count"] != "0":
            time.sleep(0.5)  # the creates above fail in the background; measure polling without them
        headers = {"Authorization": f"Bearer {gateway.token}"}
        wrk(f"{gateway.url}/oapi/v1/jobs/1", seconds=2, headers=headers)  # warm up connections and caches
        result = wrk(f"{gateway.url}/oapi/v1/jobs/1", seconds=5, headers=headers)
        return {
            "create_p50": statistics.median(creates) * 1000,
            "create_p99": creates[98] * 1000,
            "list_first": first * 1000,
            "list_deep": deep * 1000,
            "poll_rps": result.requests_per_second,
            "poll_p99": result.p99_ms,
            "rss": peak_rss_mib(gateway.process.pid),
        }  # type: ignore[union-attr]
    finally:
        gateway.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args()
    print(
        f"{'stored jobs':>11} {'create p50':>11} {'create p99':>11} {'list p1':>9} {'list deep':>10} {'poll req/s':>11} {'poll p99':>9} {'peak RSS':>9}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        figures = measure(size, Path(tempfile.mkdtemp(prefix=f"bench-growth-{size}-", dir="/var/tmp")))
        print(
            f"{size:>11} {figures['create_p50']:>9.1f}ms {figures['create_p99']:>9.1f}ms {figures['list_first']:>7.1f}ms {figures['list_deep']:>8.1f}ms "
            f"{figures['poll_rps']:>11.0f} {figures['poll_p99']:>7.1f}ms {figures['rss']:>7.0f}MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
