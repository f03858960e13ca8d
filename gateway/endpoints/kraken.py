"""HTTP handlers for dialect C, Kraken's registry notifications (any Harbor, vendor "Kraken").

Harbor marks its task SUCCESS on the 2xx and never asks again, so the answer is sent only
after every job is committed to the store. A notification with an event the gateway refuses
(a URL outside ``registries.allow``, a non-manifest URL) is refused whole with 422 and no job
is created: Harbor then marks its task failed and shows the message, where a 2xx with a
silently dropped event would show SUCCESS for a preheat that never ran.

The creation rate limit (``server.create_rate_per_second``, ``server.create_burst``) is charged
per job a notification would create, all or nothing: one that does not fit is refused whole
with 429 and ``Retry-After``, and no job is created.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.app_types import gateway_of
from gateway.dialects import kraken
from gateway.endpoints.openapi import healthy
from gateway.httputil import charge_job_creations, json_body, json_response
from gateway.jobs import InvalidRequest

log = logging.getLogger("gateway.kraken")


async def health(request: Request) -> Response:
    """``GET /health``: Harbor's "Test connection" and the first step of every task (same check as ``/healthy``)."""
    return await healthy(request)


async def notifications(request: Request) -> Response:
    gateway = gateway_of(request)
    preheats, ignored = kraken.parse_notification(await json_body(request))
    charge_job_creations(request, max(1, len(preheats)))  # per job it would create, before any DNS check
    refused = []
    for preheat in preheats:
        try:
            await gateway.jobs.validate(preheat.spec)
        except InvalidRequest as error:
            refused.append(f"Events[{preheat.index}]: {error}")
    if refused:
        raise InvalidRequest(f"notification refused, no job was created: {'; '.join(refused)}")
    job_ids: list[int] = []
    for preheat in preheats:
        try:
            job = await gateway.jobs.create(preheat.spec)
        except InvalidRequest as error:  # only if a check's answer changed since validation (DNS)
            done = f"; jobs {', '.join(map(str, job_ids))} were created for the events before it" if job_ids else ""
            raise InvalidRequest(f"Events[{preheat.index}]: {error}{done}") from None
        job_ids.append(job.id)
        host = urlsplit(preheat.spec.urls[0]).netloc
        if gateway.config.credentials_for(host) is None:
            log.warning(
                "job %d (Kraken event %s): registries.credentials has no entry for %s, and Kraken events carry no "
                "registry credentials; the gateway tries anonymous access, which a private project refuses. "
                "Add %s to registries.credentials (e.g. a Harbor robot account with pull access)",
                job.id, preheat.event_id[:80] or "-", host, host, extra={"job_id": job.id},
            )
    if preheats or ignored:
        log.info("Kraken notification: %d job(s) created, %d event(s) ignored", len(job_ids), ignored,
                 extra={"job_ids": ",".join(map(str, job_ids))})
    return json_response(kraken.accepted_body(job_ids, ignored))


def routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/registry/notifications", notifications, methods=["POST"]),
    ]
