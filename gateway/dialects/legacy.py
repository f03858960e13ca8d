"""Dialect B: the legacy Dragonfly preheat API, spoken by Harbor 2.1 to 2.11 (Harbor's ``src/pkg/p2p/preheat/provider/dragonfly.go`` before 2.12).

Only translation lives here. Harbor POSTs its preheat-image record (``type``, ``url``,
``headers``, ``image``, ``tag``, ``digest``) and reads back ``{"ID": "<id>"}``; it then polls
``GET /preheats/{id}`` for ``status``, ``startTime``, ``finishTime`` and ``errorMsg``.

Harbor's Go client decodes these keys case-insensitively and treats a JSON ``null`` as
"leave the zero value", so the parser here does the same (:mod:`gateway.dialects.gojson`). Its status handling is unforgiving:
the job loop ends a task only on ``SUCCESS`` or ``FAIL``. Harbor 2.8-2.11 also map ``FAILED``
to ``FAIL`` and ``WAITING`` to pending, but 2.1-2.7 pass the string on unchanged, so a failure
is answered ``FAIL``, the one string every legacy Harbor ends a task on; anything else keeps
Harbor polling. Every job state therefore maps to ``WAITING``, ``RUNNING``, ``SUCCESS`` or ``FAIL``.

Harbor 2.1-2.11 never show ``errorMsg`` (their task log says only "is fail with error: "); it
is still filled, for the console, scripts and the Open API view of the same job.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.dialects.gojson import convert, decode_json, fold_keys, header_values
from gateway.dialects.openapi import rfc3339
from gateway.jobs import InvalidRequest, JobSpec, check_digest
from gateway.store import JobRecord

WAITING, RUNNING, SUCCESS, FAIL = "WAITING", "RUNNING", "SUCCESS", "FAIL"
_ENCODER = msgspec.json.Encoder()


class PreheatImage(msgspec.Struct):
    """Harbor's ``provider.PreheatImage`` (keys folded to lower case)."""

    type: str = ""
    url: str = ""
    headers: dict[str, Any] = {}
    image: str = ""
    tag: str = ""
    digest: str = ""
    scope: str = ""


def parse_create(body: bytes) -> JobSpec:
    """A ``POST /preheats`` body into a job spec."""
    record: PreheatImage = convert(fold_keys(decode_json(body), "the preheat record"), PreheatImage, "preheat record")
    kind = {"image": "image", "cnai": "image", "file": "file"}.get(record.type)
    if kind is None:
        raise InvalidRequest(
            f"type {record.type!r} is not supported: Harbor sends 'image' (or 'cnai' for model artifacts)"
        )
    if not record.url:
        raise InvalidRequest("url is empty: give the image's manifest URL, http(s)://HOST/v2/REPOSITORY/manifests/TAG")
    if record.digest:
        check_digest(record.digest, "digest")
    return JobSpec(
        type=kind,  # type: ignore[arg-type]
        urls=[record.url],
        tag=record.tag,
        scope=record.scope,
        headers=header_values(record.headers, "headers"),
        source="legacy",
    )


def created_body(job: JobRecord) -> bytes:
    """The create answer: the id as a string under ``ID``, as Harbor's ``dragonflyPreheatCreateResp`` wants."""
    return _ENCODER.encode({"ID": str(job.id)})


def status(job: JobRecord) -> str:
    """One of the four statuses every legacy Harbor (2.1-2.11) understands, never anything else."""
    if job.state == "SUCCESS":
        return SUCCESS
    if job.state == "FAILURE":
        return FAIL
    started = any(task.started_at is not None or task.state != "PENDING" for task in job.tasks)
    return RUNNING if started else WAITING


def error_message(job: JobRecord) -> str:
    """The failure text the Open API shows (every failed cluster's error, joined), never empty on failure."""
    if job.state != "FAILURE":
        return ""
    text = job.error or "; ".join(task.error for task in job.tasks if task.state == "FAILURE" and task.error)
    return text or f"preheat job {job.id} failed without a recorded reason; see the gateway log for job {job.id}"


def status_body(job: JobRecord) -> bytes:
    """``GET /preheats/{id}``: Dragonfly 1.x's preheat info, with finishTime omitted until the job ends."""
    body: dict[str, Any] = {
        "ID": str(job.id),
        "status": status(job),
        "startTime": rfc3339(job.created_at),
        "errorMsg": error_message(job),
    }
    if job.finished:
        body["finishTime"] = rfc3339(job.finished_at or job.updated_at)
    return _ENCODER.encode(body)
