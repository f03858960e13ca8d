"""What the store keeps and hands out: jobs, their per-cluster tasks, claims and tokens."""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

from adapters.base import TaskRow

JobState = Literal["PENDING", "SUCCESS", "FAILURE"]
TaskState = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL: tuple[JobState, ...] = ("SUCCESS", "FAILURE")


class TaskProgress(msgspec.Struct, omit_defaults=True):
    items_total: int = 0
    items_done: int = 0
    items_failed: int = 0
    bytes_total: int = 0
    bytes_transferred: int = 0


class TaskResult(msgspec.Struct):
    success_tasks: list[TaskRow] = []
    failure_tasks: list[TaskRow] = []
    success_left_out: int = 0
    """Success rows the runner counted but did not store (beyond ``runner.max_result_bytes``)."""
    failure_left_out: int = 0
    """Failure rows the runner counted but did not store."""


class TaskRecord(msgspec.Struct, kw_only=True):
    id: int
    job_id: int
    cluster_id: int
    state: TaskState
    attempts: int = 0
    error: str = ""
    result: TaskResult = msgspec.field(default_factory=TaskResult)
    progress: TaskProgress = msgspec.field(default_factory=TaskProgress)
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0


class JobRecord(msgspec.Struct, kw_only=True):
    id: int
    group_id: str
    """The job's group (``group_<uuid>``), what Dragonfly calls the job's ``task_id``; stored as ``jobs.task_id``."""
    type: str
    state: JobState
    source: str
    args: dict[str, Any]
    """The request's arguments with every secret blanked."""
    cluster_ids: list[int] | None
    """The clusters the caller asked for; ``None`` means all."""
    bio: str = ""
    error: str = ""
    deadline: float
    created_at: float
    updated_at: float
    finished_at: float | None = None
    tasks: list[TaskRecord] = []

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


class NewJob(msgspec.Struct, kw_only=True):
    group_id: str
    type: str
    source: str
    args: dict[str, Any]
    cluster_ids: list[int] | None
    target_cluster_ids: list[int]
    bio: str
    secret: bytes | None
    deadline: float
    created_at: float
    event_key: str | None = None
    """A Kraken event's key: recorded with the job, and no job is made when the event already has one."""


class EventHasJob(Exception):
    """The Kraken event of a job being created already made job ``job_id`` (a retried delivery)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"the event already made job {job_id}")
        self.job_id = job_id


class Claim(msgspec.Struct, kw_only=True):
    """A task this replica now holds, with what it needs to run it."""

    task_id: int
    job_id: int
    cluster_id: int
    attempts: int
    args: dict[str, Any]
    secret: bytes | None
    deadline: float


class TokenRecord(msgspec.Struct, kw_only=True):
    id: int
    name: str
    scopes: list[str]
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None


class StoreUnavailable(Exception):
    """The store cannot be used right now (readiness fails)."""
