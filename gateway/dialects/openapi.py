"""Dialect A: Dragonfly's Open API, spoken by Harbor 2.12+ (Harbor's ``src/pkg/p2p/preheat/provider/dragonfly.go``, 2.12+).

Only translation lives here: a create body into a :class:`JobSpec`, a job into the exact
JSON Harbor's Go client decodes (integer ``id``, RFC 3339 UTC times, ``state`` one of
PENDING/SUCCESS/FAILURE, ``result.job_states[].results[]``), with every secret blanked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from adapters.base import TaskRow
from gateway.config import Cluster
from gateway.jobs import MAX_INT64, InvalidRequest, JobSpec, parse_filtered_query_params
from gateway.store import TERMINAL, JobRecord, TaskRecord

NANOSECONDS = 1_000_000_000
JOB_TYPES = ("preheat",)
"""The job types the gateway creates (and the ``type`` filter of a list accepts)."""
MAX_PAGE = 1_000_000
"""The highest ``page`` of a list."""


class PreheatArgs(msgspec.Struct):
    """``args`` as Harbor's driver and Dragonfly's own clients send it. Unknown keys are ignored."""

    type: str = "image"
    url: str = ""
    urls: list[str] | None = None
    tag: str = ""
    application: str = ""
    filtered_query_params: str = ""
    filteredQueryParams: str = ""
    headers: dict[str, str] | None = None
    username: str = ""
    password: str = ""
    platform: str = ""
    scope: str = ""
    piece_length: int | None = None
    concurrent_count: int = 0
    concurrent_task_count: int = 0
    concurrent_peer_count: int = 0
    ips: list[str] | None = None
    count: int | None = None
    percentage: int | None = None
    timeout: int = 0
    certificate_chain: list[str] | None = None
    insecure_skip_verify: bool = False
    priority: int | None = None
    load_to_cache: bool = False


class CreateJobRequest(msgspec.Struct):
    type: str
    args: PreheatArgs
    scheduler_cluster_ids: list[int] | None = None
    bio: str = ""


class PatchJobRequest(msgspec.Struct):
    bio: str


_CREATE = msgspec.json.Decoder(CreateJobRequest)
_PATCH = msgspec.json.Decoder(PatchJobRequest)
_ENCODER = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        raise InvalidRequest(f"invalid request body: {str(error).replace('`', '')}") from None
    except msgspec.DecodeError as error:
        raise InvalidRequest(f"request body is not valid JSON ({error})") from None


def parse_create(body: bytes, *, source: str = "openapi") -> JobSpec:
    request: CreateJobRequest = _decode(_CREATE, body)
    if request.type != "preheat":
        raise InvalidRequest(f"job type {request.type!r} is not supported: this gateway runs 'preheat' jobs")
    args = request.args
    kind = {"image": "image", "cnai": "image", "file": "file"}.get(args.type)
    if kind is None:
        raise InvalidRequest(f"args.type {args.type!r} is not supported: use 'image' or 'file'")
    urls = [u for u in ([args.url] if args.url else []) + list(args.urls or []) if u]
    if not urls:
        raise InvalidRequest("args.url is empty: give the image's manifest URL (or a file's URL)")
    # Meaningful only to an upstream Dragonfly, which is sent them as they came (docs/adapters.md).
    extra = {key: value for key, value in (("priority", args.priority), ("load_to_cache", args.load_to_cache)) if value}
    return JobSpec(
        type=kind,  # type: ignore[arg-type]
        urls=urls,
        tag=args.tag,
        application=args.application,
        filtered_query_params=parse_filtered_query_params(args.filtered_query_params or args.filteredQueryParams),
        platform=args.platform,
        scope=args.scope,
        headers=dict(args.headers or {}),
        username=args.username,
        password=args.password,
        piece_length=args.piece_length,
        concurrent_count=args.concurrent_count or args.concurrent_task_count,
        concurrent_peer_count=args.concurrent_peer_count,
        ips=list(args.ips or []),
        count=args.count,
        percentage=args.percentage,
        certificate_chain=list(args.certificate_chain or []),
        insecure_skip_verify=args.insecure_skip_verify,
        timeout_seconds=timeout_seconds(args.timeout),
        cluster_ids=request.scheduler_cluster_ids,
        bio=request.bio,
        source=source,
        extra=extra,
    )


def timeout_seconds(nanoseconds: int) -> float:
    """A Go duration in nanoseconds as seconds; beyond Go's int64 it is infinite (and the job service refuses it)."""
    if abs(nanoseconds) > MAX_INT64:
        return math.inf if nanoseconds > 0 else -math.inf
    return nanoseconds / NANOSECONDS


def parse_patch(body: bytes) -> str:
    return _decode(_PATCH, body).bio


