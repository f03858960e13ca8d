"""Status polling: the gateway's GET /oapi/v1/jobs/{id} for a finished job vs a bare Starlette route.

Harbor polls every task every 10 s; a policy over a thousand tags means a thousand pollers.
Both servers run the same uvicorn (uvloop + httptools, one process) and return the same
bytes; wrk drives each in turn from the same machine, in interleaved rounds whose order
alternates, and the medians are compared (every round is printed, and the worst one too). Run:

    .venv/bin/python -m tests.benchmarks.bench_polling [--seconds 10] [--connections 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx

from tests.benchmarks.common import BareApp, peak_rss_mib, wrk
from tests.gateway_process import GatewayProcess, gateway_config
from tests.registry import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-polling-"))

    gateway = GatewayProcess(work / "gw", gateway_config(work, allow=["*"])).start()
    client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.token}"})
    # A file job to a closed port fails at once: a finished job, immutable from then on.
    job_id = client.post("/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": f"http://127.0.0.1:{free_port()}/v2/library/app/manifests/1.0"}}).json()["id"]
    gateway.wait_job(job_id)
    body = client.get(f"/oapi/v1/jobs/{job_id}").content
    (work / "body.json").write_bytes(body)

    bare = BareApp(work / "body.json")
    try:
        headers = {"Authorization": f"Bearer {gateway.token}"}
        wrk(f"{gateway.url}/oapi/v1/jobs/{job_id}", seconds=2, connections=args.connections, headers=headers)  # warm up
        wrk(f"{bare.url}/oapi/v1/jobs/{job_id}", seconds=2, connections=args.connections)
        bare_url, gateway_url = f"{bare.url}/oapi/v1/jobs/{job_id}", f"{gateway.url}/oapi/v1/jobs/{job_id}"
        rounds = []
        for number in range(args.rounds):  # interleaved, the order alternating, so a noisy neighbour hits both alike
            results = {}
            for name in (("bare", "gateway") if number % 2 == 0 else ("gateway", "bare")):
                results[name] = wrk(bare_url, seconds=args.seconds, connections=args.connections) if name == "bare" else \
                    wrk(gateway_url, seconds=args.seconds, connections=args.connections, headers=headers)
            rounds.append((results["bare"], results["gateway"]))
        print(f"GET /oapi/v1/jobs/{{id}} of a finished job, {len(body)} bytes, {args.connections} connections, {args.seconds}s per run")
        ratios = [gateway_result.requests_per_second / bare_result.requests_per_second for bare_result, gateway_result in rounds]
        for number, ((bare_result, gateway_result), ratio) in enumerate(zip(rounds, ratios, strict=True), 1):
            print(f"round {number}  bare starlette : {bare_result}")
            print(f"round {number}  gateway        : {gateway_result}   ratio {ratio:.2f}x")
        p99s = [gateway_result.p99_ms for _, gateway_result in rounds]
        print(f"gateway/bare throughput, median of {len(rounds)} rounds: {statistics.median(ratios):.2f}x (goal >= 0.80; worst round {min(ratios):.2f}x); "
              f"gateway p99, median: {statistics.median(p99s):.1f} ms (goal < 20; worst round {max(p99s):.1f} ms, "
              f"the bare route's worst {max(b.p99_ms for b, _ in rounds):.1f} ms); "
              f"gateway peak RSS {peak_rss_mib(gateway.process.pid):.0f} MiB")  # type: ignore[union-attr]
    finally:
        bare.stop()
        gateway.kill()


if __name__ == "__main__":
    main()
