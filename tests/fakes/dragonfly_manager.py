"""A FAKE Dragonfly manager Open API, because no real Dragonfly manager can run here.

It follows the wire shapes of ``shared/reference/harbor-provider-protocol.md`` section 3
exactly, so the ``dragonfly`` adapter is tested against what a manager really answers:
integer ids, snake_case keys, RFC 3339 times, ``state`` one of PENDING/SUCCESS/FAILURE, and
the result nesting ``result.job_states[].results[].{scheduler_cluster_id, success_tasks,
failure_tasks}``. Every ``/oapi/v1`` route wants ``Authorization: Bearer <token>`` (401
``{"message": ...}`` otherwise), ``/healthy`` answers ``"OK"`` without one, and a body it
cannot parse gets 422 ``{"errors": ...}``.

It does not move any bytes: a job's rows are made up from its URLs (an image's manifest URL
becomes two blob URLs), one row per URL per upstream scheduler cluster, on a seed peer
called ``seed-<cluster>-0`` at ``10.0.<cluster>.5``.

Behaviour is set per fake (and can change mid-test):

- ``mode="succeed"``: SUCCESS with success rows.
- ``mode="fail"``: FAILURE with ``job_states[].error`` and failure rows.
- ``mode="unknown"``: a state Harbor does not know (``unknown_state``, default ``RUNNING``).
- ``pending_seconds``: a job stays PENDING this long after its creation (a slow job).
- a wrong token (or ``token=None`` to refuse every token): 401.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fakes._server import FakeService, QuietHandler


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeDragonflyManager(FakeService):
    def __init__(
        self,
        token: str | None = "df-token",
        *,
        mode: str = "succeed",
        pending_seconds: float = 0.0,
        unknown_state: str = "RUNNING",
    ) -> None:
        self.token = token
        self.mode = mode
        self.pending_seconds = pending_seconds
        self.unknown_state = unknown_state
        self.created: list[dict[str, Any]] = []
        """Every create request body, as received (secrets included: tests check forwarding)."""
        self.authorizations: list[str] = []
        """Every ``Authorization`` header sent to ``/oapi/v1``."""
        self.polls: dict[int, int] = {}
        self._jobs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._serve(_Handler)

    # --- the manager's behaviour -----------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        self.authorizations.append(header or "")
        return self.token is not None and header == f"Bearer {self.token}"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.created.append(body)
            job_id = len(self._jobs) + 1
            args = dict(body["args"])
            args["password"] = ""
            args["headers"] = None
            cluster_ids = body.get("scheduler_cluster_ids") or [1]
            now = _now()
            job = {
                "id": job_id,
                "created_at": now,
                "updated_at": now,
                "is_del": 0,
                "task_id": f"group_{uuid.uuid4()}",
                "bio": "",
                "type": "preheat",
                "state": "PENDING",
                "args": args,
                "result": None,
                "user_id": 1,
                "scheduler_clusters": [
                    {"id": i, "name": f"cluster-{i}", "created_at": now, "updated_at": now} for i in cluster_ids
                ],
                "_created": time.monotonic(),
                "_urls": [body["args"].get("url")] if body["args"].get("url") else body["args"].get("urls") or [],
                "_type": body["args"].get("type", "image"),
                "_clusters": cluster_ids,
            }
            self._jobs[job_id] = job
            return _public(job)

    def get(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self.polls[job_id] = self.polls.get(job_id, 0) + 1
            if time.monotonic() - job["_created"] >= self.pending_seconds:
                self._finish(job)
            return _public(job)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_public(job) for job in self._jobs.values()]

    def _finish(self, job: dict[str, Any]) -> None:
        if job["state"] != "PENDING":
            return
        state = {"succeed": "SUCCESS", "fail": "FAILURE"}.get(self.mode, self.unknown_state)
        job_states = []
        for cluster_id in job["_clusters"]:
            rows = [
                {"url": url, "hostname": f"seed-{cluster_id}-0", "ip": f"10.0.{cluster_id}.5"}
                for url in _task_urls(job)
            ]
            failed = state == "FAILURE"
            for row in rows if failed else []:
                row["description"] = "download failed: origin answered 503 Service Unavailable"
            job_states.append(
                {
                    "created_at": job["created_at"],
                    "updated_at": _now(),
                    "error": f"scheduler cluster {cluster_id}: preheat failed: seed peer seed-{cluster_id}-0 could not download "
                    "from the origin (503 Service Unavailable)"
                    if failed
                    else "",
                    "results": [
                        {
                            "scheduler_cluster_id": cluster_id,
                            "success_tasks": None if failed else rows,
                            "failure_tasks": rows if failed else None,
                        }
                    ],
                    "state": state,
                    "task_name": "preheat",
                    "task_uuid": f"task_{uuid.uuid4()}",
                    "ttl": 0,
                }
            )
        job["state"] = state
        job["updated_at"] = _now()
        job["result"] = {
            "created_at": job["created_at"],
            "updated_at": job["updated_at"],
            "group_uuid": job["task_id"],
            "state": state,
            "job_states": job_states,
        }


def _task_urls(job: dict[str, Any]) -> list[str]:
    """A file job's URLs; an image's manifest URL as two made-up blob URLs."""
    if job["_type"] == "file":
        return list(job["_urls"])
    urls = []
    for url in job["_urls"]:
        base = url.rsplit("/manifests/", 1)[0]
        urls += [f"{base}/blobs/sha256:{hashlib.sha256(f'{url}#{i}'.encode()).hexdigest()}" for i in range(2)]
    return urls


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job.items() if not key.startswith("_")}


class _Handler(QuietHandler):
    server_version = "dragonfly-manager-fake"

    @property
    def fake(self) -> FakeDragonflyManager:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def _json(self, status: int, value: Any) -> None:
        self.send_body(status, json.dumps(value).encode())

    def _guard(self) -> bool:
        if not self.fake.authorized(self.headers.get("Authorization")):
            self._json(401, {"message": "Unauthorized: the personal access token is invalid"})
            return False
        return True

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthy":
            self._json(200, "OK")
            return
        if not path.startswith("/oapi/v1/"):
            self._json(404, {"message": "404 page not found"})
            return
        if not self._guard():
            return
        if path == "/oapi/v1/jobs":
            self._json(200, self.fake.list())
            return
        if path.startswith("/oapi/v1/jobs/") and path.rsplit("/", 1)[1].isdigit():
            job = self.fake.get(int(path.rsplit("/", 1)[1]))
            if job is None:
                self._json(404, {"message": "record not found"})
            else:
                self._json(200, job)
            return
        self._json(404, {"message": "404 page not found"})

    def do_POST(self) -> None:
        if self.path != "/oapi/v1/jobs":
            self._json(404, {"message": "404 page not found"})
            return
        raw = self.read_body()
        if not self._guard():
            return
        try:
            body = json.loads(raw)
            if body.get("type") != "preheat" or not isinstance(body.get("args"), dict):
                raise ValueError("Key: 'CreateJobRequest.Type' Error:Field validation for 'Type' failed")
            if not isinstance(body.get("args", {}).get("timeout", 0), int):
                raise ValueError(
                    "json: cannot unmarshal number into Go struct field PreheatArgs.args.timeout of type time.Duration"
                )
        except ValueError as error:
            self._json(422, {"errors": str(error)})
            return
        self._json(200, self.fake.create(body))
