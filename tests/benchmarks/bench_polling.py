"""Status polling: the gateway's GET /oapi/v1/jobs/{id} for a finished job vs a bare Starlette route.

Harbor polls every task every 10 s; a policy over a thousand tags means a thousand pollers.
Both servers run the same uvicorn (uvloop, the one-send httptools protocol, one process) and
return the same bytes; wrk drives each in turn from the same machine, in interleaved rounds whose order
rotates, and the medians are compared (every round is printed, and the worst one too). A third
server, the bare route on uvicorn's own httptools protocol (a response's head and body in two
sends), shows what the one-send protocol is worth. Run:

    .venv/bin/python -m tests.benchmarks.bench_polling [--seconds 10] [--connections 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx

from tests.benchmarks.common import BareApp, WrkResult, peak_rss_mib, wrk
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
    job_id = client.post(
        "/oapi/v1/jobs",
        json={
            "type": "preheat",
            "args": {"type": "image", "url": f"http://127.0.0.1:{free_port()}/v2/library/app/manifests/1.0"},
        },
    ).json()["id"]
    gateway.wait_job(job_id)
    body = client.get(f"/oapi/v1/jobs/{job_id}").content
    (work / "body.json").write_bytes(body)

    bare, stock = BareApp(work / "body.json"), BareApp(work / "body.json", stock=True)
    try:
        headers = {"Authorization": f"Bearer {gateway.token}"}
        path = f"/oapi/v1/jobs/{job_id}"
        targets = {
            "bare": (f"{bare.url}{path}", {}),
            "gateway": (f"{gateway.url}{path}", headers),
            "stock": (f"{stock.url}{path}", {}),
        }
        for url, sent in targets.values():  # warm up
            wrk(url, seconds=2, connections=args.connections, headers=sent)
        rounds: list[dict[str, WrkResult]] = []
        for number in range(args.rounds):  # interleaved, the order rotating, so a noisy neighbour hits all alike
            names = list(targets)
            order = names[number % len(names) :] + names[: number % len(names)]
            rounds.append(
                {
                    name: wrk(
                        targets[name][0], seconds=args.seconds, connections=args.connections, headers=targets[name][1]
                    )
                    for name in order
                }
            )
        print(
            f"GET /oapi/v1/jobs/{{id}} of a finished job, {len(body)} bytes, {args.connections} connections, {args.seconds}s per run"
        )
        ratios = [r["gateway"].requests_per_second / r["bare"].requests_per_second for r in rounds]
        stock_ratios = [r["bare"].requests_per_second / r["stock"].requests_per_second for r in rounds]
        for number, (result, ratio, stock_ratio) in enumerate(zip(rounds, ratios, stock_ratios, strict=True), 1):
            print(f"round {number}  bare starlette : {result['bare']}")
            print(f"round {number}  gateway        : {result['gateway']}   ratio {ratio:.2f}x")
            print(
                f"round {number}  bare, stock    : {result['stock']}   (uvicorn's own protocol: the bare route is {stock_ratio:.2f}x this)"
            )
        p99s = [r["gateway"].p99_ms for r in rounds]
        print(
            f"gateway/bare throughput, median of {len(rounds)} rounds: {statistics.median(ratios):.2f}x (goal >= 0.80; worst round {min(ratios):.2f}x); "
            f"gateway p99, median: {statistics.median(p99s):.1f} ms (goal < 20; worst round {max(p99s):.1f} ms, "
            f"the bare route's worst {max(r['bare'].p99_ms for r in rounds):.1f} ms); "
            f"gateway peak RSS {peak_rss_mib(gateway.process.pid):.0f} MiB"
        )  # type: ignore[union-attr]
        print(
            f"one send per response vs uvicorn's two, the same bare route: {statistics.median(stock_ratios):.2f}x the throughput (median), "
            f"p99 {statistics.median(r['bare'].p99_ms for r in rounds):.1f} vs {statistics.median(r['stock'].p99_ms for r in rounds):.1f} ms"
        )
    finally:
        bare.stop()
        stock.stop()
        gateway.kill()


if __name__ == "__main__":
    main()
