"""Harbor's provider drivers, replayed: the requests Harbor sends and the decoding it does.

The gateway must look, to Harbor, exactly like Dragonfly (or Kraken). These classes send
what Harbor's Go drivers send (field names, casing, nulls, zeros, the auth header built the
way Harbor builds it) and decode answers as strictly as Go's ``encoding/json`` does into
Harbor's structs: an ``id`` that is not an integer, a time that is not RFC 3339, or a
``scheduler_cluster_id`` that is negative fails the decode just as it would fail the task.

They are version-aware where Harbor's code differs (reference sections 2-4): Harbor 2.1-2.7
pass a legacy status on unchanged and end a task only on ``SUCCESS`` or ``FAIL`` (2.8-2.11
also map ``WAITING`` and ``FAILED``); no legacy Harbor shows ``errorMsg``, only HTTP errors of
its calls; 2.12 sends no ``scheduler_cluster_ids`` (2.13 does); 2.12+ render a FAILURE as an
error list with one entry per ``job_states[]`` entry; BASIC sends ``password:P`` in 87.5% of
requests and ``username:U`` in 12.5% (Go 1.19's map iteration over Harbor's two-entry map).
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
BASIC_PASSWORD_SHARE = 0.875
"""How often Harbor's BASIC handler (built by Go 1.19) sent ``password:P`` rather than ``username:U`` (100,000 requests)."""
HARBOR_TIMEOUT = "status check timeout: 30m1s"
"""What Harbor logs when a task's status never ends it."""


def version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def go_time(text: str) -> datetime:
    """Go's time.Time UnmarshalJSON: RFC 3339 with optional fractional seconds, or fail."""
    if not isinstance(text, str) or "T" not in text or not (text.endswith("Z") or text[-6] in "+-"):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def go_marshal(value: Any) -> bytes:
    """Go's ``json.Marshal`` bytes: compact, UTF-8, ``<``, ``>`` and ``&`` escaped (map keys: sort them first)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class GoDecodeError(ValueError):
    """What Go's ``json.Unmarshal`` returns: the driver fails the task."""


def go_unmarshal(data: bytes, fields: dict[str, type]) -> dict[str, Any]:
    """Go's ``json.Unmarshal`` into a flat struct whose JSON names are ``fields``' keys.

    Keys match exactly first, then case-insensitively (Go's ``EqualFold``); unknown keys are
    ignored; ``null`` leaves the zero value; a wrong JSON type is an error, not a coercion.
    """
    try:
        document = json.loads(data)
    except ValueError as error:
        raise GoDecodeError(f"invalid character: {error}") from None
    if not isinstance(document, dict):
        raise GoDecodeError(f"json: cannot unmarshal {type(document).__name__} into Go value of type struct")
    result: dict[str, Any] = {name: kind() for name, kind in fields.items()}
    for key, value in document.items():
        name = key if key in fields else next((f for f in fields if f.lower() == key.lower()), None)
        if name is None or value is None:
            continue
        kind = fields[name]
        if type(value) is not kind:
            raise GoDecodeError(
                f"json: cannot unmarshal {type(value).__name__} into Go struct field .{name} of type {kind.__name__}"
            )
        result[name] = value
    return result


def basic_forms(info: dict[str, str]) -> list[dict[str, str]]:
    """Every header Harbor's BASIC mode may send for ``info``: one per map entry."""
    return [
        {"Authorization": "Basic " + base64.b64encode(f"{key}:{value}".encode()).decode()}
        for key, value in info.items()
    ]


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
        # Go's randomized map iteration: whichever key comes first becomes the "username". Over
        # Harbor's {"username", "password"} map, Go 1.19 yielded "password" first 87.5% of the time.
        if set(info) == {"username", "password"}:
            key = "password" if random.random() < BASIC_PASSWORD_SHARE else "username"
        else:
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
    """What Harbor shows (its task log): for 2.1-2.11 a poll's failure is always "", an HTTP error its text."""
    rows: list[tuple[str, str, str, str, str, str]] | None = None
    sent: str = ""
    """The failure text the provider sent (``errorMsg``), whether or not this Harbor shows it."""


class HarborError(Exception):
    """What Harbor's HTTP client returns for a non-2xx answer (the task fails, and Harbor logs this text).

    Harbor's ``http_client.go``: ``errors.Errorf("%s %q error: %s %s", method, url, res.Status, body)``.
    """


