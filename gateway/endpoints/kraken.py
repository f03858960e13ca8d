"""HTTP handlers for dialect C, Kraken's registry notifications (any Harbor, vendor "Kraken").

Harbor marks its task SUCCESS on the 2xx and never asks again, so the answer is sent only
after every job is committed to the store. A notification with an event the gateway refuses
(a URL outside ``registries.allow``, a non-manifest URL) is refused whole with 422 and no job
is created: Harbor then marks its task failed and shows the message, where a 2xx with a
silently dropped event would show SUCCESS for a preheat that never ran.

The creation rate limit (``server.create_rate_per_second``, ``server.create_burst``) is charged
per job a notification would create, all or nothing: one that does not fit is refused whole
with 429 and ``Retry-After``, and no job is created.

Harbor delivers a notification again when it saw no answer to the first (a timeout, a dropped
connection), with the same event ``Id``. An event whose ``Id`` and ``Url`` already made a job
makes no other: it is answered 200 with that job's id, is not charged, and is not validated
again. The store keeps one row per such event for as long as its job exists.
"""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.dialects import kraken
from gateway.endpoints.jsonio import json_body, json_response
from gateway.endpoints.openapi import healthy
from gateway.jobs import InvalidRequest
from gateway.services import caller_of, gateway_of
from gateway.store import EventHasJob

log = logging.getLogger("gateway.kraken")


async def health(request: Request) -> Response:
    """``GET /health``: Harbor's "Test connection" and the first step of every task (same check as ``/healthy``)."""
    return await healthy(request)


def event_key(preheat: kraken.Preheat) -> str | None:
    """What identifies a delivered event across retries: its ``Id`` with its target ``Url`` (hashed: bounded,
    and no URL kept in the clear); None for an event without an ``Id``, which cannot be told from a new one."""
    if not preheat.event_id:
        return None
    return hashlib.sha256(f"{preheat.event_id}\0{preheat.spec.urls[0]}".encode()).hexdigest()


async def notifications(request: Request) -> Response:
    gateway = gateway_of(request)
    preheats, ignored = kraken.parse_notification(await json_body(request))
    keys = [event_key(preheat) for preheat in preheats]
    made = await gateway.jobs.jobs_of_events(sorted({key for key in keys if key}))
    fresh: list[tuple[kraken.Preheat, str | None]] = []
    for preheat, key in zip(preheats, keys, strict=True):
        if key is None or key not in made:
            fresh.append((preheat, key))
            if key is not None:
                made[key] = 0  # the same event twice in one notification: one job
    retried = len(preheats) - len(fresh)
    # per job it would create, before any DNS check; a notification of nothing still costs one
    gateway.create_limit.charge(caller_of(request), len(fresh) if preheats else 1)
    refused = []
    for preheat, _key in fresh:
        try:
            await gateway.jobs.validate(preheat.spec)
        except InvalidRequest as error:
            refused.append(f"Events[{preheat.index}]: {error}")
    if refused:
        raise InvalidRequest(f"notification refused, no job was created: {'; '.join(refused)}")
    job_ids: list[int] = []  # made by this delivery
    made_here: dict[int, int] = {}  # event index -> its new job
    for preheat, key in fresh:
        try:
            job = await gateway.jobs.create(preheat.spec, event_key=key)
        except InvalidRequest as error:  # only if a check's answer changed since validation (DNS)
            done = f"; jobs {', '.join(map(str, job_ids))} were created for the events before it" if job_ids else ""
            raise InvalidRequest(f"Events[{preheat.index}]: {error}{done}") from None
        except EventHasJob as made_first:  # a retry of this notification, handled at the same moment
            assert key is not None
            log.info(
                "Kraken event %s: job %d was made for it by another delivery; none made here",
                preheat.event_id[:80],
                made_first.job_id,
                extra={"job_id": made_first.job_id},
            )
            made[key] = made_first.job_id
            continue
        if key is not None:
            made[key] = job.id
        made_here[preheat.index] = job.id
        job_ids.append(job.id)
        host = urlsplit(preheat.spec.urls[0]).netloc
        if gateway.config.credentials_for(host) is None:
            log.warning(
                "job %d (Kraken event %s): registries.credentials has no entry for %s, and Kraken events carry no "
                "registry credentials; the gateway tries anonymous access, which a private project refuses. "
                "Add %s to registries.credentials (e.g. a Harbor robot account with pull access)",
                job.id,
                preheat.event_id[:80] or "-",
                host,
                host,
                extra={"job_id": job.id},
            )
    if retried:
        log.info(
            "Kraken notification delivered again: %d event(s) already have their job (same Id), none made for them",
            retried,
        )
    if preheats or ignored:
        log.info(
            "Kraken notification: %d job(s) created, %d event(s) ignored",
            len(job_ids),
            ignored,
            extra={"job_ids": ",".join(map(str, job_ids))},
        )
    every = [
        made[key] if key is not None else made_here[preheat.index] for preheat, key in zip(preheats, keys, strict=True)
    ]
    return json_response({**kraken.accepted_body(every, ignored), "created": len(job_ids)})


def routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/registry/notifications", notifications, methods=["POST"]),
    ]