def rfc3339(timestamp: float | None) -> str:
    """RFC 3339 in UTC with microseconds (trailing zeros trimmed, as Go's RFC3339Nano writes them).

    Every Harbor's ``time.Time`` decodes fractional seconds, so short tasks log true durations
    instead of ``duration: 0s``.
    """
    if timestamp is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time, which Harbor decodes
    micros = round(timestamp * 1_000_000)
    seconds, fraction = divmod(micros, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:06d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def _args(job: JobRecord) -> dict[str, Any]:
    spec = job.args
    urls = spec.get("urls") or []
    return {
        "type": spec.get("type", "image"),
        "url": urls[0] if urls else "",
        "urls": urls if len(urls) > 1 else None,
        "tag": spec.get("tag", ""),
        "application": spec.get("application", ""),
        "filtered_query_params": "&".join(spec.get("filtered_query_params") or []),
        "headers": None,
        "username": spec.get("username", ""),
        "password": "",
        "platform": spec.get("platform", ""),
        "scope": spec.get("scope", ""),
        "piece_length": spec.get("piece_length"),
        "concurrent_count": spec.get("concurrent_count", 0),
        "concurrent_peer_count": spec.get("concurrent_peer_count", 0),
        "ips": spec.get("ips") or None,
        "count": spec.get("count"),
        "percentage": spec.get("percentage"),
        "certificate_chain": spec.get("certificate_chain") or None,
        "insecure_skip_verify": spec.get("insecure_skip_verify", False),
        "timeout": int(spec.get("timeout_seconds", 0) * NANOSECONDS),
    }


def _rows(rows: list[TaskRow]) -> list[dict[str, str]]:
    return [{"url": r.url, "hostname": r.hostname, "ip": r.ip, "description": r.description} for r in rows]


def _results(task: TaskRecord) -> dict[str, Any]:
    """Harbor's table for one cluster; rows beyond ``runner.max_result_bytes`` are counted under ``*_left_out``."""
    result = task.result
    body: dict[str, Any] = {
        "scheduler_cluster_id": task.cluster_id,
        "success_tasks": _rows(result.success_tasks),
        "failure_tasks": _rows(result.failure_tasks),
    }
    if result.success_left_out or result.failure_left_out:
        body["success_tasks_left_out"] = result.success_left_out
        body["failure_tasks_left_out"] = result.failure_left_out
    return body


def _outcome(task: TaskRecord, clusters: Mapping[int, Cluster], kind: str) -> str:
    """What happened to one cluster, for the ``error`` of a FAILURE job's entry that has none of its own.

    Harbor 2.12+ turns every ``job_states[]`` entry of a FAILURE job into one entry of its error
    list, whatever its state, so a succeeded or unfinished cluster must say so rather than show "".
    """
    cluster = clusters.get(task.cluster_id)
    name = f"cluster {cluster.name} (id {task.cluster_id})" if cluster else f"cluster {task.cluster_id}"
    progress = task.progress
    unit = "files" if kind == "file" else "blobs"
    failed = f", {progress.items_failed} failed (see the rows)" if progress.items_failed else ""
    if task.state == "SUCCESS":
        return f"{name}: succeeded, {progress.items_done} {unit} warm{failed}"
    if task.state == "FAILURE":
        return f"{name}: failed without a recorded reason; see the gateway log"
    return f"{name}: not finished ({progress.items_done} of {progress.items_total} {unit} warm{failed})"


def _job_state(task: TaskRecord, clusters: Mapping[int, Cluster], job: JobRecord) -> dict[str, Any]:
    state = task.state if task.state in TERMINAL else "PENDING"
    error = task.error
    if job.state == "FAILURE" and not error:
        error = _outcome(task, clusters, str(job.args.get("type", "image")))
    return {
        "task_name": "preheat",
        "task_uuid": f"task_{task.id}",
        "state": state,
        "error": error,
        "ttl": 0,
        "created_at": rfc3339(task.started_at),
        "updated_at": rfc3339(task.updated_at),
        "results": [_results(task)],
        "progress": msgspec.to_builtins(task.progress),
    }


def job_body(job: JobRecord, clusters: Mapping[int, Cluster], created_at: float) -> dict[str, Any]:
    """A job as Dragonfly's manager renders it."""
    return {
        "id": job.id,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "is_del": 0,
        "task_id": job.group_id,
        "bio": job.bio,
        "type": job.type,
        "state": job.state,
        "args": _args(job),
        "result": {
            "group_uuid": job.group_id,
            "state": job.state,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "job_states": [_job_state(task, clusters, job) for task in job.tasks],
        },
        "user_id": 0,
        "source": job.source,
        "scheduler_clusters": [
            cluster_body(clusters[t.cluster_id], created_at) for t in job.tasks if t.cluster_id in clusters
        ],
    }


def cluster_body(cluster: Cluster, created_at: float, health: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cluster.id,
        "name": cluster.name,
        "bio": "",
        "adapter": cluster.config.adapter,
        "platform": cluster.config.platform or "",
        "is_default": cluster.id == 1,
        "created_at": rfc3339(created_at),
        "updated_at": rfc3339(created_at),
    }
    if health is not None:
        body["health"] = health
    return body


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)