def harbor_error_list(messages: list[str]) -> str:
    """Harbor 2.12+'s error list for a FAILURE job, as it logs it: one UNKNOWN entry per ``job_states[]`` entry."""
    return go_marshal({"errors": [{"code": "UNKNOWN", "message": message} for message in messages]}).decode()


class DragonflyDriver:
    """Harbor 2.12+'s Dragonfly driver (``pkg/p2p/preheat/provider/dragonfly.go``).

    ``version`` "2.12" sends a policy's scope but never its cluster ids (they arrived in 2.13).
    """

    health_path = "/healthy"
    job_path = "/oapi/v1/jobs"
    default_version = "2.13"

    def __init__(
        self,
        endpoint: str,
        auth_mode: str = "NONE",
        auth_info: dict[str, str] | None = None,
        *,
        version: str | None = None,
    ) -> None:
        self.endpoint = endpoint.removesuffix("/")  # strings.TrimSuffix(endpoint, "/"): one slash
        self.auth_mode = auth_mode
        self.auth_info = auth_info or {}
        self.version = version or self.default_version
        self.http = httpx.Client(timeout=30)  # Harbor's client: 30 s per request
        self.answers: list[str] = []
        """Every response body the gateway sent this driver, for secret-leak checks."""

    def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Content-Type": "application/json", **auth_header(self.auth_mode, self.auth_info)}
        content = None if body is None else go_marshal(body)
        response = self.http.request(method, self.endpoint + path, content=content, headers=headers)
        self.answers.append(response.text)
        return response

    def _send(self, method: str, path: str, body: Any = None) -> bytes:
        response = self._request(method, path, body)
        # Harbor's client: 2xx is success, but 2.12+ fails the task on 208.
        if not 200 <= response.status_code < 300 or response.status_code == 208:
            raise harbor_error(method, response)
        return response.content

    def health(self) -> bool:
        """ "Test connection" in the UI, and the first step of every task."""
        try:
            self._send("GET", self.health_path)
        except (HarborError, httpx.TransportError):
            return False
        return True

    def create_body(
        self,
        url: str,
        headers: dict[str, str],
        *,
        scope: str = "",
        cluster_ids: list[int] | None = None,
        type: str = "image",
    ) -> dict[str, Any]:
        """Exactly what Go marshals: zero values present, a nil slice as null."""
        return {
            "type": "preheat",
            "args": {
                "type": type,
                "url": url,
                "tag": "",
                "filtered_query_params": "",
                "headers": headers,
                "scope": scope,
                "concurrent_count": 0,
                "timeout": 0,
            },
            # 2.12.x never sends cluster ids (it keeps them in extra_attrs but does not pass them on).
            "scheduler_cluster_ids": cluster_ids if cluster_ids and version_tuple(self.version) >= (2, 13) else None,
        }

    def preheat(
        self, url: str, headers: dict[str, str], *, scope: str = "", cluster_ids: list[int] | None = None
    ) -> PreheatingStatus:
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
                    rows += [
                        (t.url, t.hostname, t.ip, str(result.scheduler_cluster_id), "SUCCESS", "")
                        for t in result.success_tasks or []
                        if t
                    ]
                    rows += [
                        (t.url, t.hostname, t.ip, str(result.scheduler_cluster_id), "FAILURE", t.description)
                        for t in result.failure_tasks or []
                        if t
                    ]
            return PreheatingStatus(task_id, SUCCESS, message=f"{len(rows)} rows", rows=rows)
        if job.state == "FAILURE":
            errors = [state.error for state in (job.result.job_states or [])] if job.result else []
            return PreheatingStatus(
                task_id, FAIL, error=harbor_error_list(errors), sent="; ".join(e for e in errors if e)
            )
        return PreheatingStatus(task_id, FAIL, error=f"unknown state: {job.state}")

    def run_task(
        self,
        url: str,
        headers: dict[str, str],
        *,
        scope: str = "",
        cluster_ids: list[int] | None = None,
        poll_seconds: float = 0.2,
        timeout: float = 60.0,
    ) -> PreheatingStatus:
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


