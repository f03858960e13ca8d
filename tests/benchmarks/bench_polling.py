"""Status polling as Harbor does it: GET /oapi/v1/jobs/{id} of a job still warming.

Harbor's job loop polls a task every 10 s and stops at the first SUCCESS or FAILURE, so the
polls it sends are of pending jobs, plus one terminal read each. The benchmark keeps jobs
pending for real: their image's one large layer comes from a registry behind a relay capped
at ``--rate`` bytes a second (``tests.tcprelay``), so the runner is mid-transfer and
saves progress about once a second while the jobs are polled.

Two parts:

1. Throughput: wrk (``--connections``) against the pending job's status, against a finished
   job's, and against a bare Starlette route returning the pending reply's bytes
   (``bare_app``: uvicorn's own httptools protocol on uvloop), in interleaved rounds whose
   order rotates; the medians are compared and every round is printed. On two or more cores
   the servers run on a core of their own and wrk on the others (``common.split_cores``).
2. Harbor's pattern: ``--jobs`` pending jobs of the same image, each polled every
   ``--interval`` seconds on a connection of its own; after ``--pending-seconds`` the relay
   is uncapped, the jobs end, and each poller reads its job's terminal state once and stops.
   Reported: p50/p99 of the pending polls and of the terminal reads, and every failed poll.

Run:  .venv/bin/python -m tests.benchmarks.bench_polling [--seconds 10] [--rounds 5] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

from adapters.transport import new_client
from tests.benchmarks.common import BareApp, WrkResult, cpu_seconds, peak_rss_mib, split_cores, wrk
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import free_port, push_image, start_registry
from tests.tcprelay import TcpRelay

REPOSITORY = "library/slow"
LAYER_BYTES = 64 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="wrk run length")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved wrk rounds")
    parser.add_argument("--jobs", type=int, default=1000, help="Harbor's pattern: pending jobs, one poller each")
    parser.add_argument("--interval", type=float, default=10.0, help="Harbor's poll interval")
    parser.add_argument("--pending-seconds", type=float, default=60.0, help="how long the jobs are held pending")
    parser.add_argument("--rate", type=int, default=48 << 10, help="the relay's cap, bytes per second")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-polling-"))
    cores = split_cores()

    origin = start_registry(work / "origin")
    push_image(origin, REPOSITORY, "1.0", [LAYER_BYTES], seed=11)
    relay = TcpRelay("127.0.0.1", origin.port, rate_per_connection=args.rate)
    gateway = GatewayProcess(work / "gw", gateway_config(work)).start()
    bare: BareApp | None = None
    try:
        headers = {"Authorization": f"Bearer {gateway.token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
            pending_id = create(client, f"{relay.url}/v2/{REPOSITORY}/manifests/1.0")
            wait_transferring(client, pending_id)
            # An image on a closed port fails at once: a finished job, for comparison.
            finished_id = create(client, f"http://127.0.0.1:{free_port()}/v2/{REPOSITORY}/manifests/1.0")
            gateway.wait_job(finished_id)
            body = client.get(f"/oapi/v1/jobs/{pending_id}").content
        (work / "body.json").write_bytes(body)
        bare = BareApp(work / "body.json")
        if cores is not None:  # each server on its own core, wrk on the others
            for pid in (gateway.process.pid, bare.process.pid):  # type: ignore[union-attr]
                os.sched_setaffinity(pid, cores[0])
        targets = {
            "bare": (f"{bare.url}/oapi/v1/jobs/{pending_id}", {}),
            "pending": (f"{gateway.url}/oapi/v1/jobs/{pending_id}", headers),
            "finished": (f"{gateway.url}/oapi/v1/jobs/{finished_id}", headers),
        }
        throughput(targets, len(body), args, cores[1] if cores else None)
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
            assert client.get(f"/oapi/v1/jobs/{pending_id}").json()["state"] == "PENDING", "the job ended too early"
        cpu_before = cpu_seconds(gateway.process.pid)  # type: ignore[union-attr]
        figures = uvloop.run(harbor_pattern(gateway, relay, args))
        cpu = cpu_seconds(gateway.process.pid) - cpu_before  # type: ignore[union-attr]
        figures.report(args, cpu)
        print(f"gateway peak RSS {peak_rss_mib(gateway.process.pid):.0f} MiB")  # type: ignore[union-attr]
    finally:
        if bare is not None:
            bare.stop()
        gateway.kill()
        relay.close()
        origin.stop()


def create(client: httpx.Client, url: str) -> int:
    response = client.post("/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": url}})
    response.raise_for_status()
    return int(response.json()["id"])


def wait_transferring(client: httpx.Client, job_id: int, timeout: float = 60.0) -> None:
    """Until the job's layer is arriving: it is then pending for as long as the relay stays capped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/oapi/v1/jobs/{job_id}").json()
        assert job["state"] == "PENDING", job
        if any(s["progress"].get("bytes_transferred") for s in job["result"]["job_states"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} transferred nothing within {timeout}s")


def throughput(
    targets: dict[str, tuple[str, dict[str, str]]], size: int, args: argparse.Namespace, cores: set[int] | None
) -> None:
    threads = len(cores) if cores else 2
    for url, sent in targets.values():  # warm up
        wrk(url, seconds=2, connections=args.connections, headers=sent, threads=threads, cores=cores)
    rounds: list[dict[str, WrkResult]] = []
    for number in range(args.rounds):  # interleaved, the order rotating, so a noisy neighbour hits all alike
        names = list(targets)
        order = names[number % len(names) :] + names[: number % len(names)]
        rounds.append(
            {
                name: wrk(
                    targets[name][0],
                    seconds=args.seconds,
                    connections=args.connections,
                    headers=targets[name][1],
                    threads=threads,
                    cores=cores,
                )
                for name in order
            }
        )
    print(
        f"GET /oapi/v1/jobs/{{id}}, {size} bytes, wrk {args.connections} connections, {args.seconds}s per run, "
        f"{args.rounds} rounds, "
        + (f"wrk on cores {sorted(cores)}, the servers on another" if cores else "one core for all")
    )
    for number, result in enumerate(rounds, 1):
        bare = result["bare"].requests_per_second
        for name, figures in result.items():
            ratio = "" if name == "bare" else f"   {figures.requests_per_second / bare:.2f}x the bare route"
            print(f"round {number}  {name:9}: {figures}{ratio}")
    for name in targets:
        if name == "bare":
            continue
        ratios = [r[name].requests_per_second / r["bare"].requests_per_second for r in rounds]
        p99s = [r[name].p99_ms for r in rounds]
        print(
            f"{name:9} median {statistics.median(r[name].requests_per_second for r in rounds):7.0f} req/s, "
            f"{statistics.median(ratios):.2f}x the bare route's {statistics.median(r['bare'].requests_per_second for r in rounds):.0f} "
            f"(worst round {min(ratios):.2f}x), p99 median {statistics.median(p99s):.1f} ms (worst {max(p99s):.1f} ms), "
            f"errors {sum(r[name].errors for r in rounds)}"
        )
    print(
        f"goal for pending: >= 0.80x the bare route, p99 < 20 ms; the bare route's p99 median "
        f"{statistics.median(r['bare'].p99_ms for r in rounds):.1f} ms"
    )


@dataclass
class HarborFigures:
    created: int = 0
    pending: list[float] = field(default_factory=list)
    """Seconds each poll that found its job PENDING took."""
    terminal: list[float] = field(default_factory=list)
    """Seconds each terminal read took (one per job)."""
    states: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    """How late each poll left against its schedule: this process's own lag, not the gateway's."""
    wall: float = 0.0

    def report(self, args: argparse.Namespace, cpu: float) -> None:
        polls = len(self.pending) + len(self.terminal) + len(self.failures)
        print(
            f"Harbor's pattern: {self.created} pending jobs, each polled every {args.interval:g} s, held pending "
            f"{args.pending_seconds:g} s, then one terminal read each; {polls} polls in {self.wall:.0f} s"
        )
        print(f"  pending polls : {len(self.pending):6}   {percentiles(self.pending)}")
        print(f"  terminal reads: {len(self.terminal):6}   {percentiles(self.terminal)}   states {dict(self.states)}")
        print(f"  failed polls  : {len(self.failures)}{'  ' + '; '.join(self.failures[:5]) if self.failures else ''}")
        print(
            f"  poller lateness {percentiles(self.late)} (the load generator's own lag); "
            f"gateway CPU {cpu:.1f} s ({1e3 * cpu / max(polls, 1):.2f} ms a poll, warming included)"
        )


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "p50 -  p99 -"
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return 1e3 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return f"p50 {at(0.50):6.2f} ms   p99 {at(0.99):6.2f} ms   max {1e3 * ordered[-1]:6.2f} ms"


async def harbor_pattern(gateway: GatewayProcess, relay: TcpRelay, args: argparse.Namespace) -> HarborFigures:
    figures = HarborFigures()
    limits = httpx.Limits(max_connections=args.jobs + 8, max_keepalive_connections=args.jobs + 8)
    client = new_client(
        timeout=30, limits=limits, trust_env=False, headers={"Authorization": f"Bearer {gateway.token}"}
    )
    client.base_url = httpx.URL(gateway.url)
    url = f"{relay.url}/v2/{REPOSITORY}/manifests/1.0"
    async with client:
        creating = asyncio.Semaphore(32)

        async def create_one() -> int:
            async with creating:
                response = await client.post(
                    "/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": url}}
                )
            response.raise_for_status()
            return int(response.json()["id"])

        ids = await asyncio.gather(*(create_one() for _ in range(args.jobs)))
        figures.created = len(ids)
        started = time.monotonic()
        rng = random.Random(5)

        async def poller(job_id: int) -> None:
            due = started + rng.uniform(0, args.interval)  # a policy's tasks start spread out
            while True:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                figures.late.append(time.monotonic() - due)
                sent = time.perf_counter()
                try:
                    response = await client.get(f"/oapi/v1/jobs/{job_id}")
                    seconds = time.perf_counter() - sent
                    state = response.json()["state"] if response.status_code == 200 else None
                except (httpx.TransportError, ValueError, KeyError) as error:
                    figures.failures.append(f"job {job_id}: {type(error).__name__}")
                    return
                if state is None:
                    figures.failures.append(f"job {job_id}: HTTP {response.status_code}")
                    return
                if state != "PENDING":
                    figures.terminal.append(seconds)
                    figures.states[state] += 1
                    return
                figures.pending.append(seconds)
                due += args.interval

        async def uncap_later() -> None:
            await asyncio.sleep(args.pending_seconds)
            relay.uncap()

        uncapping = asyncio.create_task(uncap_later())
        await asyncio.gather(*(poller(job_id) for job_id in ids))
        await uncapping
        figures.wall = time.monotonic() - started
    return figures


if __name__ == "__main__":
    main()
