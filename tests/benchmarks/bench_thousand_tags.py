"""A policy over a thousand tags: 1,000 Harbor tasks (health, create, poll) within a few seconds.

The tags of one repository share four base layers and differ in one small layer (and their
config) each; the target is a mirror cluster of two pull-through caches, ``all_seed_peers``.
Reported: every task's outcome, p99 of the create call, blob fetches per unique blob and
cache (gateway counter and the caches' own logs; 1.00 means each blob went to each cache
exactly once), wall time from first create to last SUCCESS, and the gateway's peak RSS.
Tasks poll every 10 s, as Harbor does (``--poll`` to change it); the wall time is read from
the jobs' own ``updated_at``, so it does not depend on when the last poll happened.

Run:  .venv/bin/python -m tests.benchmarks.bench_thousand_tags [--tags 1000] [--spread 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from adapters.transport import new_client
from tests.benchmarks.common import peak_rss_mib
from tests.conftest import CACHE_PASSWORD, CACHE_USER, USERS
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import (
    DOCKER_CONFIG_MEDIA_TYPE,
    DOCKER_LAYER_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    TokenService,
    _put_manifest,
    push_blob,
    random_blob_chunks,
    start_registry,
)

REPOSITORY = "library/service"


def push_tags(origin: object, token: TokenService, count: int, base_sizes: list[int]) -> set[str]:
    """Push base layers once, then per tag a config, a small layer and a manifest. Returns unique blob digests."""
    auth = f"Bearer {token.mint(REPOSITORY, ('pull', 'push'), expires_in=3600)}"
    base = [push_blob(origin, REPOSITORY, b"".join(random_blob_chunks(size, seed=900 + i)), auth_header=auth) for i, size in enumerate(base_sizes)]  # type: ignore[arg-type]

    def one(tag: int) -> set[str]:
        layer = push_blob(origin, REPOSITORY, f"tag {tag} ".encode() * 200, auth_header=auth)  # type: ignore[arg-type]
        config = push_blob(origin, REPOSITORY, json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode(), auth_header=auth)  # type: ignore[arg-type]
        manifest = {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": DOCKER_CONFIG_MEDIA_TYPE, "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": DOCKER_LAYER_MEDIA_TYPE, "digest": d, "size": s} for d, s in [*base, layer]],
        }
        _put_manifest(origin, REPOSITORY, f"v{tag}", json.dumps(manifest).encode(), DOCKER_MANIFEST_MEDIA_TYPE, auth)  # type: ignore[arg-type]
        return {layer[0], config[0]}

    unique = {digest for digest, _ in base}
    with ThreadPoolExecutor(8) as pool:
        for digests in pool.map(one, range(count)):
            unique |= digests
    return unique


async def get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """A GET, retried once on a connection the server closed meanwhile (as Go's client does)."""
    try:
        return await client.get(path)
    except httpx.TransportError:
        return await client.get(path)


async def harbor_task(client: httpx.AsyncClient, url: str, header: str, delay: float, creates: list[float], poll: float) -> tuple[str, float]:
    """Health check, create, poll: one task of Harbor's preheat execution."""
    await asyncio.sleep(delay)
    if (await get(client, "/healthy")).status_code != 200:
        return "UNHEALTHY", 0.0
    body = {"type": "preheat", "args": {"type": "image", "url": url, "tag": "", "filtered_query_params": "", "headers": {"Authorization": header},
                                        "scope": "all_seed_peers", "concurrent_count": 0, "timeout": 0}, "scheduler_cluster_ids": None}
    started = time.perf_counter()
    response = await client.post("/oapi/v1/jobs", json=body)
    creates.append(time.perf_counter() - started)
    if response.status_code != 200:
        return f"CREATE {response.status_code}", 0.0
    job_id = response.json()["id"]
    while True:
        await asyncio.sleep(poll)
        job = (await get(client, f"/oapi/v1/jobs/{job_id}")).json()
        if job["state"] != "PENDING":
            return job["state"], datetime.fromisoformat(job["updated_at"]).timestamp()


async def run_policy(gateway: GatewayProcess, origin_url: str, token: TokenService, tags: int, spread: float, poll: float) -> tuple[list[str], list[float], float]:
    """Run the tasks; returns their outcomes, the create latencies and the wall time to the last job's end."""
    header = f"Bearer {token.mint(REPOSITORY, expires_in=3600)}"
    creates: list[float] = []
    # Harbor's Go client keeps a connection per task; httpcore's pool scheduler is quadratic in
    # its size, so the load generator uses the gateway's own aiohttp-backed client.
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    client = new_client(timeout=30, limits=limits, trust_env=False, headers={"Authorization": f"Bearer {gateway.token}"})
    client.base_url = httpx.URL(gateway.url)
    async with client:
        started = time.time()
        results = await asyncio.gather(*(
            harbor_task(client, f"{origin_url}/v2/{REPOSITORY}/manifests/v{tag}", header, random.uniform(0, spread), creates, poll)
            for tag in range(tags)
        ))
        return [state for state, _ in results], creates, max(ended for _, ended in results) - started


class CreateProbe:
    """Creates a job every 50 ms with curl from its own process: the latency a separate Harbor sees."""

    def __init__(self, gateway: GatewayProcess, url: str, token: TokenService) -> None:
        body = json.dumps({"type": "preheat", "args": {"type": "image", "url": url, "headers": {"Authorization": f"Bearer {token.mint(REPOSITORY, expires_in=3600)}"}}})
        self.command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}\n", "-H", f"Authorization: Bearer {gateway.token}",
                        "-H", "Content-Type: application/json", "-d", body, f"{gateway.url}/oapi/v1/jobs"]
        self.latencies: list[tuple[float, float]] = []  # (when, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            status, seconds = subprocess.run(self.command, capture_output=True, text=True).stdout.split()
            if status == "200":
                self.latencies.append((time.time(), float(seconds)))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.latencies


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    if not ordered:
        return "no samples"
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000:.1f} ms ({len(ordered)} creates)"


