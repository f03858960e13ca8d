"""Warming throughput: the gateway vs skopeo vs plain curl, into two cold pull-through caches.

Each way starts from a fresh set of registries holding identical content (a token-protected
origin and two distribution caches in proxy mode in front of it) and ends when every blob
is on both caches' disks:

- gateway: one Harbor-style task (``all_seed_peers``) into a mirror cluster of the two caches;
- skopeo: ``skopeo copy`` of the image through each cache in parallel (what an operator would
  script), to a throwaway directory;
- floor: parallel ``curl`` of every blob through every cache to /dev/null.

Run:  .venv/bin/python -m tests.benchmarks.bench_warming [--mib 200] [--layers 5] [--rounds 3] [--ways ...]

``--ways gateway,gateway-size,skopeo,floor`` adds the gateway with the mirror's ``verify: size``
(lengths counted instead of every byte hashed, for caches that check digests themselves).

With ``--rounds N`` the ways run interleaved N times, in an order rotated each round, and their
medians are compared: one way's single run can land on a noisy moment of a shared machine (the
same curl floor, three times in a row here: 15.7, 17.9 and 15.1 s). Each run also shows how busy
the machine was meanwhile, the registries' CPU time (how hard the way made them work for the
same bytes) and, for the gateway, its own CPU time: where the registries leave no core idle,
every second the gateway computes comes out of theirs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from tests.benchmarks.common import cpu_seconds, peak_rss_mib
from tests.conftest import CACHE_PASSWORD, CACHE_USER, USERS
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import PushedImage, TokenService, push_image, start_registry

REPOSITORY, TAG = "library/big", "1.0"


class Rig:
    """A token service, an origin with the image, and two cold caches."""

    def __init__(self, work: Path, layer_sizes: list[int]) -> None:
        self.token = TokenService(USERS, work / "token", grants={CACHE_USER: {"pull"}})
        self.origin = start_registry(work / "origin", token=self.token)
        self.image: PushedImage = push_image(self.origin, REPOSITORY, TAG, layer_sizes, seed=7)
        self.caches = [
            start_registry(
                work / f"cache{i}",
                proxy_remote=self.origin.url,
                proxy_username=CACHE_USER,
                proxy_password=CACHE_PASSWORD,
            )
            for i in range(2)
        ]

    def wait_on_disk(self, timeout: float = 1200) -> None:
        for cache in self.caches:
            for digest in self.image.blob_digests:
                if not cache.wait_for_blob(digest, timeout=timeout):
                    raise RuntimeError(f"{digest} never reached {cache.url}")

    def registry_pids(self) -> list[int]:
        return [registry.pid for registry in [self.origin, *self.caches] if registry.pid is not None]

    def close(self) -> None:
        for registry in [*self.caches, self.origin]:
            registry.stop()
        self.token.close()


class Timed(NamedTuple):
    """One way's run: wall seconds, the machine's busy core-seconds meanwhile, the registries' CPU
    (how hard the way made them work for the same bytes), and the gateway's own CPU and peak RSS."""

    seconds: float
    busy: float
    registries_cpu: float
    gateway_cpu: float | None = None
    peak_rss: float | None = None

    def __str__(self) -> str:
        text = (
            f"{self.seconds:7.2f} s   machine busy {self.busy:5.1f} of {self.seconds * (os.cpu_count() or 1):5.1f} core-seconds"
            f"   registries CPU {self.registries_cpu:5.1f} s"
        )
        if self.gateway_cpu is not None:
            text += f"   gateway CPU {self.gateway_cpu:5.1f} s   peak RSS {self.peak_rss:.0f} MiB"
        return text


class Clock:
    """Started when a way starts; ``gateway_pid``, if given, also has its CPU time and peak RSS read."""

    def __init__(self, rig: Rig, gateway_pid: int | None = None) -> None:
        self.registries = rig.registry_pids()
        self.gateway_pid = gateway_pid
        self.started, self.busy = time.monotonic(), cpu_seconds()
        self.registries_cpu = self._registries_cpu()
        self.gateway_cpu = cpu_seconds(gateway_pid) if gateway_pid is not None else 0.0

    def _registries_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.registries)

    def stop(self) -> Timed:
        seconds, busy = time.monotonic() - self.started, cpu_seconds() - self.busy
        registries = self._registries_cpu() - self.registries_cpu
        if self.gateway_pid is None:
            return Timed(seconds, busy, registries)
        return Timed(
            seconds, busy, registries, cpu_seconds(self.gateway_pid) - self.gateway_cpu, peak_rss_mib(self.gateway_pid)
        )


