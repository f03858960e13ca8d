"""A second Harbor, in a process of its own: one create every ``interval`` seconds (default 0.1), timed.

Harbor's Go client keeps its connection to the provider alive, so this does too (one
``http.client`` connection, re-opened only if the gateway closes it). The process prints one
``unix-time seconds`` line per successful create on stdout and stops on SIGTERM. The token
comes in ``PROBE_TOKEN``, not on the command line, where ``ps`` would show it.

Run by ``bench_thousand_tags``:  PROBE_TOKEN=... python -m tests.benchmarks.create_probe URL BODY_FILE [INTERVAL]
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def main() -> None:
    url, body_file = sys.argv[1:3]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    body = Path(body_file).read_bytes()
    target = urlsplit(url)
    headers = {"Authorization": f"Bearer {os.environ['PROBE_TOKEN']}", "Content-Type": "application/json"}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    while not stopping:
        started = time.perf_counter()
        try:
            connection.request("POST", target.path, body, headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # reconnects on the next request
            time.sleep(interval)
            continue
        seconds = time.perf_counter() - started
        if response.status == 200:
            print(f"{time.time():.3f} {seconds:.6f}", flush=True)
        time.sleep(max(0.0, interval - seconds))


if __name__ == "__main__":
    main()
