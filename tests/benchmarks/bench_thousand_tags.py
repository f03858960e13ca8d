"""A policy over a thousand tags: 1,000 Harbor tasks (health, create, poll) within a few seconds.

The tags of one repository share four base layers and differ in one small layer (and their
config) each; the target is a mirror cluster of two pull-through caches, ``all_seed_peers``.
Reported: every task's outcome, p99 of the create call, blob fetches per unique blob and
cache (gateway counter and the caches' own logs; 1.00 means each blob went to each cache
exactly once), wall time from first create to last SUCCESS, and the gateway's peak RSS.
Tasks poll every 10 s, as Harbor does (``--poll`` to change it); the wall time is read from
the jobs' own ``updated_at``, so it does not depend on when the last poll happened.

The tasks run in a few load-generator processes (``harbor_tasks``) on one schedule: a single
Python process falls behind under a thousand tasks and sends them in clumps (59 creates
within 50 ms where the schedule had 29), which Harbor's Go job service would not. How clumped
the creates really left is reported beside the schedule. The create latency is also taken by a
second Harbor (``create_probe``, its own process), since the generators' figures include
their own queueing. A twin probe times a bare Starlette route
(``bare_app``: the same POST answered with fixed bytes, no work) on the same machine at the
same moments: what any Python service would see there. Also reported: who used the two
cores, and how long the gateway's event-loop thread waited for one. ``--own-core`` gives the
gateway, the bare route and both probes core 1 and everything else core 0, the way
production puts Harbor and the registries on other machines.

Run:  .venv/bin/python -m tests.benchmarks.bench_thousand_tags [--tags 1000] [--spread 3] [--generators 4] [--own-core]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.benchmarks.common import BareApp, cpu_seconds, peak_rss_mib, pin
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


def push_tags(origin: object, token: TokenService, count: int, base_sizes: list[int]) -> tuple[set[str], str]:
    """Push base layers once, then per tag a config, a small layer and a manifest.

    Returns the unique blob digests and the digest of tag v0's manifest.
    """
    auth = f"Bearer {token.mint(REPOSITORY, ('pull', 'push'), expires_in=3600)}"
    base = [
        push_blob(origin, REPOSITORY, b"".join(random_blob_chunks(size, seed=900 + i)), auth_header=auth)
        for i, size in enumerate(base_sizes)
    ]  # type: ignore[arg-type]

    def one(tag: int) -> tuple[set[str], str]:
        layer = push_blob(origin, REPOSITORY, f"tag {tag} ".encode() * 200, auth_header=auth)  # type: ignore[arg-type]
        config = push_blob(
            origin,
            REPOSITORY,
            json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode(),
            auth_header=auth,
        )  # type: ignore[arg-type]
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": DOCKER_CONFIG_MEDIA_TYPE, "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": DOCKER_LAYER_MEDIA_TYPE, "digest": d, "size": s} for d, s in [*base, layer]],
        }
        digest = _put_manifest(
            origin, REPOSITORY, f"v{tag}", json.dumps(manifest).encode(), DOCKER_MANIFEST_MEDIA_TYPE, auth
        )  # type: ignore[arg-type]
        return {layer[0], config[0]}, digest

    unique = {digest for digest, _ in base}
    with ThreadPoolExecutor(8) as pool:
        manifests = []
        for digests, manifest_digest in pool.map(one, range(count)):
            unique |= digests
            manifests.append(manifest_digest)
    return unique, manifests[0]


def run_policy(
    gateway: GatewayProcess,
    origin_url: str,
    token: TokenService,
    tags: int,
    spread: float,
    poll: float,
    generators: int,
    work: Path,
) -> Policy:
    """Run the tasks in ``generators`` processes (``harbor_tasks``) on one schedule, starting 2 s from now."""
    header = f"Bearer {token.mint(REPOSITORY, expires_in=3600)}"
    begin = time.time() + 2.0  # the generators import and connect meanwhile
    planned = [
        (f"{origin_url}/v2/{REPOSITORY}/manifests/v{tag}", begin + random.uniform(0, spread)) for tag in range(tags)
    ]
    processes = []
    for share in range(generators):
        plan = work / f"harbor-tasks-{share}.json"
        plan.write_text(
            json.dumps({"gateway": gateway.url, "poll": poll, "header": header, "tasks": planned[share::generators]})
        )
        with plan.open() as stdin:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.benchmarks.harbor_tasks"],
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "HARBOR_TOKEN": gateway.token},
                )
            )
    outcomes = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"a load generator (harbor_tasks) exited {process.returncode}; its error is above")
        outcomes += json.loads(output)
    return Policy(begin, [start for _, start in planned], outcomes)


class Policy:
    """What the Harbor tasks saw: per task its state, how late it woke, when its create left, how long that took,
    when its job ended."""

    def __init__(self, begin: float, planned: list[float], outcomes: list[list[Any]]) -> None:
        self.begin, self.planned = begin, planned
        self.states = [state for state, _, _, _, _ in outcomes]
        self.late = [late for _, late, _, _, _ in outcomes]
        self.sent = [sent for _, _, sent, _, _ in outcomes if sent]
        self.creates = [seconds for _, _, sent, seconds, _ in outcomes if sent]
        self.wall = max(ended for _, _, _, _, ended in outcomes) - begin

    def arrivals(self, window: float = 0.05) -> str:
        """The most creates planned, and sent, within any ``window`` seconds (a load generator that
        falls behind sends its overdue tasks together), and how late the generators woke the tasks."""
        return (
            f"at most {most_within(self.planned, window)} planned and {most_within(self.sent, window)} sent within any "
            f"{window * 1000:.0f} ms; the generators woke the tasks late by {percentiles(self.late, 'tasks')}: their own lag"
        )


def most_within(times: list[float], window: float) -> int:
    ordered, most, first = sorted(times), 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


class CreateProbe:
    """A second Harbor in its own process (``create_probe``): a create every 100 ms on a kept-alive connection."""

    def __init__(self, jobs_url: str, gateway_token: str, body: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.create_probe", jobs_url, str(body), "0.1"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PROBE_TOKEN": gateway_token},
        )

    def stop(self) -> list[tuple[float, float]]:
        """(when, seconds) of every successful create."""
        self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        return [(float(when), float(seconds)) for when, seconds in (line.split() for line in output.splitlines())]


def _job_sized_body(path: Path) -> Path:
    """What the bare route answers a create with: a pending job the size of the gateway's answer."""
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    path.write_text(
        json.dumps(
            {
                "id": 1,
                "task_id": "group_" + "0" * 36,
                "bio": "",
                "type": "preheat",
                "state": "PENDING",
                "args": {
                    "type": "image",
                    "url": f"http://127.0.0.1:5000/v2/{REPOSITORY}/manifests/v0",
                    "tag": "",
                    "filtered_query_params": "",
                    "scope": "all_seed_peers",
                    "concurrent_count": 0,
                    "platform": "",
                    "timeout": 0,
                },
                "result": None,
                "user_id": 0,
                "scheduler_clusters": [{"id": 1}],
                "created_at": now,
                "updated_at": now,
            }
        )
    )
    return path