def by_gateway(rig: Rig, work: Path, verify: str = "digest") -> Timed:
    cluster = {
        "id": 1,
        "name": "mirrors",
        "adapter": "mirror",
        "endpoints": [{"url": c.url} for c in rig.caches],
        "verify": verify,
    }
    gateway = GatewayProcess(work / "gateway", gateway_config(work, clusters=[cluster])).start()
    try:
        header = f"Bearer {rig.token.mint(REPOSITORY)}"
        body = {
            "type": "preheat",
            "args": {
                "type": "image",
                "url": f"{rig.origin.url}/v2/{REPOSITORY}/manifests/{TAG}",
                "headers": {"Authorization": header},
                "scope": "all_seed_peers",
            },
        }
        client = gateway.client()  # creates the token (a CLI run) before the clock starts
        clock = Clock(rig, gateway.process.pid)  # type: ignore[union-attr]
        job_id = client.post("/oapi/v1/jobs", json=body).json()["id"]
        job = gateway.wait_job(job_id, timeout=1800, every=0.02)  # as often as the caches' disks are looked at, or more
        if job["state"] != "SUCCESS":
            raise RuntimeError(job["result"]["job_states"][0]["error"])
        rig.wait_on_disk()
        return clock.stop()
    finally:
        gateway.kill()


def by_skopeo(rig: Rig, work: Path) -> Timed:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SystemExit("skopeo is not installed: apt-get install skopeo")
    clock = Clock(rig)
    copies = [
        subprocess.Popen(
            [
                skopeo,
                "copy",
                "--src-tls-verify=false",
                "--quiet",
                f"docker://{cache.host}/{REPOSITORY}:{TAG}",
                f"dir:{work / f'skopeo{i}'}",
            ]
        )
        for i, cache in enumerate(rig.caches)
    ]
    if any(copy.wait() for copy in copies):
        raise RuntimeError("skopeo copy failed")
    rig.wait_on_disk()
    return clock.stop()


def by_curl(rig: Rig, work: Path) -> Timed:
    curl = shutil.which("curl") or sys.exit("curl is not installed")
    clock = Clock(rig)
    fetches = [
        subprocess.Popen([curl, "-sf", "-o", "/dev/null", f"{cache.url}/v2/{REPOSITORY}/blobs/{digest}"])
        for cache in rig.caches
        for digest in rig.image.blob_digests
    ]
    if any(fetch.wait() for fetch in fetches):
        raise RuntimeError("curl failed")
    rig.wait_on_disk()
    return clock.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=200, help="image size in MiB")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument(
        "--ways",
        default="gateway,skopeo,floor",
        help="any of gateway, gateway-size (the mirror's verify: size), skopeo, floor",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every way this many times, interleaved; medians are compared"
    )
    args = parser.parse_args()
    layer = args.mib * 1024 * 1024 // args.layers
    ways: dict[str, Callable[[Rig, Path], Timed]] = {
        "gateway": by_gateway,
        "gateway-size": lambda rig, work: by_gateway(rig, work, "size"),
        "skopeo": by_skopeo,
        "floor": by_curl,
    }
    rss: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    order = args.ways.split(",")
    for round_ in range(1, args.rounds + 1):
        for name in order[round_ - 1 :] + order[: round_ - 1]:  # rotated: no way always runs first
            work = Path(tempfile.mkdtemp(prefix=f"bench-warm-{name}-", dir="/var/tmp"))
            rig = Rig(work, [layer] * args.layers)
            try:
                timed = ways[name](rig, work)
            finally:
                rig.close()
                shutil.rmtree(work, ignore_errors=True)
            seconds.setdefault(name, []).append(timed.seconds)
            if timed.peak_rss is not None:  # the gateway's ways
                rss.setdefault(name, []).append(timed.peak_rss)
            print(f"round {round_}  {name:12} {timed}", flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"image {args.mib} MiB in {args.layers} layers, 2 cold caches, {args.rounds} round(s); medians: "
        + ", ".join(f"{name} {value:.2f} s" for name, value in median.items())
    )
    for gateway in rss:
        for other, label, goal in (("skopeo", "skopeo", "0.80"), ("floor", "floor ", "1.20")):
            if other in median:
                rounds = ", ".join(
                    f"{mine / theirs:.2f}" for mine, theirs in zip(seconds[gateway], seconds[other], strict=True)
                )
                print(
                    f"{gateway} / {label} = {median[gateway] / median[other]:.2f}x (goal <= {goal}; round by round {rounds})"
                )
        print(f"{gateway} peak RSS = {max(rss[gateway]):.0f} MiB (goal < 150)")


if __name__ == "__main__":
    main()
