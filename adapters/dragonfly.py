"""``dragonfly``: an upstream Dragonfly manager serves this cluster (its own seed peers warm it).

A cluster task becomes one job on the manager's Open API (``POST /oapi/v1/jobs``, a personal
access token with the ``job`` scope), carrying the request's arguments: URL(s), headers,
platform, scope, piece length, concurrency, filtered query params and the time left. The
adapter polls ``GET /oapi/v1/jobs/{id}`` with backoff until the job leaves PENDING, then
folds the upstream ``result.job_states[].results[]`` into this cluster's rows.

Rows keep the upstream hostnames and IPs. Harbor's "Cluster ID" column shows this gateway's
cluster id, so the upstream scheduler cluster id goes into the hostname:
``seed-0 (upstream cluster 2)``; Harbor's table stays one row per blob per peer.

Every wait is bounded: each request by ``timeout``, the whole job by the request's timeout
(the job is then reported as still pending upstream), and an unreachable manager by
``timeout`` since its last answer. An upstream FAILURE quotes the upstream errors; a 401, a
manager that is down, or a state Harbor would not understand is reported as exactly that.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

import httpx
import msgspec

from adapters.base import (
    OPTIONAL_ARGUMENTS,
    Adapter,
    AdapterContext,
    ClusterInfo,
    Health,
    PreheatError,
    PreheatRequest,
    Progress,
    TaskRow,
)
from adapters.bounded import UPSTREAM_ANSWER_BYTES, UPSTREAM_PROBE_BYTES, BodyError, body_excerpt, quote, send_capped
from adapters.describe import describe
from adapters.guard import ConnectGuard
from adapters.options import check_base_url, check_env, parse_seconds
from adapters.transport import new_client

NANOSECONDS = 1_000_000_000
FIRST_POLL_SECONDS = 0.5
CREATE_ATTEMPTS = 3


class DragonflyOptions(msgspec.Struct, forbid_unknown_fields=True):
    manager: str
    """Base URL of the manager, e.g. ``http://df-manager:8080``."""
    token_env: str | None = None
    """Environment variable holding a personal access token with the ``job`` scope."""
    scheduler_cluster_ids: list[int] | None = None
    """Upstream scheduler clusters to preheat; absent means all of them."""
    insecure: bool = False
    """Skip TLS verification of an https manager (a self-signed certificate)."""
    timeout: float | str = "30s"
    """Longest wait for one answer from the manager, and for a manager that stopped answering."""
    poll_interval: float | str = "10s"
    """Longest pause between two polls (polls start at 0.5 s and back off to this)."""

    def __post_init__(self) -> None:
        self.manager = check_base_url(self.manager, key="manager")
        check_env(self.token_env, key="token_env")
        if self.scheduler_cluster_ids is not None and any(i < 1 for i in self.scheduler_cluster_ids):
            raise ValueError("scheduler_cluster_ids: ids are positive integers")
        self.timeout = parse_seconds(self.timeout, key="timeout")
        self.poll_interval = parse_seconds(self.poll_interval, key="poll_interval")


# The manager's job as Harbor decodes it (Harbor's ``provider/dragonfly.go``); unknown keys are ignored.
class _UpstreamTask(msgspec.Struct):
    url: str = ""
    hostname: str = ""
    ip: str = ""
    description: str = ""


class _UpstreamResult(msgspec.Struct):
    scheduler_cluster_id: int = 0
    success_tasks: list[_UpstreamTask | None] | None = None
    failure_tasks: list[_UpstreamTask | None] | None = None


class _UpstreamJobState(msgspec.Struct):
    error: str = ""
    results: list[_UpstreamResult] | None = None


class _UpstreamGroup(msgspec.Struct):
    job_states: list[_UpstreamJobState] | None = None


class _UpstreamJob(msgspec.Struct):
    id: int
    state: str = ""
    result: _UpstreamGroup | None = None


