"""Instructions per status poll, counted by callgrind: the gateway's against a bare Starlette route's.

Each poll is fed to the server's own protocol (``gateway.serving``; uvicorn's for the bare
route) over a stand-in transport and answered in full, the pending job's reply coming from
the one-second status cache; the kernel's part (sockets, system calls) is left out. Counted
instructions do not depend on what else the machine is doing, so a change to the poll path
can be measured on a busy machine: each side is run twice under ``valgrind --tool=callgrind``,
with 0 and with ``--requests`` polls after the same warm-up, and the difference divided.

Run:  .venv/bin/python -m tests.benchmarks.bench_poll_instructions [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

WARM_UP = 200


class _Socket:
    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 50000)


class _Transport(asyncio.Transport):
    """Counts writes; says it is plain TCP, so the gateway offers zero-copy as on a real socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080), "socket": _Socket()}
        return extra.get(name, default)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _gateway() -> tuple[Any, type[Any], dict[str, Any], bytes]:
    from gateway.app import create_app
    from gateway.auth import hash_token, new_token
    from gateway.serving import Limits, protocol_class
    from tests.benchmarks.bench_request_cost import HARBOR_CREATE, call, embedded_config

    work = Path(tempfile.mkdtemp(prefix="bench-instructions-", dir="/var/tmp"))
    app = create_app(embedded_config(work, "bench_poll_instructions"))
    gateway = app.state.gateway
    await gateway.store.open()  # no lifespan: the runner stays stopped, the job stays pending
    app.state.ready = True
    token = new_token()
    await gateway.store.create_token("bench", hash_token(token), ["job"], None)
    auth = [(b"authorization", f"Bearer {token}".encode())]
    assert await call(app, "POST", "/oapi/v1/jobs", json.dumps(HARBOR_CREATE).encode(), auth) == 200
    return app, protocol_class(Limits()), {"gateway": gateway}, f"Authorization: Bearer {token}\r\n".encode()


async def serve_polls(side: str, count: int) -> None:
    """Answer ``WARM_UP + count`` polls of job 1 on one kept-alive connection."""
    if side == "bare":
        from tests.benchmarks.bare_app import bare_app

        app: Any = bare_app(b"{}")
        protocol_type: type[Any] = HttpToolsProtocol
        state: dict[str, Any] = {}
        credential = b""
    else:
        app, protocol_type, state, credential = await _gateway()
    config = uvicorn.Config(app, http=protocol_type, ws="none", log_config=None, lifespan="off", server_header=False)
    config.load()
    server_state = ServerState()
    if side == "gateway":
        from gateway.serving import _Guard

        server_state.gateway_guard = _Guard()  # type: ignore[attr-defined]
    protocol = protocol_type(config=config, server_state=server_state, app_state=state)
    transport = _Transport()
    protocol.connection_made(transport)
    request = b"GET /oapi/v1/jobs/1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + credential + b"\r\n"
    for _ in range(WARM_UP + count):
        written = transport.writes
        protocol.data_received(request)
        while transport.writes < written + 2:  # the head and the body
            await asyncio.sleep(0)


def instructions(side: str, count: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", __spec__.name]
    output = subprocess.run([*command, "--serve", side, str(count)], capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--serve", nargs=2, metavar=("SIDE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve_polls(args.serve[0], int(args.serve[1])))
        return
    per_request = {
        side: (instructions(side, args.requests) - instructions(side, 0)) / args.requests
        for side in ("bare", "gateway")
    }
    print(f"GET /oapi/v1/jobs/{{id}} of a pending job, {args.requests} polls, instructions per poll (callgrind):")
    print(f"  bare Starlette route on uvicorn's protocol   {per_request['bare']:9,.0f}")
    print(
        f"  the gateway                                  {per_request['gateway']:9,.0f}   "
        f"{per_request['gateway'] / per_request['bare']:.2f}x the bare route"
    )


if __name__ == "__main__":
    main()
