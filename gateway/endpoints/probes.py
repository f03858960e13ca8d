"""Kubernetes probes: ``/livez`` (the process answers) and ``/readyz`` (the store answers, and the
replica is not shutting down).

Readiness depends on the store only, never on backends: a slow mirror must not take every
replica out of its Service.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.endpoints.jsonio import error_response, json_response
from gateway.services import gateway_of

READY_TIMEOUT_SECONDS = 2.0


async def livez(_request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when the store answers; 503 while starting, and from SIGTERM on while the replica still
    serves (``server.shutdown_delay_seconds``), so a load balancer takes it out before it stops."""
    if gateway_of(request).draining:
        return error_response(503, "shutting down: requests are still answered, send new ones to another replica")
    if not request.app.state.ready:
        return error_response(503, "starting or stopping")
    try:
        await asyncio.wait_for(gateway_of(request).store.ping(), READY_TIMEOUT_SECONDS)
    except Exception as error:  # any store failure means not ready
        return error_response(503, f"store unavailable: {type(error).__name__}")
    return json_response({"status": "ok"})


def routes() -> list[Route]:
    return [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
