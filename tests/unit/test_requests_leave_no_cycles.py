"""A request served by the gateway's protocol leaves nothing for the cyclic garbage collector.

The gateway collects its young generation every 50,000 net allocations (``gateway.gcpolicy``):
cheap while reference counting frees each request, but a request that leaves even a dozen
objects in a reference cycle fills that generation every second or so under polling, and each
collection then stops the event loop for tens of milliseconds: the status polls' p99.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.serving import Limits, protocol_class

pytestmark = pytest.mark.anyio
REQUESTS = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def status(_request: Request) -> Response:
    return Response(b'{"state":"PENDING"}', media_type="application/json")


async def test_kept_alive_requests_leave_no_reference_cycles() -> None:
    config = uvicorn.Config(
        Starlette(routes=[Route("/oapi/v1/jobs/{id:int}", status)]),
        host="127.0.0.1",
        port=0,
        http=protocol_class(Limits()),
        ws="none",
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(REQUESTS):
            writer.write(b"GET /oapi/v1/jobs/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b'"PENDING"}')
        gc.collect()
        left_in_cycles = len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        writer.close()
        server.should_exit = True
        await serving

    assert left_in_cycles < REQUESTS / 10, f"{left_in_cycles} objects in cycles after {REQUESTS} requests"
