"""Bare Starlette routes returning fixed bytes: the ceiling the gateway's routes are measured against.

They are served as the gateway is (uvloop, its one-send httptools protocol), so that only the
routes differ; ``stock`` as a third argument serves them with uvicorn's own httptools protocol,
which writes a response's head and body in two sends (``bench_polling`` shows the difference).

``GET /oapi/v1/jobs/{id}`` stands beside the status route (``bench_polling``); ``POST /oapi/v1/jobs``
beside the create route (``bench_thousand_tags``), answering without doing any work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.onesend import OneSendHttpProtocol

BODY = Path(sys.argv[2]).read_bytes() if len(sys.argv) > 2 else b"{}"


async def job(_request: Request) -> Response:
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/oapi/v1/jobs/{id:int}", job), Route("/oapi/v1/jobs", job, methods=["POST"])])

if __name__ == "__main__":
    protocol = "httptools" if sys.argv[3:] == ["stock"] else OneSendHttpProtocol
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http=protocol,
        log_level="warning",
        access_log=False,
        server_header=False,
        backlog=2048,
    )
    os._exit(0)
