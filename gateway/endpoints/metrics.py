"""``/metrics``: Prometheus exposition of the gateway's own metrics (:mod:`gateway.metrics`)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.services import gateway_of
from gateway.store import JOB_STATES

SCRAPE_STORE_TIMEOUT_SECONDS = 2.0


async def metrics(request: Request) -> Response:
    """Prometheus exposition; the job-state gauge is refreshed from the store on each scrape."""
    gateway = gateway_of(request)
    try:
        counts = await asyncio.wait_for(gateway.store.count_jobs_by_state(), SCRAPE_STORE_TIMEOUT_SECONDS)
    except Exception:  # a scrape still answers with what the process knows
        counts = {}
    for state in JOB_STATES:
        gateway.metrics.jobs.labels(state).set(counts.get(state, 0))
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[Route]:
    return [Route("/metrics", metrics, methods=["GET"])]