def server_view(metrics: str) -> dict[str, float]:
    """Mean latencies (ms) the gateway measured itself, from its Prometheus histograms."""
    def mean(pattern: str) -> float:
        sums = [float(v) for v in re.findall(pattern.format(kind="sum") + r" ([\d.e+-]+)", metrics)]
        counts = [float(v) for v in re.findall(pattern.format(kind="count") + r" ([\d.e+-]+)", metrics)]
        return 1000 * sum(sums) / max(1.0, sum(counts))

    view = {"post": mean(r'preheat_gateway_http_request_duration_seconds_{kind}\{{method="POST",route="/oapi/v1/jobs",status="200"\}}')}
    for op in ("create_job", "claim_tasks", "save_progress", "finish_task", "get_job"):
        view[op] = mean(rf'preheat_gateway_store_duration_seconds_{{kind}}\{{{{operation="{op}"\}}}}')
    return view


def loop_lag(metrics: str) -> str:
    """Mean and the bucket holding p99 of the gateway's event loop lag histogram."""
    buckets = [(float(le), float(count)) for le, count in re.findall(r'event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)', metrics)]
    total = float(re.search(r"event_loop_lag_seconds_count ([\d.e+]+)", metrics).group(1))  # type: ignore[union-attr]
    mean = float(re.search(r"event_loop_lag_seconds_sum ([\d.e+-]+)", metrics).group(1)) / max(total, 1)  # type: ignore[union-attr]
    p99 = next(le for le, count in buckets if count >= 0.99 * total)
    return f"mean {mean * 1000:.1f} ms, p99 <= {p99 * 1000:.0f} ms ({total:.0f} samples)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=3.0, help="seconds over which the tasks arrive")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between a task's polls (Harbor: 10)")
    parser.add_argument("--base-mib", type=int, default=4, help="size of each of the four base layers")
    parser.add_argument("--workers", type=int, default=32, help="the gateway's runner.workers")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tags-", dir="/var/tmp"))
    token = TokenService(USERS, work / "token", grants={CACHE_USER: {"pull"}})
    origin = start_registry(work / "origin", token=token)
    caches = []
    gateway = None
    try:
        pushed = time.monotonic()
        unique = push_tags(origin, token, args.tags, [args.base_mib << 20] * 4)
        print(f"pushed {args.tags} tags ({len(unique)} unique blobs) in {time.monotonic() - pushed:.0f}s", flush=True)
        caches = [start_registry(work / f"cache{i}", proxy_remote=origin.url, proxy_username=CACHE_USER, proxy_password=CACHE_PASSWORD) for i in range(2)]
        cluster = {"id": 1, "name": "mirrors", "adapter": "mirror", "endpoints": [{"url": c.url} for c in caches]}
        gateway = GatewayProcess(work / "gateway", gateway_config(work, clusters=[cluster], runner={"workers": args.workers})).start()
        gateway.token  # created before the clock starts

        probe = CreateProbe(gateway, f"{origin.url}/v2/{REPOSITORY}/manifests/v0", token)
        arrivals_end = time.time() + args.spread + 2
        outcomes, creates, wall = asyncio.run(run_policy(gateway, origin.url, token, args.tags, args.spread, args.poll))
        probed = probe.stop()

        metrics = httpx.get(f"{gateway.url}/metrics").text
        fetched = float(re.search(r'preheat_gateway_blob_fetches_total\{outcome="fetched"\} ([\d.e+]+)', metrics).group(1))  # type: ignore[union-attr]
        stored = sum(cache.upstream_blob_fetches() for cache in caches)
        expected = len(unique) * len(caches)
        creates.sort()
        print(f"tasks: {args.tags}, outcomes: { {o: outcomes.count(o) for o in set(outcomes)} }")
        print(f"create latency seen by the load generator (one Python process, includes its own queueing): "
              f"p50 {statistics.median(creates) * 1000:.1f} ms, p99 {creates[int(len(creates) * 0.99) - 1] * 1000:.1f} ms")
        print(f"create latency seen by a curl probe (one create every 50 ms, goal p99 < 50 ms): whole run {percentiles([s for _, s in probed])}; "
              f"while the tasks arrive {percentiles([s for t, s in probed if t < arrivals_end])}; "
              f"afterwards {percentiles([s for t, s in probed if t >= arrivals_end])}")
        print(f"gateway blob fetches / (unique blobs x caches) = {fetched:.0f} / {expected} = {fetched / expected:.2f} (goal 1.00)")
        print(f"blobs the caches fetched from the origin and stored / (unique blobs x caches) = {stored} / {expected} = {stored / expected:.2f}")
        server = server_view(metrics)
        print(f"server side: POST /oapi/v1/jobs mean {server['post']:.1f} ms; store mean per call (ms): "
              + ", ".join(f"{op} {server[op]:.1f}" for op in ("create_job", "claim_tasks", "save_progress", "finish_task", "get_job")))
        print(f"gateway event loop lag (a timer's delay; every request waits it too): {loop_lag(metrics)}")
        print(f"wall time first create -> last job's end: {wall:.0f} s; gateway peak RSS {peak_rss_mib(gateway.process.pid):.0f} MiB")  # type: ignore[union-attr]
    finally:
        if gateway is not None:
            gateway.kill()
        for registry in [*caches, origin]:
            registry.stop()
        token.close()


if __name__ == "__main__":
    main()