def harbor_error(method: str, response: httpx.Response) -> HarborError:
    status = f"{response.status_code} {response.reason_phrase}".strip()
    return HarborError(f"{method} {json.dumps(str(response.request.url))} error: {status} {response.text}")


PENDING = "PENDING"  # Harbor's provider.PreheatingStatusPending
LEGACY_STATUS = {"WAITING": PENDING, "FAILED": FAIL}  # 2.8-2.11's only translations; 2.1-2.7 have none
POLLED_ON = {PENDING, RUNNING, "WAITING"}
"""Statuses a provider legitimately answers while a task runs; any other non-final one is polled until Harbor's timeout."""


class LegacyDragonflyDriver(DragonflyDriver):
    """Harbor 2.1 to 2.11's Dragonfly driver: ``/_ping``, ``/preheats``, ``/preheats/{id}``.

    The create body is Harbor's ``PreheatImage`` record (``omitempty`` on headers, image, tag
    and digest). Answers decode like Go: ``ID`` matched case-insensitively and required to be
    a JSON string. From 2.8 on statuses map ``WAITING`` to pending and ``FAILED`` to fail;
    2.1-2.7 pass every value through. The job loop ends a task only on SUCCESS or FAIL.
    ``CheckProgress`` never copies ``errorMsg`` into the status (2.8+ read it only for "preheat task
    already exists"), so a failed poll shows "" and only a call's HTTP error shows text.
    """

    health_path = "/_ping"
    preheat_path = "/preheats"
    default_version = "2.11"

    def __init__(
        self,
        endpoint: str,
        auth_mode: str = "NONE",
        auth_info: dict[str, str] | None = None,
        *,
        version: str | None = None,
    ) -> None:
        super().__init__(endpoint, auth_mode, auth_info, version=version)
        if not (2, 1) <= version_tuple(self.version) <= (2, 11):
            raise ValueError(f"Harbor {self.version} does not speak the legacy dialect (2.1-2.11 do)")
        self.http_statuses: list[int] = []

    def _send(self, method: str, path: str, body: Any = None) -> bytes:
        response = self._request(method, path, body)
        self.http_statuses.append(response.status_code)
        if response.status_code == 208:  # 2.1-2.11: "already preheated"
            raise AlreadyReported()
        if not 200 <= response.status_code < 300:
            raise harbor_error(method, response)
        return response.content

    def record(
        self,
        url: str,
        headers: dict[str, str],
        *,
        image: str = "",
        tag: str = "",
        digest: str = "",
        type: str = "image",
    ) -> dict[str, Any]:
        """``json.Marshal(PreheatImage)``: struct order, ``omitempty`` fields dropped when empty."""
        record: dict[str, Any] = {"type": type, "url": url}
        if headers:
            record["headers"] = dict(sorted(headers.items()))
        for key, value in (("image", image), ("tag", tag), ("digest", digest)):
            if value:
                record[key] = value
        return record

    def preheat_record(self, record: dict[str, Any]) -> PreheatingStatus:
        try:
            data = self._send("POST", self.preheat_path, record)
        except AlreadyReported:
            return PreheatingStatus(task_id="", status=SUCCESS)
        created = go_unmarshal(data, {"ID": str})
        return PreheatingStatus(task_id=created["ID"], status=PENDING)

    def preheat(
        self,
        url: str,
        headers: dict[str, str],
        *,
        scope: str = "",
        cluster_ids: list[int] | None = None,  # type: ignore[override]
        image: str = "",
        tag: str = "",
        digest: str = "",
    ) -> PreheatingStatus:
        return self.preheat_record(self.record(url, headers, image=image, tag=tag, digest=digest))

    def check_progress(self, task_id: str) -> PreheatingStatus:
        info = go_unmarshal(
            self._send("GET", f"{self.preheat_path}/{task_id}"),
            {"ID": str, "startTime": str, "finishTime": str, "errorMsg": str, "Status": str},
        )
        for name in ("startTime", "finishTime"):
            if info[name]:
                go_time(info[name])  # Harbor keeps these strings; the gateway promises RFC 3339
        message = info["errorMsg"]
        parts = message.split(":")
        if version_tuple(self.version) >= (2, 8) and len(parts) == 2 and parts[0] == "preheat task already exists, id":
            return self.check_progress(parts[1].strip())
        status = info["Status"]
        if version_tuple(self.version) >= (2, 8):
            status = LEGACY_STATUS.get(status, status)
        return PreheatingStatus(task_id, status, error="", sent=message)

    def run_task(
        self,
        url: str,
        headers: dict[str, str],
        *,
        scope: str = "",
        cluster_ids: list[int] | None = None,  # type: ignore[override]
        poll_seconds: float = 0.2,
        timeout: float = 60.0,
        image: str = "",
        tag: str = "",
        digest: str = "",
    ) -> PreheatingStatus:
        if not self.health():
            return PreheatingStatus("", FAIL, error="provider unhealthy")
        try:
            status = self.preheat(url, headers, image=image, tag=tag, digest=digest)
        except HarborError as error:  # the one failure text these Harbors log
            return PreheatingStatus("", FAIL, error=str(error))
        deadline = time.monotonic() + timeout
        while status.status not in (SUCCESS, FAIL):
            if status.status not in POLLED_ON:
                raise AssertionError(
                    f"Harbor {self.version} would poll status {status.status!r} until {HARBOR_TIMEOUT}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"task {status.task_id} still {status.status} after {timeout}s")
            time.sleep(poll_seconds)
            status = self.check_progress(status.task_id)
        return status


class AlreadyReported(Exception):
    """HTTP 208: Harbor 2.1-2.11 take it as "already preheated" and skip the work."""


def go_random_string(length: int = 32) -> str:
    """Harbor's ``utils.GenerateRandomString``."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(random.choice(alphabet) for _ in range(length))


def go_time_now() -> str:
    """``time.Now().UTC()`` as Go marshals it: RFC 3339 with nanoseconds, trailing zeros trimmed."""
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


class KrakenDriver(DragonflyDriver):
    """Harbor's Kraken driver (any version): ``GET /health``, ``POST /registry/notifications``.

    One ``notification.Event`` per preheat, with Harbor's capitalised keys, ``Id``/``Url``
    tags, the Docker schema-2 media type whatever the artifact is, and nil ``Request`` and
    ``Actor`` as ``null``. Harbor marks the task SUCCESS on the 2xx and never polls.
    """

    health_path = "/health"
    notify_path = "/registry/notifications"
    MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

    def __init__(self, endpoint: str, auth_mode: str = "NONE", auth_info: dict[str, str] | None = None) -> None:
        super().__init__(endpoint, auth_mode, auth_info)
        self.last_body: bytes = b""

    def notification(
        self, url: str, *, image: str, tag: str = "", digest: str = "", event_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "Events": [
                {
                    "Id": event_id or go_random_string(),
                    "TimeStamp": go_time_now(),
                    "Action": "push",
                    "Target": {
                        "MediaType": self.MEDIA_TYPE,
                        "Digest": digest,
                        "Repository": image,
                        "Url": url,
                        "Tag": tag,
                    },
                    "Request": None,
                    "Actor": None,
                }
            ]
        }

    def notify(self, notification: dict[str, Any]) -> bytes:
        self.last_body = self._send("POST", self.notify_path, notification)
        return self.last_body

    def preheat(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        scope: str = "",
        cluster_ids: list[int] | None = None,  # type: ignore[override]
        image: str = "",
        tag: str = "",
        digest: str = "",
    ) -> PreheatingStatus:
        """``headers`` are dropped: the Kraken driver sends none (the gateway needs its own credentials)."""
        notification = self.notification(url, image=image, tag=tag, digest=digest)
        self.notify(notification)
        return PreheatingStatus(task_id=notification["Events"][0]["Id"], status=SUCCESS)

    def run_task(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        scope: str = "",
        cluster_ids: list[int] | None = None,  # type: ignore[override]
        poll_seconds: float = 0.2,
        timeout: float = 60.0,
        image: str = "",
        tag: str = "",
        digest: str = "",
    ) -> PreheatingStatus:
        if not self.health():
            return PreheatingStatus("", FAIL, error="provider unhealthy")
        try:
            return self.preheat(url, image=image, tag=tag, digest=digest)
        except HarborError as error:
            return PreheatingStatus("", FAIL, error=str(error))

    def job_ids(self) -> list[int]:
        """The gateway's job ids from the last answer (Harbor itself ignores the body)."""
        return list(json.loads(self.last_body)["jobs"])