def percentiles(seconds: list[float], what: str = "creates") -> str:
    ordered = sorted(seconds)
    if not ordered:
        return "no samples"
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000:.1f} ms ({len(ordered)} {what})"


class Scrape:
    """The gateway's ``/metrics``, read once with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def mean_ms(self, histogram: str, **labels: str) -> float:
        return 1000 * self.total(f"{histogram}_sum", **labels) / max(1.0, self.total(f"{histogram}_count", **labels))

    def bucket_holding(self, histogram: str, share: float, **labels: str) -> float:
        """The upper bound of the first bucket that holds ``share`` of the observations."""
        cumulative: dict[float, float] = {}
        for sample in self.samples:
            if sample.name == f"{histogram}_bucket" and labels.items() <= sample.labels.items():
                bound = float(sample.labels["le"])
                cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
        wanted = share * self.total(f"{histogram}_count", **labels)
        return next(bound for bound in sorted(cumulative) if cumulative[bound] >= wanted)


def server_view(scrape: Scrape) -> dict[str, float]:
    """Mean latencies (ms) the gateway measured itself, from its Prometheus histograms."""
    view = {
        "post": scrape.mean_ms(
            "preheat_gateway_http_request_duration_seconds", method="POST", route="/oapi/v1/jobs", status="200"
        )
    }
    for op in ("create_job", "claim_tasks", "save_progress", "finish_task", "get_job"):
        view[op] = scrape.mean_ms("preheat_gateway_store_duration_seconds", operation=op)
    return view


def loop_lag(scrape: Scrape) -> str:
    """Mean and the bucket holding p99 of the gateway's event loop lag histogram."""
    name = "preheat_gateway_event_loop_lag_seconds"
    p99 = scrape.bucket_holding(name, 0.99)
    return (
        f"mean {scrape.mean_ms(name):.1f} ms, p99 <= {p99 * 1000:.0f} ms ({scrape.total(f'{name}_count'):.0f} samples)"
    )


