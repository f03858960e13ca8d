"""Bare Starlette routes returning fixed bytes: the ceiling the gateway's routes are measured against.

They are served as the gateway is (uvloop, uvicorn's httptools protocol), so that only the
routes differ.

``GET /oapi/v1/jobs/{id}`` stands beside the status route (``bench_polling``); ``POST /oapi/v1/jobs``
beside the create route (``bench_thousand_tags``), answering without doing any work. Run:

    python -m tests.benchmarks.bare_app PORT [BODY_FILE]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def bare_app(body: bytes) -> Starlette:
    """The routes, each answering ``body`` as JSON."""

    async def job(_request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/oapi/v1/jobs/{id:int}", job), Route("/oapi/v1/jobs", job, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("body", type=Path, nargs="?", help="the bytes every route answers (default: {})")
    args = parser.parse_args()
    uvicorn.run(
        bare_app(args.body.read_bytes() if args.body else b"{}"),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
        backlog=2048,
    )
    os._exit(0)


if __name__ == "__main__":
    main()
