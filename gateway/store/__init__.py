"""Durable jobs, tasks and tokens: one contract, an embedded SQLite and a shared PostgreSQL.

A job is a group of per-cluster tasks. Tasks are claimed with a lease and heartbeated, so a
crashed replica's work is reclaimed; the job's state is rolled up from its tasks in the
same transaction that finishes the last one.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from adapters.base import TaskRow

JobState = Literal["PENDING", "SUCCESS", "FAILURE"]
TaskState = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE"]
TERMINAL = ("SUCCESS", "FAILURE")


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
    task_id: str
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
    task_id: str
    type: str
    source: str
    args: dict[str, Any]
    cluster_ids: list[int] | None
    target_cluster_ids: list[int]
    bio: str
    secret: bytes | None
    deadline: float
    created_at: float


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


def open_store(url: str) -> SqlStore:
    """The store a URL names; not yet connected (call ``await store.open()``)."""
    from gateway.store.sql import SqlStore

    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteDriver

        return SqlStore(SqliteDriver(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresDriver

        return SqlStore(PostgresDriver(url))
    raise ValueError(f"unsupported store url {url.split(':', 1)[0]}://...")


from gateway.store.sql import SqlStore  # noqa: E402  (re-exported for type hints)

__all__ = [
    "TERMINAL",
    "Claim",
    "JobRecord",
    "JobState",
    "NewJob",
    "SqlStore",
    "StoreUnavailable",
    "TaskProgress",
    "TaskRecord",
    "TaskResult",
    "TaskState",
    "TokenRecord",
    "open_store",
]
