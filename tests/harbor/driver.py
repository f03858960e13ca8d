"""Harbor's provider drivers, replayed: the requests Harbor sends and the decoding it does.

The gateway must look, to Harbor, exactly like Dragonfly (or Kraken). These classes send
what Harbor's Go drivers send (field names, casing, nulls, zeros, the auth header built the
way Harbor builds it) and decode answers as strictly as Go's ``encoding/json`` does into
Harbor's structs: an ``id`` that is not an integer, a time that is not RFC 3339, or a
``scheduler_cluster_id`` that is negative fails the decode just as it would fail the task.
"""

from __future__ import annotations

import base64
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import msgspec

RUNNING, SUCCESS, FAIL = "RUNNING", "SUCCESS", "FAIL"


def go_time(text: str) -> datetime:
    """Go's time.Time UnmarshalJSON: RFC 3339 with optional fractional seconds, or fail."""
    if not isinstance(text, str) or "T" not in text or not (text.endswith("Z") or text[-6] in "+-"):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def auth_header(mode: str, info: dict[str, str]) -> dict[str, str]:
    """The header Harbor's ``auth.Credential`` adds for each auth mode (reference section 2)."""
    if mode == "NONE":
        return {}
    if mode == "OAUTH":
        return {"Authorization": f"Bearer {info['token']}"}
    if mode == "CUSTOM":
        key = next(iter(info))
        return {key: info[key]}
    if mode == "BASIC":
        # Go's randomized map iteration: whichever key comes first becomes the "username".
        key = random.choice(list(info))
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:{info[key]}".encode()).decode()}
    raise ValueError(mode)


class _Task(msgspec.Struct):
    url: str = ""
    hostname: str = ""
    ip: str = ""
    description: str = ""


class _Result(msgspec.Struct):
    success_tasks: list[_Task | None] | None = None
    failure_tasks: list[_Task | None] | None = None
    scheduler_cluster_id: int = 0


class _JobState(msgspec.Struct):
    error: str = ""
    results: list[_Result] | None = None


class _JobResult(msgspec.Struct):
    job_states: list[_JobState] | None = None


class DragonflyJobResponse(msgspec.Struct):
    """Harbor 2.12+'s ``dragonflyJobResponse``: unknown keys ignored, known ones typed."""

    id: int = 0
    created_at: str = "0001-01-01T00:00:00Z"
    updated_at: str = "0001-01-01T00:00:00Z"
    state: str = ""
    result: _JobResult | None = None

    def __post_init__(self) -> None:
        go_time(self.created_at)
        go_time(self.updated_at)
        for state in (self.result.job_states or []) if self.result else []:
            for result in state.results or []:
                if result.scheduler_cluster_id < 0:
                    raise ValueError("scheduler_cluster_id is a Go uint")


@dataclass
class PreheatingStatus:
    task_id: str
    status: str
    message: str = ""
    error: str = ""
    rows: list[tuple[str, str, str, str, str, str]] | None = None


class HarborError(Exception):
    """What Harbor's HTTP client returns for a non-2xx answer (the task fails)."""


class DragonflyDriver:
    """Harbor 2.12+'s Dragonfly driver (``pkg/p2p/preheat/provider/dragonfly.go``)."""

    health_path = "/healthy"
    job_path = "/oapi/v1/jobs"

    def __init__(self, endpoint: str, auth_mode: str = "NONE", auth_info: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.auth_mode = auth_mode
        self.auth_info = auth_info or {}
        self.http = httpx.Client(timeout=30)  # Harbor's client: 30 s per request

    def _send(self, method: str, path: str, body: Any = None) -> bytes:
        headers = {"Content-Type": "application/json", **auth_header(self.auth_mode, self.auth_info)}
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        response = self.http.request(method, self.endpoint + path, content=content, headers=headers)
        # Harbor's client: 2xx is success, but 2.12+ fails the task on 208.
        if not 200 <= response.status_code < 300 or response.status_code == 208:
            raise HarborError(f"http error: code {response.status_code}, message {response.text}")
        return response.content

    def health(self) -> bool:
        """"Test connection" in the UI, and the first step of every task."""
        try:
            self._send("GET", self.health_path)
        except (HarborError, httpx.TransportError):
            return False
        return True

    def create_body(self, url: str, headers: dict[str, str], *, scope: str = "", cluster_ids: list[int] | None = None, type: str = "image") -> dict[str, Any]:
        """Exactly what Go marshals: zero values present, a nil slice as null."""
        return {
            "type": "preheat",
            "args": {
                "type": type, "url": url, "tag": "", "filtered_query_params": "", "headers": headers,
                "scope": scope, "concurrent_count": 0, "timeout": 0,
            },
            "scheduler_cluster_ids": cluster_ids if cluster_ids else None,
        }

    def preheat(self, url: str, headers: dict[str, str], *, scope: str = "", cluster_ids: list[int] | None = None) -> PreheatingStatus:
        data = self._send("POST", self.job_path, self.create_body(url, headers, scope=scope, cluster_ids=cluster_ids))
        job = msgspec.json.decode(data, type=DragonflyJobResponse)
        return PreheatingStatus(task_id=str(job.id), status=RUNNING)

    def check_progress(self, task_id: str) -> PreheatingStatus:
        job = msgspec.json.decode(self._send("GET", f"{self.job_path}/{task_id}"), type=DragonflyJobResponse)
        if job.state == "PENDING":
            return PreheatingStatus(task_id, RUNNING)
        if job.state == "SUCCESS":
            rows = []
            for state in (job.result.job_states or []) if job.result else []:
                for result in state.results or []:
                    rows += [(t.url, t.hostname, t.ip, str(result.scheduler_cluster_id), "SUCCESS", "") for t in result.success_tasks or [] if t]
                    rows += [(t.url, t.hostname, t.ip, str(result.scheduler_cluster_id), "FAILURE", t.description) for t in result.failure_tasks or [] if t]
            return PreheatingStatus(task_id, SUCCESS, message=f"{len(rows)} rows", rows=rows)
        if job.state == "FAILURE":
            errors = [state.error for state in (job.result.job_states or [])] if job.result else []
            return PreheatingStatus(task_id, FAIL, error="; ".join(errors))
        return PreheatingStatus(task_id, FAIL, error=f"unknown state: {job.state}")

    def run_task(self, url: str, headers: dict[str, str], *, scope: str = "", cluster_ids: list[int] | None = None,
                 poll_seconds: float = 0.2, timeout: float = 60.0) -> PreheatingStatus:
        """One Harbor preheat task: health check, create, poll until it is no longer running."""
        if not self.health():
            return PreheatingStatus("", FAIL, error="provider unhealthy")
        status = self.preheat(url, headers, scope=scope, cluster_ids=cluster_ids)
        deadline = time.monotonic() + timeout
        while status.status == RUNNING:
            if time.monotonic() > deadline:
                raise AssertionError(f"task {status.task_id} still running after {timeout}s")
            time.sleep(poll_seconds)
            status = self.check_progress(status.task_id)
        return status
