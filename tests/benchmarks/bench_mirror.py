"""Serving nodes: 16 parallel pulls from the gateway's mirror vs from Debian's ``docker-registry``.

One run sets up both servers with the same image on the same disk: a plain distribution
registry (filesystem storage) that the image is pushed to, and a gateway whose ``local`` cluster
preheated it from there (then served from its OCI layout with a ``pull`` token). Each way is
then pulled ``--pulls`` times at once, every pull a node's: the manifest, then every blob, three
at a time (containerd's default), by one ``curl`` process to /dev/null, so the clients cost
little and the servers are what is measured. Both ways get one untimed warm-up round (page
cache), then ``--rounds`` timed rounds interleaved, in an order rotated each round; medians are
compared.

Also measured: manifest latency (``wrk``, 16 connections, on each server alone, and a prober's
sequential GETs while the gateway serves the blobs), and the gateway's peak RSS over the run.

Run:  .venv/bin/python -m tests.benchmarks.bench_mirror [--mib 200] [--layers 5] [--pulls 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.benchmarks.common import cpu_seconds, peak_rss_mib, wrk
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import MANIFEST_ACCEPT, PushedImage, Registry, push_image, start_registry

REPOSITORY, TAG = "library/big", "1.0"


class Server:
    """One way to pull from: a base URL and the headers a node would send."""

    def __init__(self, name: str, url: str, headers: dict[str, str], pid: int) -> None:
        self.name, self.url, self.headers, self.pid = name, url, headers, pid


def pull_all(server: Server, image: PushedImage, pulls: int) -> tuple[float, float]:
    """``pulls`` parallel pulls of the whole image; (wall seconds, the server's CPU seconds)."""
    curl = shutil.which("curl") or exit("curl is not installed")
    header_args = [arg for name, value in server.headers.items() for arg in ("-H", f"{name}: {value}")]
    manifest = f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}"
    blobs = [
        arg
        for digest in image.blob_digests
        for arg in ("-o", "/dev/null", f"{server.url}/v2/{REPOSITORY}/blobs/{digest}")
    ]
    command = [
        curl,
        "-sS",
        "--no-progress-meter",
        "--fail",
        "-w",
        "%{http_code}\n",
        *header_args,
        "-H",
        f"Accept: {MANIFEST_ACCEPT}",
        "-o",
        "/dev/null",
        manifest,
        "--next",
        "-sS",
        "--no-progress-meter",
        "--fail",
        "-w",
        "%{http_code}\n",
        *header_args,
        "--parallel",
        "--parallel-max",
        "3",
        *blobs,
    ]
    cpu, started = cpu_seconds(server.pid), time.monotonic()
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(pulls)]
    outputs = [run.communicate()[0] for run in runs]
    seconds = time.monotonic() - started
    for run, output in zip(runs, outputs, strict=True):
        codes = output.split()
        if run.returncode or codes != ["200"] * (1 + len(image.blob_digests)):
            raise RuntimeError(f"a pull from {server.name} failed: exit {run.returncode}, statuses {codes}")
    return seconds, cpu_seconds(server.pid) - cpu


class Prober(threading.Thread):
    """Sequential manifest GETs on one kept-alive connection until stopped; their latencies in ms."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.latencies, self.halt = server, [], threading.Event()

    def run(self) -> None:
        headers = {**self.server.headers, "Accept": MANIFEST_ACCEPT}
        with httpx.Client(base_url=self.server.url, headers=headers, trust_env=False, timeout=10) as client:
            while not self.halt.is_set():
                started = time.perf_counter()
                if client.get(f"/v2/{REPOSITORY}/manifests/{TAG}").status_code != 200:
                    raise RuntimeError("manifest probe failed")
                self.latencies.append((time.perf_counter() - started) * 1000)
                self.halt.wait(0.005)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def start_gateway(work: Path, registry: Registry) -> Server:
    gateway = GatewayProcess(work / "gateway", gateway_config(work / "gateway"))
    gateway.start()
    pull = gateway.create_token("nodes", "--scope", "pull")
    body = {"type": "preheat", "args": {"type": "image", "url": f"{registry.url}/v2/{REPOSITORY}/manifests/{TAG}"}}
    with gateway.client() as client:
        job = gateway.wait_job(client.post("/oapi/v1/jobs", json=body).json()["id"], timeout=600)
    if job["state"] != "SUCCESS":
        raise RuntimeError(f"preheat failed: {job}")
    server = Server("gateway", gateway.url, {"Authorization": f"Bearer {pull}"}, gateway.process.pid)  # type: ignore[union-attr]
    server.process = gateway  # type: ignore[attr-defined]
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=200, help="image size in MiB")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--pulls", type=int, default=16, help="parallel pulls per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-", dir="/var/tmp"))
    registry = start_registry(work / "registry")
    gateway: Server | None = None
    try:
        image = push_image(registry, REPOSITORY, TAG, [args.mib * 1024 * 1024 // args.layers] * args.layers, seed=9)
        gateway = start_gateway(work, registry)
        servers = {"registry": Server("registry", registry.url, {}, registry.pid or 0), "gateway": gateway}
        total_mib = args.pulls * image.total_size / (1 << 20)
        for server in servers.values():  # warm-up: both read from the page cache from now on
            pull_all(server, image, args.pulls)
        seconds: dict[str, list[float]] = {name: [] for name in servers}
        probes: list[float] = []
        order = list(servers)
        for round_ in range(1, args.rounds + 1):
            for name in order[round_ - 1 :] + order[: round_ - 1]:
                prober = Prober(servers[name]) if name == "gateway" else None
                if prober is not None:
                    prober.start()
                wall, cpu = pull_all(servers[name], image, args.pulls)
                if prober is not None:
                    prober.halt.set()
                    prober.join()
                    probes += prober.latencies
                seconds[name].append(wall)
                print(
                    f"round {round_}  {name:8} {wall:6.2f} s  {total_mib / wall:7.0f} MiB/s  server CPU {cpu:5.1f} s",
                    flush=True,
                )
        manifests = {
            name: wrk(
                f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}",
                connections=16,
                seconds=5,
                headers={**server.headers, "Accept": MANIFEST_ACCEPT},
            )
            for name, server in servers.items()
        }
        rss = peak_rss_mib(gateway.pid)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        ratio = median["registry"] / median["gateway"]
        by_round = ", ".join(
            f"{theirs / mine:.2f}" for mine, theirs in zip(seconds["gateway"], seconds["registry"], strict=True)
        )
        print(
            f"image {args.mib} MiB in {args.layers} layers, {args.pulls} parallel pulls, {args.rounds} round(s); medians: "
            + ", ".join(f"{name} {value:.2f} s ({total_mib / value:.0f} MiB/s)" for name, value in median.items())
        )
        print(f"gateway throughput / registry = {ratio:.2f}x (goal >= 1.0; round by round {by_round})")
        for name, result in manifests.items():
            print(f"manifest GET, wrk 16 connections, {name:8}: {result}")
        print(
            f"gateway manifest p99 = {manifests['gateway'].p99_ms:.2f} ms (goal < 10); while serving the blobs: "
            f"p50 {percentile(probes, 0.5):.2f} ms, p99 {percentile(probes, 0.99):.2f} ms over {len(probes)} probes"
        )
        print(f"gateway peak RSS = {rss:.0f} MiB (goal < 150)")
    finally:
        if gateway is not None:
            gateway.process.kill()  # type: ignore[attr-defined]
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
