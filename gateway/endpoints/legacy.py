"""HTTP handlers for dialect B, the legacy Dragonfly preheat API (Harbor 2.1 to 2.11).

These read and write the same job store as the Open API: a job created here is listed by
``GET /oapi/v1/jobs``, and any job, whichever dialect created it, can be polled here by id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.dialects import legacy
from gateway.endpoints.jobstatus import JobStatus
from gateway.endpoints.jsonio import APIError, json_body, json_response
from gateway.endpoints.openapi import healthy
from gateway.ids import MAX_ID_DIGITS, ascii_number
from gateway.jobs import JobSpec
from gateway.precheck import ManifestRefused, check_manifest
from gateway.services import Gateway, caller_of, gateway_of
from gateway.store import JobRecord

log = logging.getLogger("gateway.legacy")


async def ping(request: Request) -> Response:
    """``GET /_ping``: Harbor's "Test connection" and the first step of every task (same check as ``/healthy``)."""
    return await healthy(request)


async def create_preheat(request: Request) -> Response:
    """``POST /preheats``. 200 with the new id, never 208 (old Harbors read it as "already done").

    Harbor 2.1-2.11 log only HTTP errors, never ``errorMsg``, so what the registry already says
    definitely (no such tag: 404; the caller's token and the configured credentials refused: 403;
    a refused host or redirect: 422) is the answer here and no job is created (:mod:`gateway.precheck`).
    """
    gateway = gateway_of(request)
    gateway.create_limit.charge(caller_of(request), 1)
    spec = legacy.parse_create(await json_body(request))

    async def check(checked: JobSpec) -> None:
        try:
            await check_manifest(gateway.oci, gateway.config, checked)
        except ManifestRefused as refused:
            log.info("POST /preheats answered %d: %s", refused.status, refused.message)
            raise APIError(refused.status, refused.message) from None

    job = await gateway.jobs.create(spec, check=check)
    return json_response(legacy.created_body(job))


def _preheat_id(path_params: Mapping[str, Any]) -> int:
    raw: str = path_params["id"]
    job_id = ascii_number(raw, MAX_ID_DIGITS)
    if job_id is None:
        raise APIError(404, f"preheat task {raw[:40]!r} not found: ids are the numbers POST /preheats returned")
    return job_id


def _render(_gateway: Gateway, job: JobRecord) -> bytes:
    return legacy.status_body(job)


def routes() -> list[BaseRoute]:
    return [
        Route("/_ping", ping, methods=["GET"]),
        Route("/preheats", create_preheat, methods=["POST"]),
        Route(
            "/preheats/{id}", JobStatus("legacy", _preheat_id, _render, "preheat task {id} not found"), methods=["GET"]
        ),
    ]