_JOB = msgspec.json.Decoder(_UpstreamJob)


class DragonflyAdapter(Adapter):
    name = "dragonfly"
    Options = DragonflyOptions
    supports = frozenset({"image", "file"})
    understands = OPTIONAL_ARGUMENTS  # forwarded: the manager gives each its own meaning

    def __init__(self, cluster: ClusterInfo, options: DragonflyOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        self.manager = options.manager
        self.timeout = float(options.timeout)
        self.poll_interval = float(options.poll_interval)
        self.http = new_client(
            verify=not options.insecure,
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            headers={"User-Agent": context.user_agent},
            guard=ConnectGuard(configured=[options.manager]),
        )

    def _headers(self) -> dict[str, str]:
        token = os.environ.get(self.options.token_env, "") if self.options.token_env else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- health ----------------------------------------------------------------------------

    async def check(self) -> Health:
        """``/healthy`` answers (no token needed), and the token is accepted by ``/oapi/v1/jobs``."""
        started = time.monotonic()
        try:
            response, _ = await send_capped(self.http, "GET", f"{self.manager}/healthy", limit=UPSTREAM_PROBE_BYTES)
            if response.status_code != 200:
                return Health(
                    False, _ms(started), f"Dragonfly manager {self.manager}/healthy answered {response.status_code}"
                )
            response, _ = await send_capped(
                self.http,
                "GET",
                f"{self.manager}/oapi/v1/jobs",
                limit=UPSTREAM_ANSWER_BYTES,
                params={"page": 1, "per_page": 1},
                headers=self._headers(),
            )
        except httpx.TransportError as error:
            return Health(
                False, _ms(started), f"cannot reach the Dragonfly manager at {self.manager}: {describe(error)}"
            )
        except BodyError as error:
            return Health(
                False, _ms(started), f"the Dragonfly manager at {self.manager} answered a health check with {error}"
            )
        if response.status_code in (401, 403):
            return Health(False, _ms(started), self._refused(response.status_code))
        if response.status_code != 200:
            return Health(
                False, _ms(started), f"Dragonfly manager {self.manager}/oapi/v1/jobs answered {response.status_code}"
            )
        return Health(True, _ms(started))

    # --- preheat ---------------------------------------------------------------------------

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        started = time.monotonic()
        # Stop a little before the runner's deadline, so the message can say what upstream was doing.
        deadline = started + max(0.5, request.timeout_seconds - min(2.0, request.timeout_seconds * 0.1))
        job = await self._create(request)
        delay = FIRST_POLL_SECONDS
        last_answer = time.monotonic()
        while job.state == "PENDING":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PreheatError(
                    f"upstream Dragonfly job {job.id} on {self.manager} was still PENDING after "
                    f"{time.monotonic() - started:.0f}s, the job's timeout; it may still finish there: "
                    "check the manager's job, or raise args.timeout"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_interval)
            polled = await self._poll(job.id, max(0.1, deadline - time.monotonic()))
            if polled is None:
                if time.monotonic() - last_answer > self.timeout:
                    raise PreheatError(
                        f"the Dragonfly manager at {self.manager} stopped answering for more than {self.timeout:.0f}s "
                        f"while upstream job {job.id} was PENDING: check that the manager is running"
                    )
                continue
            job, last_answer = polled, time.monotonic()
        if job.state not in ("SUCCESS", "FAILURE"):
            raise PreheatError(
                f"upstream Dragonfly job {job.id} on {self.manager} is in state {job.state[:40]!r}, which is neither "
                f"PENDING, SUCCESS nor FAILURE, so Harbor would not understand it: check that {self.cluster.config_path}.manager "
                "is a Dragonfly manager"
            )
        self._fold(job, progress)
        if job.state == "FAILURE":
            errors = (
                [state.error.strip() for state in (job.result.job_states or []) if state.error.strip()]
                if job.result
                else []
            )
            raise PreheatError(
                f"upstream Dragonfly job {job.id} on {self.manager} failed: "
                + ("; ".join(errors) if errors else "it gave no error message; see the job on the manager")
            )

    def _create_body(self, request: PreheatRequest) -> dict[str, Any]:
        """The create request, with the field names and zero values Dragonfly's manager decodes."""
        urls = list(request.urls)
        args: dict[str, Any] = {
            "type": request.type,
            "url": urls[0] if len(urls) == 1 else "",
            "urls": urls if len(urls) > 1 else None,
            "tag": request.tag,
            "application": request.application,
            "filtered_query_params": "&".join(request.filtered_query_params),
            "headers": dict(request.headers) or None,
            "platform": request.platform,
            "scope": request.scope,
            "concurrent_count": request.concurrency,
            "timeout": int(request.timeout_seconds * NANOSECONDS),
        }
        if request.piece_length is not None:
            args["piece_length"] = request.piece_length
        args["concurrent_task_count"], args["concurrent_peer_count"] = request.concurrency, request.endpoints_at_once
        choice = request.choice
        for key, value in (("ips", list(choice.ips)), ("count", choice.count), ("percentage", choice.percentage)):
            if value:
                args[key] = value
        if request.credentials is not None:
            args["username"], args["password"] = request.credentials.username, request.credentials.password
        if (tls := request.origin_tls) is not None:
            if tls.certificate_chain:  # a Go [][]byte: each certificate's PEM bytes, base64 encoded
                args["certificate_chain"] = [base64.b64encode(pem.encode()).decode() for pem in tls.certificate_chain]
            if tls.insecure_skip_verify:
                args["insecure_skip_verify"] = True
        for key, value in request.extra.items():
            args.setdefault(key, value)
        # An empty list means "all clusters" to us; Dragonfly reads that from null, as Harbor sends it.
        return {"type": "preheat", "args": args, "scheduler_cluster_ids": self.options.scheduler_cluster_ids or None}

    async def _create(self, request: PreheatRequest) -> _UpstreamJob:
        body = msgspec.json.encode(self._create_body(request))
        headers = {**self._headers(), "Content-Type": "application/json"}
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                response, answer = await send_capped(
                    self.http,
                    "POST",
                    f"{self.manager}/oapi/v1/jobs",
                    limit=UPSTREAM_ANSWER_BYTES,
                    content=body,
                    headers=headers,
                )
                break
            except httpx.ConnectError as error:  # never sent: safe to try again
                if attempt == CREATE_ATTEMPTS:
                    raise PreheatError(
                        f"cannot reach the Dragonfly manager at {self.manager}: {describe(error)}; check that it is running "
                        f"and that {self.cluster.config_path}.manager is its address"
                    ) from None
                await asyncio.sleep(FIRST_POLL_SECONDS * attempt)
            except httpx.TransportError as error:  # maybe sent: a retry could create a second job
                raise PreheatError(
                    f"the Dragonfly manager at {self.manager} did not answer creating the job: {describe(error)}; "
                    "check the manager (a job may have been created there)"
                ) from None
            except BodyError as error:
                raise PreheatError(
                    f"the Dragonfly manager at {self.manager} answered creating the job with {error}"
                ) from None
        if response.status_code in (401, 403):
            raise PreheatError(self._refused(response.status_code))
        if response.status_code == 404:
            raise PreheatError(
                f"{self.manager} has no Dragonfly Open API (POST /oapi/v1/jobs answered 404): "
                f"check that {self.cluster.config_path}.manager is the manager's base URL"
            )
        if not 200 <= response.status_code < 300:
            raise PreheatError(
                f"the Dragonfly manager at {self.manager} rejected the job ({response.status_code}): {_upstream_errors(response, answer)}"
            )
        return self._decode(answer, "creating the job")

    async def _poll(self, job_id: int, budget: float) -> _UpstreamJob | None:
        """The job now, or ``None`` when the manager could not answer (worth polling again)."""
        try:
            response, answer = await send_capped(
                self.http,
                "GET",
                f"{self.manager}/oapi/v1/jobs/{job_id}",
                limit=UPSTREAM_ANSWER_BYTES,
                headers=self._headers(),
                timeout=min(self.timeout, budget),
            )
        except httpx.TransportError:
            return None
        except BodyError as error:
            raise PreheatError(f"the Dragonfly manager at {self.manager} answered job {job_id} with {error}") from None
        if response.status_code in (401, 403):
            raise PreheatError(self._refused(response.status_code))
        if response.status_code == 404:
            raise PreheatError(
                f"upstream Dragonfly job {job_id} disappeared from {self.manager} (404): it was deleted there"
            )
        if response.status_code >= 500:
            return None
        if response.status_code != 200:
            raise PreheatError(
                f"the Dragonfly manager at {self.manager} answered {response.status_code} for job {job_id}: {_upstream_errors(response, answer)}"
            )
        return self._decode(answer, f"job {job_id}")

    def _decode(self, answer: bytes, what: str) -> _UpstreamJob:
        try:
            return _JOB.decode(answer)
        except (msgspec.DecodeError, RecursionError) as error:
            raise PreheatError(
                f"the Dragonfly manager at {self.manager} answered {what} with something that is not a Dragonfly job "
                f"({str(error).replace('`', '')}): check that {self.cluster.config_path}.manager is a Dragonfly manager"
            ) from None

    def _refused(self, status: int) -> str:
        """The manager refused the token: say which variable holds it, never the token."""
        if not self.options.token_env:
            return (
                f"the Dragonfly manager at {self.manager} asks for a personal access token ({status}): set "
                f"{self.cluster.config_path}.token_env to an environment variable holding one with the job scope"
            )
        if status == 403:
            return (
                f"the Dragonfly manager at {self.manager} refused the token in ${self.options.token_env} (403): "
                "it lacks the job scope; create a personal access token with the job scope"
            )
        return (
            f"the Dragonfly manager at {self.manager} refused the token in ${self.options.token_env} (401): it is wrong, "
            "expired or revoked; create a personal access token with the job scope in the manager's console and "
            f"set {self.options.token_env} to it"
        )

    def _fold(self, job: _UpstreamJob, progress: Progress) -> None:
        """Upstream rows into this cluster's, the upstream scheduler cluster id kept in the hostname."""
        states = (job.result.job_states or []) if job.result else []
        results = [result for state in states for result in state.results or []]
        successes = [(r.scheduler_cluster_id, t) for r in results for t in r.success_tasks or [] if t is not None]
        failures = [(r.scheduler_cluster_id, t) for r in results for t in r.failure_tasks or [] if t is not None]
        progress.planned(len(successes) + len(failures), 0)
        for cluster_id, task in successes:
            progress.succeeded(TaskRow(url=task.url, hostname=_hostname(task, cluster_id), ip=task.ip))
        for cluster_id, task in failures:
            progress.failed(
                TaskRow(
                    url=task.url,
                    hostname=_hostname(task, cluster_id),
                    ip=task.ip,
                    description=task.description or "failed upstream without a description",
                )
            )


def _hostname(task: _UpstreamTask, scheduler_cluster_id: int) -> str:
    return f"{task.hostname or '?'} (upstream cluster {scheduler_cluster_id})"


def _upstream_errors(response: httpx.Response, answer: bytes) -> str:
    """Dragonfly answers errors as ``{"errors": "..."}`` or ``{"message": "..."}``; quote either."""
    try:
        body = msgspec.json.decode(answer)
        if isinstance(body, dict):
            for key in ("errors", "message", "error"):
                if body.get(key):
                    return quote(str(body[key]))
    except (msgspec.DecodeError, RecursionError):
        pass
    return body_excerpt(answer) or quote(response.reason_phrase)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