def gc_pauses(scrape: Scrape) -> str:
    """The gateway's garbage collections over its life, by generation, from its pause histogram."""
    name = "preheat_gateway_gc_pause_seconds"
    return "; ".join(
        f"{kind} {scrape.total(f'{name}_count', generation=g):.0f} taking {scrape.total(f'{name}_sum', generation=g) * 1000:.0f} ms, "
        f"the longest <= {scrape.bucket_holding(name, 1.0, generation=g):g} s"
        for g, kind in (("0", "young"), ("1", "middle"), ("2", "full"))
    )


class CpuShares:
    """Who used the machine's cores during the run: the gateway, the registries, the token service, the load."""

    def __init__(self, gateway_pid: int, registry_pids: dict[str, int]) -> None:
        self.gateway_pid, self.registry_pids = gateway_pid, registry_pids
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        loop_ran, loop_waited = self._loop_thread()
        return {
            "machine": cpu_seconds(),
            "wall": time.monotonic(),
            "gateway": cpu_seconds(self.gateway_pid),
            **{name: cpu_seconds(pid) for name, pid in self.registry_pids.items()},
            "token service": own.ru_utime + own.ru_stime,
            "load generators and probes": children.ru_utime + children.ru_stime,
            "loop ran": loop_ran,
            "loop waited": loop_waited,
        }

    def _loop_thread(self) -> tuple[float, float]:
        """Seconds the gateway's main thread (its event loop) ran, and waited runnable for a core."""
        ran, waited, _slices = Path(f"/proc/{self.gateway_pid}/schedstat").read_text().split()
        return int(ran) / 1e9, int(waited) / 1e9

    def report(self) -> str:
        end = self._now()
        used = {name: end[name] - self.start[name] for name in end}
        capacity = used.pop("wall") * (os.cpu_count() or 1)
        machine = used.pop("machine")
        loop_ran, loop_waited = used.pop("loop ran"), used.pop("loop waited")
        parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in used.items())
        return (
            f"CPU used over the run: machine {machine:.0f} of {capacity:.0f} core-seconds; {parts}. "
            f"The gateway's event-loop thread ran {loop_ran:.0f} s and waited {loop_waited:.0f} s for a free core"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=3.0, help="seconds over which the tasks arrive")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between a task's polls (Harbor: 10)")
    parser.add_argument("--base-mib", type=int, default=4, help="size of each of the four base layers")
    parser.add_argument("--workers", type=int, default=32, help="the gateway's runner.workers")
    parser.add_argument("--generators", type=int, default=4, help="load-generator processes the tasks are split over")
    parser.add_argument(
        "--own-core",
        action="store_true",
        help="give the gateway (and the probe) one core and everything else the other, as if Harbor and "
        "the registries were other machines",
    )
    args = parser.parse_args()
    if args.own_core:
        if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
            raise SystemExit("--own-core needs cores 0 and 1")
        pin(os.getpid(), {0})  # the registries, the token service and the load generator inherit core 0
    work = Path(tempfile.mkdtemp(prefix="bench-tags-", dir="/var/tmp"))
    token = TokenService(USERS, work / "token", grants={CACHE_USER: {"pull"}})
    origin = start_registry(work / "origin", token=token)
    caches = []
    gateway = bare = None
    try:
        pushed = time.monotonic()
        unique, first_manifest = push_tags(origin, token, args.tags, [args.base_mib << 20] * 4)
        print(f"pushed {args.tags} tags ({len(unique)} unique blobs) in {time.monotonic() - pushed:.0f}s", flush=True)
        caches = [
            start_registry(
                work / f"cache{i}", proxy_remote=origin.url, proxy_username=CACHE_USER, proxy_password=CACHE_PASSWORD
            )
            for i in range(2)
        ]
        cluster = {"id": 1, "name": "mirrors", "adapter": "mirror", "endpoints": [{"url": c.url} for c in caches]}
        gateway = GatewayProcess(
            work / "gateway", gateway_config(work, clusters=[cluster], runner={"workers": args.workers})
        ).start()
        bare = BareApp(_job_sized_body(work / "bare-body.json"))
        if args.own_core:
            pin(gateway.process.pid, {1})  # type: ignore[union-attr]
            pin(bare.process.pid, {1})
        _ = gateway.token  # created before the clock starts

        cpu = CpuShares(gateway.process.pid, {"origin": origin.pid, "cache 1": caches[0].pid, "cache 2": caches[1].pid})  # type: ignore[union-attr]
        # The probe's own jobs name v0 by digest: a cache answers those from its disk without
        # asking the origin again, so the instrument adds as little registry work as it can.
        body = work / "probe-body.json"
        body.write_text(
            json.dumps(
                {
                    "type": "preheat",
                    "args": {
                        "type": "image",
                        "url": f"{origin.url}/v2/{REPOSITORY}/manifests/{first_manifest}",
                        "headers": {"Authorization": f"Bearer {token.mint(REPOSITORY, expires_in=3600)}"},
                    },
                }
            )
        )
        probe = CreateProbe(f"{gateway.url}/oapi/v1/jobs", gateway.token, body)
        bare_probe = CreateProbe(f"{bare.url}/oapi/v1/jobs", gateway.token, body)
        if args.own_core:
            pin(probe.process.pid, {1})
            pin(bare_probe.process.pid, {1})
        policy = run_policy(gateway, origin.url, token, args.tags, args.spread, args.poll, args.generators, work)
        arrivals_end = policy.begin + args.spread + 2
        probed, bare_probed = probe.stop(), bare_probe.stop()
        shares = cpu.report()

        scrape = Scrape(httpx.get(f"{gateway.url}/metrics").text)
        fetched = scrape.total("preheat_gateway_blob_fetches_total", outcome="fetched")
        stored = sum(cache.upstream_blob_fetches() for cache in caches)
        expected = len(unique) * len(caches)
        print(
            f"tasks: {args.tags}, outcomes: { {o: policy.states.count(o) for o in set(policy.states)} }; "
            f"arrivals: {policy.arrivals()}"
        )
        print(
            f"create latency of the tasks themselves ({args.generators} load-generator processes, so including their own queueing): "
            f"{percentiles(policy.creates)}"
        )
        for name, samples in (
            ("the gateway's create (goal p99 < 50 ms)", probed),
            ("a bare Starlette route, same machine, same moments", bare_probed),
        ):
            print(
                f"create latency seen by a second Harbor (create_probe: one create every 100 ms, kept-alive connection) on {name}: "
                f"whole run {percentiles([s for _, s in samples])}; while the tasks arrive {percentiles([s for t, s in samples if t < arrivals_end])}; "
                f"afterwards {percentiles([s for t, s in samples if t >= arrivals_end])}"
            )
        print(
            f"gateway blob fetches / (unique blobs x caches) = {fetched:.0f} / {expected} = {fetched / expected:.2f} (goal 1.00)"
        )
        print(
            f"blobs the caches fetched from the origin and stored / (unique blobs x caches) = {stored} / {expected} = {stored / expected:.2f}"
        )
        server = server_view(scrape)
        print(
            f"server side: POST /oapi/v1/jobs mean {server['post']:.1f} ms; store mean per call (ms): "
            + ", ".join(
                f"{op} {server[op]:.1f}"
                for op in ("create_job", "claim_tasks", "save_progress", "finish_task", "get_job")
            )
        )
        print(f"gateway event loop lag (a timer's delay; every request waits it too): {loop_lag(scrape)}")
        print(f"gateway garbage collections (each stops the event loop): {gc_pauses(scrape)}")
        print(shares)
        print(
            f"wall time first create -> last job's end: {policy.wall:.0f} s; gateway peak RSS {peak_rss_mib(gateway.process.pid):.0f} MiB"
        )  # type: ignore[union-attr]
    finally:
        if gateway is not None:
            gateway.kill()
        if bare is not None:
            bare.stop()
        for registry in [*caches, origin]:
            registry.stop()
        token.close()


if __name__ == "__main__":
    main()
