"""Durable jobs, tasks and tokens: one contract, an embedded SQLite and a shared PostgreSQL.

A job is a group of per-cluster tasks. Tasks are claimed with a lease and heartbeated, so a
crashed replica's work is reclaimed; the job's state is rolled up from its tasks in the
same transaction that finishes the last one.
"""

from __future__ import annotations

from gateway.store.models import (
    JOB_STATES,
    TERMINAL,
    Claim,
    EventHasJob,
    JobRecord,
    JobState,
    NewJob,
    StoreUnavailable,
    TaskProgress,
    TaskRecord,
    TaskResult,
    TaskState,
    TokenRecord,
)
from gateway.store.sql import SqlStore


def open_store(url: str, *, serving: bool = False) -> SqlStore:
    """The store a URL names; not yet connected (call ``await store.open()``).

    ``serving``: this process serves the gateway, and owns an embedded SQLite file alone.
    """
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteDriver

        return SqlStore(SqliteDriver(url.removeprefix("sqlite:///"), owner=serving))
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresDriver

        return SqlStore(PostgresDriver(url))
    raise ValueError(f"unsupported store url {url.split(':', 1)[0]}://...")


__all__ = [
    "JOB_STATES",
    "TERMINAL",
    "Claim",
    "EventHasJob",
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
