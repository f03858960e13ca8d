"""HTTP handlers for dialect A, Dragonfly's Open API (Harbor 2.12+, scripts, the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dialects import openapi as dialect
from gateway.endpoints.jobstatus import JobStatus
from gateway.endpoints.jsonio import (
    APIError,
    error_response,
    int_param,
    json_body,
    json_response,
)
from gateway.services import Gateway, caller_of, gateway_of
from gateway.store import JOB_STATES, JobRecord

MAX_JOB_ID = 2**63 - 1


def job_id_of(path_params: Mapping[str, Any]) -> int:
    """The ``{id}`` of the path; ids beyond what any store can hold simply do not exist."""
    job_id: int = path_params["id"]
    if job_id > MAX_JOB_ID:
        raise APIError(404, f"job {str(job_id)[:30]} not found")
    return job_id


async def healthy(request: Request) -> Response:
    """Harbor's "Test connection" and the start of every task. 503 when no cluster is usable."""
    gateway = gateway_of(request)
    health = await gateway.health.all()
    if not any(h["reachable"] for h in health.values()):
        reasons = "; ".join(f"cluster {i}: {h['error']}" for i, h in health.items())
        return error_response(503, f"no cluster is usable: {reasons}")
    return json_response("OK")


async def create_job(request: Request) -> Response:
    gateway = gateway_of(request)
    gateway.create_limit.charge(caller_of(request), 1)
    spec = dialect.parse_create(await json_body(request))
    job = await gateway.jobs.create(spec)
    return json_response(dialect.job_body(job, gateway.jobs.clusters, gateway.started_at))


async def list_jobs(request: Request) -> Response:
    gateway = gateway_of(request)
    page = int_param(request, "page", 1, minimum=1, maximum=dialect.MAX_PAGE)
    per_page = int_param(request, "per_page", 10, minimum=1, maximum=gateway.config.server.max_page_size)
    state = request.query_params.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise APIError(400, f"state {state[:50]!r} is not one of {', '.join(JOB_STATES)}")
    job_type = request.query_params.get("type") or None
    if job_type is not None and job_type not in dialect.JOB_TYPES:
        raise APIError(400, f"type {job_type[:50]!r} is not one of {', '.join(dialect.JOB_TYPES)}")
    jobs, total = await gateway.jobs.list_jobs(limit=per_page, offset=(page - 1) * per_page, state=state, type=job_type)
    body = [dialect.job_body(job, gateway.jobs.clusters, gateway.started_at) for job in jobs]
    last = max(1, -(-total // per_page))
    base = str(request.url.remove_query_params(["page"]))
    sep = "&" if "?" in base else "?"
    links = [
        f'<{base}{sep}page={n}>; rel="{rel}"'
        for rel, n in (("first", 1), ("prev", max(1, page - 1)), ("next", min(last, page + 1)), ("last", last))
    ]
    return json_response(body, headers={"X-Total-Count": str(total), "Link": ", ".join(links)})


async def patch_job(request: Request) -> Response:
    gateway = gateway_of(request)
    job_id = job_id_of(request.path_params)
    bio = dialect.parse_patch(await json_body(request))
    if not await gateway.jobs.set_bio(job_id, bio):
        raise APIError(404, f"job {job_id} not found")
    gateway.statuses.forget(job_id)
    job = await gateway.jobs.get(job_id)
    if job is None:
        raise APIError(404, f"job {job_id} not found")
    return json_response(dialect.job_body(job, gateway.jobs.clusters, gateway.started_at))


async def delete_job(request: Request) -> Response:
    gateway = gateway_of(request)
    job_id = job_id_of(request.path_params)
    if not await gateway.jobs.delete(job_id):
        raise APIError(404, f"job {job_id} not found")
    gateway.statuses.forget(job_id)
    return Response(status_code=200)


async def list_clusters(request: Request) -> Response:
    gateway = gateway_of(request)
    health = await gateway.health.all()
    return json_response(
        [
            dialect.cluster_body(cluster, gateway.started_at, health.get(cluster.id))
            for cluster in gateway.jobs.clusters.values()
        ]
    )


def _render(gateway: Gateway, job: JobRecord) -> bytes:
    return dialect.encode(dialect.job_body(job, gateway.jobs.clusters, gateway.started_at))


def routes() -> list[Route]:
    return [
        Route("/healthy", healthy, methods=["GET"]),
        Route("/oapi/v1/jobs", create_job, methods=["POST"]),
        Route("/oapi/v1/jobs", list_jobs, methods=["GET"]),
        Route(
            "/oapi/v1/jobs/{id:int}", JobStatus("openapi", job_id_of, _render, "job {id} not found"), methods=["GET"]
        ),
        Route("/oapi/v1/jobs/{id:int}", patch_job, methods=["PATCH"]),
        Route("/oapi/v1/jobs/{id:int}", delete_job, methods=["DELETE"]),
        Route("/oapi/v1/clusters", list_clusters, methods=["GET"]),
    ]
