"""The job store's contract, held by the embedded SQLite store and the shared PostgreSQL store alike.

Every contract test runs twice: on SQLite in ``tmp_path`` and on PostgreSQL in a fresh
schema of a database created for this module (``gw_test_<random>``, dropped afterwards).
Where the contract is about several gateway replicas sharing one database, ``peer`` is a
second store object on the same PostgreSQL schema; for SQLite, which one process owns,
``peer`` is the same store, and the concurrency comes from one process's tasks.

PostgreSQL comes from ``PREHEAT_GATEWAY_TEST_POSTGRES_URL`` (default: user ``postgres`` on
127.0.0.1:5432, trust auth); when it is unreachable its cases are skipped, or fail when
``PREHEAT_GATEWAY_REQUIRE_PREREQS=1``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from adapters.base import TaskRow
from gateway.store import (
    Claim,
    EventHasJob,
    NewJob,
    SqlStore,
    StoreUnavailable,
    TaskProgress,
    TaskResult,
    open_store,
)
from gateway.store.postgres import PostgresDriver, translate
from gateway.store.sql import MIGRATIONS

pytestmark = pytest.mark.anyio

REQUIRE_PREREQS_ENV = "PREHEAT_GATEWAY_REQUIRE_PREREQS"
POSTGRES_ADMIN_URL = os.environ.get(
    "PREHEAT_GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

MakeStore = Callable[..., Awaitable[SqlStore]]


# --- PostgreSQL as a prerequisite ----------------------------------------------------------


def require_postgres() -> None:
    """Skip when PostgreSQL is unreachable, or fail when ``PREHEAT_GATEWAY_REQUIRE_PREREQS=1``."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as error:
        reason = f"PostgreSQL at {_without_password(POSTGRES_ADMIN_URL)} is unreachable: {' '.join(str(error).split())}"
        if os.environ.get(REQUIRE_PREREQS_ENV) == "1":
            pytest.fail(f"missing prerequisite ({REQUIRE_PREREQS_ENV}=1): {reason}", pytrace=False)
        pytest.skip(f"missing prerequisite: {reason}")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """The URL of a database created for this module, dropped afterwards."""
    require_postgres()
    name = f"gw_test_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(POSTGRES_ADMIN_URL, name)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- the stores ----------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty store: a new SQLite file, or a new schema (first on the search path) in the module's database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'gateway.db'}"
    database: str = request.getfixturevalue("postgres_database")
    schema = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return f"{database}?options=-csearch_path%3D{schema}"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


@pytest.fixture
async def make_store(store_url: str) -> AsyncIterator[MakeStore]:
    """Open another store object on the test's database (migrated unless ``migrate=False``); all closed at the end."""
    opened: list[SqlStore] = []

    async def make(*, migrate: bool = True) -> SqlStore:
        store = open_store(store_url)
        opened.append(store)
        if migrate:
            await store.open()
        else:
            await store.driver.open()
        return store

    try:
        yield make
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> SqlStore:
    return await make_store()


@pytest.fixture
async def peer(store: SqlStore, store_url: str, make_store: MakeStore) -> SqlStore:
    """Another replica: a second store on the same PostgreSQL schema; the same store on SQLite."""
    return await make_store() if is_postgres(store_url) else store


# --- helpers -------------------------------------------------------------------------------


def new_job(**fields: Any) -> NewJob:
    now = time.time()
    defaults: dict[str, Any] = {
        "group_id": f"harbor-{secrets.token_hex(4)}",
        "type": "image",
        "source": "harbor",
        "args": {"image": "library/app:1.0", "password": ""},
        "cluster_ids": None,
        "target_cluster_ids": [1, 2],
        "bio": "",
        "secret": b"\x00robot-secret\xff",
        "deadline": now + 3600,
        "created_at": now,
    }
    return NewJob(**{**defaults, **fields})


async def finish(store: SqlStore, claim: Claim, owner: str, state: str = "SUCCESS", error: str = "") -> str | None:
    return await store.finish_task(
        claim.task_id, owner, state=state, error=error, progress=TaskProgress(), result=TaskResult()
    )


async def raw(store: SqlStore, query: str, **params: Any) -> tuple[Any, ...] | None:
    """One row straight from the database, bypassing the store's record mapping."""
    return await store.driver.fetchone(query, params)


# --- schema --------------------------------------------------------------------------------


async def test_migrations_are_idempotent(store: SqlStore) -> None:
    assert await store.migrate() == len(MIGRATIONS)
    assert await store.migrate() == len(MIGRATIONS)

    versions = await store.driver.fetchall("SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in versions] == list(range(1, len(MIGRATIONS) + 1))


async def test_replicas_migrating_at_once_both_succeed(make_store: MakeStore, store_url: str) -> None:
    first = await make_store(migrate=False)
    second = await make_store(migrate=False) if is_postgres(store_url) else first

    assert await asyncio.gather(first.migrate(), second.migrate()) == [len(MIGRATIONS)] * 2

    versions = await first.driver.fetchall("SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in versions] == list(range(1, len(MIGRATIONS) + 1))
    job = await second.create_job(new_job())
    assert (await first.get_job(job.id)) == job


async def test_a_failed_transaction_leaves_nothing_behind(store: SqlStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.driver.transaction() as tx:
            await tx.execute(
                "INSERT INTO tokens (name, token_hash, scopes, created_at) VALUES (:name, :hash, '', :now)",
                {"name": "ci", "hash": "h", "now": time.time()},
            )
            raise RuntimeError("abort")

    assert await store.list_tokens() == []


async def test_literal_percent_signs_and_parameters_mix(store: SqlStore) -> None:
    await store.create_token("deploy-ci", "h1", [], None)
    await store.create_token("nightly", "h2", [], None)

    assert await store.driver.fetchall("SELECT name FROM tokens WHERE name LIKE '%-ci'") == [("deploy-ci",)]
    assert await store.driver.fetchall(
        "SELECT name FROM tokens WHERE name LIKE '%' || CAST(:suffix AS TEXT)", {"suffix": "ly"}
    ) == [("nightly",)]


async def test_a_closed_store_is_unavailable(store: SqlStore) -> None:
    job = await store.create_job(new_job())
    await store.close()

    with pytest.raises(StoreUnavailable):
        await store.get_job(job.id)
    with pytest.raises(StoreUnavailable):
        await store.claim_tasks("a", 1, 60)


# --- jobs ----------------------------------------------------------------------------------


async def test_a_created_job_reads_back_with_its_pending_tasks(store: SqlStore) -> None:
    now = time.time()
    created = await store.create_job(
        new_job(
            group_id="harbor-42",
            type="image",
            source="api",
            args={"image": "library/app:1.0", "platforms": ["linux/amd64"]},
            cluster_ids=[3, 1],
            target_cluster_ids=[3, 1],
            bio="warm before the release",
            deadline=now + 60,
            created_at=now,
        )
    )

    job = await store.get_job(created.id)
    assert job == created
    assert job is not None
    assert (job.group_id, job.type, job.state, job.source, job.bio, job.error) == (
        "harbor-42",
        "image",
        "PENDING",
        "api",
        "warm before the release",
        "",
    )
    assert job.args == {"image": "library/app:1.0", "platforms": ["linux/amd64"]}
    assert job.cluster_ids == [3, 1]
    assert (job.deadline, job.created_at, job.updated_at, job.finished_at) == (now + 60, now, now, None)
    assert [task.cluster_id for task in job.tasks] == [1, 3]
    for task in job.tasks:
        assert (task.job_id, task.state, task.attempts, task.error) == (job.id, "PENDING", 0, "")
        assert task.result == TaskResult() and task.progress == TaskProgress()
        assert task.started_at is None and task.finished_at is None

    everywhere = await store.create_job(new_job(cluster_ids=None, secret=None))
    assert (await store.get_job(everywhere.id)).cluster_ids is None  # type: ignore[union-attr]
    assert await raw(store, "SELECT secret FROM jobs WHERE id = :id", id=everywhere.id) == (None,)
    assert await raw(store, "SELECT secret FROM jobs WHERE id = :id", id=created.id) == (b"\x00robot-secret\xff",)
    assert await store.get_job(everywhere.id + 1000) is None


async def test_list_jobs_filters_pages_and_counts(store: SqlStore) -> None:
    j1 = await store.create_job(
        new_job(target_cluster_ids=[1, 2], bio="nightly warmup", args={"image": "library/app:1.0"})
    )
    j2 = await store.create_job(new_job(source="api", target_cluster_ids=[2], args={"image": "library/db:2.0"}))
    j3 = await store.create_job(new_job(type="file", target_cluster_ids=[3], args={"url": "https://files/model.bin"}))
    j4 = await store.create_job(new_job(target_cluster_ids=[1], args={"image": "library/cache:100%"}))
    [claim] = [c for c in await store.claim_tasks("runner", 10, 60) if c.job_id == j3.id]
    assert await finish(store, claim, "runner", "FAILURE", "disk full on cluster 3") == "FAILURE"
    await store.release_tasks("runner")

    async def ids(**filters: Any) -> tuple[list[int], int]:
        jobs, total = await store.list_jobs(limit=filters.pop("limit", 50), **filters)
        return [job.id for job in jobs], total

    assert await ids() == ([j4.id, j3.id, j2.id, j1.id], 4)
    assert await ids(state="FAILURE") == ([j3.id], 1)
    assert await ids(state="PENDING") == ([j4.id, j2.id, j1.id], 3)
    assert await ids(type="file") == ([j3.id], 1)
    assert await ids(source="api") == ([j2.id], 1)
    assert await ids(cluster_id=1) == ([j4.id, j1.id], 2)
    assert await ids(cluster_id=2) == ([j2.id, j1.id], 2)
    assert await ids(cluster_id=9) == ([], 0)
    assert await ids(text="nightly") == ([j1.id], 1)  # bio
    assert await ids(text="library/db") == ([j2.id], 1)  # args
    assert await ids(text="disk full") == ([j3.id], 1)  # error
    assert await ids(text="100%") == ([j4.id], 1)  # wildcards in the search are taken literally (dropped)
    assert await ids(state="PENDING", type="image", source="harbor", cluster_id=1) == ([j4.id, j1.id], 2)

    assert await ids(limit=2) == ([j4.id, j3.id], 4)
    assert await ids(limit=2, offset=2) == ([j2.id, j1.id], 4)
    assert await ids(limit=2, offset=4) == ([], 4)
    assert await ids(limit=1, offset=1, state="PENDING") == ([j2.id], 3)

    jobs, _ = await store.list_jobs(limit=10, cluster_id=1)
    assert {job.id: [task.cluster_id for task in job.tasks] for job in jobs} == {j4.id: [1], j1.id: [1, 2]}
    assert await store.count_jobs_by_state() == {"PENDING": 3, "FAILURE": 1}


async def test_set_bio(store: SqlStore) -> None:
    job = await store.create_job(new_job())

    assert await store.set_bio(job.id, "for the 2.0 rollout") is True
    assert (await store.get_job(job.id)).bio == "for the 2.0 rollout"  # type: ignore[union-attr]
    assert await store.set_bio(job.id + 1000, "nobody") is False


async def test_deleting_a_job_deletes_its_tasks(store: SqlStore) -> None:
    job = await store.create_job(new_job(target_cluster_ids=[1, 2, 3]))
    other = await store.create_job(new_job(target_cluster_ids=[1]))

    assert await store.delete_job(job.id) is True
    assert await store.get_job(job.id) is None
    assert await raw(store, "SELECT COUNT(*) FROM tasks WHERE job_id = :id", id=job.id) == (0,)
    assert await store.delete_job(job.id) is False
    assert len((await store.get_job(other.id)).tasks) == 1  # type: ignore[union-attr]

    # The schema cascades too, for rows removed without going through the store.
    async with store.driver.transaction() as tx:
        await tx.execute("DELETE FROM jobs WHERE id = :id", {"id": other.id})
    assert await raw(store, "SELECT COUNT(*) FROM tasks WHERE job_id = :id", id=other.id) == (0,)


async def test_job_ids_are_unique_and_increasing_across_replicas(store: SqlStore, peer: SqlStore) -> None:
    sequential = [(await (store if i % 2 else peer).create_job(new_job())).id for i in range(6)]
    assert sequential == sorted(sequential) and len(set(sequential)) == 6

    concurrent = [
        job.id for job in await asyncio.gather(*((store, peer)[i % 2].create_job(new_job()) for i in range(10)))
    ]
    assert len(set(concurrent)) == 10
    assert min(concurrent) > max(sequential)


# --- claiming and leases -------------------------------------------------------------------


async def test_a_claim_carries_what_the_runner_needs(store: SqlStore) -> None:
    job = await store.create_job(new_job(target_cluster_ids=[5, 4], args={"image": "library/app:1.0"}))

    claims = await store.claim_tasks("replica-a", 10, 60)

    assert [(c.job_id, c.cluster_id, c.attempts) for c in claims] == [(job.id, 5, 1), (job.id, 4, 1)]
    for claim in claims:
        assert claim.args == {"image": "library/app:1.0"}
        assert type(claim.secret) is bytes and claim.secret == b"\x00robot-secret\xff"
        assert claim.deadline == job.deadline
    running = await store.get_job(job.id)
    assert [task.state for task in running.tasks] == ["RUNNING", "RUNNING"]  # type: ignore[union-attr]
    assert all(task.started_at is not None for task in running.tasks)  # type: ignore[union-attr]
    assert await store.claim_tasks("replica-b", 10, 60) == []


async def test_claim_respects_its_limit_and_order(store: SqlStore) -> None:
    job = await store.create_job(new_job(target_cluster_ids=[1, 2, 3]))
    task_ids = sorted(task.id for task in job.tasks)

    assert [c.task_id for c in await store.claim_tasks("a", 2, 60)] == task_ids[:2]
    assert [c.task_id for c in await store.claim_tasks("a", 2, 60)] == task_ids[2:]


async def test_concurrent_claimers_never_share_a_task(store: SqlStore, peer: SqlStore) -> None:
    jobs = [await store.create_job(new_job(target_cluster_ids=[1, 2, 3, 4])) for _ in range(6)]
    all_tasks = {task.id for job in jobs for task in job.tasks}  # 24 tasks, 10 claimers of 3

    batches = await asyncio.gather(*((store, peer)[i % 2].claim_tasks(f"replica-{i}", 3, 60) for i in range(10)))

    claimed = [claim.task_id for batch in batches for claim in batch]
    assert len(claimed) == len(set(claimed)), "a task was claimed twice"
    assert set(claimed) == all_tasks
    owners = await store.driver.fetchall("SELECT id, lease_owner FROM tasks WHERE state = 'RUNNING'")
    assert {task_id: owner for task_id, owner in owners} == {
        claim.task_id: f"replica-{i}" for i, batch in enumerate(batches) for claim in batch
    }
    assert await peer.claim_tasks("late", 10, 60) == []


async def test_an_expired_lease_is_reclaimed_and_the_old_owner_loses_the_task(store: SqlStore, peer: SqlStore) -> None:
    job = await store.create_job(new_job(target_cluster_ids=[7]))
    [old] = await store.claim_tasks("crashed", 10, lease_seconds=-1)  # a lease already run out

    [new] = await peer.claim_tasks("successor", 10, lease_seconds=60)

    assert (new.task_id, new.attempts) == (old.task_id, 2)
    assert await store.claim_tasks("third", 10, 60) == []  # a live lease is not taken
    assert await finish(store, old, "crashed", "FAILURE", "too late") is None
    assert await store.renew_leases("crashed", [old.task_id], 60) == set()
    assert await finish(peer, new, "successor") == "SUCCESS"
    assert (await store.get_job(job.id)).state == "SUCCESS"  # type: ignore[union-attr]


async def test_renewing_leases_reports_only_the_tasks_still_held(store: SqlStore) -> None:
    doomed = await store.create_job(new_job(target_cluster_ids=[1, 2]))
    kept = await store.create_job(new_job(target_cluster_ids=[3]))
    claims = await store.claim_tasks("a", 10, lease_seconds=5)
    doomed_ids = {c.task_id for c in claims if c.job_id == doomed.id}
    [kept_id] = [c.task_id for c in claims if c.job_id == kept.id]
    (before,) = await raw(store, "SELECT lease_until FROM tasks WHERE id = :id", id=kept_id)  # type: ignore[misc]

    assert await store.delete_job(doomed.id) is True
    assert await store.renew_leases("a", [*doomed_ids, kept_id], 600) == {kept_id}

    (after,) = await raw(store, "SELECT lease_until FROM tasks WHERE id = :id", id=kept_id)  # type: ignore[misc]
    assert after > before + 500
    assert await store.renew_leases("b", [kept_id], 600) == set()
    assert await store.renew_leases("a", [], 600) == set()


async def test_release_hands_tasks_back(store: SqlStore) -> None:
    await store.create_job(new_job(target_cluster_ids=[1, 2, 3, 4]))
    a = [c.task_id for c in await store.claim_tasks("a", 3, 60)]
    [b] = [c.task_id for c in await store.claim_tasks("b", 3, 60)]

    assert await store.release_tasks("a", []) == 0
    assert await store.release_tasks("a", [a[0], b]) == 1  # b's task is not a's to release
    assert await store.release_tasks("a") == 2
    assert await store.release_tasks("a") == 0
    released = await store.driver.fetchall(
        "SELECT state, lease_owner, lease_until FROM tasks WHERE lease_owner IS NULL"
    )
    assert released == [("PENDING", None, None)] * 3
    assert await store.release_tasks("*") == 1  # everyone's (the single-writer store's start-up)

    again = await store.claim_tasks("c", 10, 60)
    assert sorted(c.task_id for c in again) == sorted([*a, b])
    assert {c.attempts for c in again} == {2}


# --- finishing and the job's roll-up -------------------------------------------------------


async def test_a_job_fails_when_any_task_fails_and_its_secret_is_purged(store: SqlStore) -> None:
    job = await store.create_job(new_job(target_cluster_ids=[1, 2, 3]))
    claims = {c.cluster_id: c for c in await store.claim_tasks("a", 10, 60)}
    rows = TaskResult(
        success_tasks=[TaskRow(url="https://cache-1/v2/library/app/blobs/sha256:aa", hostname="cache-1", ip="10.0.0.1")]
    )
    progress = TaskProgress(items_total=1, items_done=1, bytes_total=300, bytes_transferred=300)

    await store.save_progress(claims[1].task_id, "a", TaskProgress(items_total=1), TaskResult())
    await store.save_progress(claims[1].task_id, "intruder", progress, rows)  # not its lease: ignored
    midway = await store.get_job(job.id)
    assert midway.tasks[0].progress == TaskProgress(items_total=1)  # type: ignore[union-attr]

    assert (
        await store.finish_task(claims[1].task_id, "a", state="SUCCESS", error="", progress=progress, result=rows)
        == "PENDING"
    )
    assert (await store.get_job(job.id)).state == "PENDING"  # type: ignore[union-attr]
    assert await raw(store, "SELECT secret FROM jobs WHERE id = :id", id=job.id) == (b"\x00robot-secret\xff",)
    assert await finish(store, claims[3], "a", "FAILURE", "cluster 3 unreachable") == "PENDING"
    assert await finish(store, claims[2], "a", "FAILURE", "cluster 2 refused the pull") == "FAILURE"

    done = await store.get_job(job.id)
    assert done is not None
    assert done.state == "FAILURE" and done.finished
    assert done.error == "cluster 2 refused the pull; cluster 3 unreachable"
    assert done.finished_at is not None
    assert [(t.state, t.error) for t in done.tasks] == [
        ("SUCCESS", ""),
        ("FAILURE", "cluster 2 refused the pull"),
        ("FAILURE", "cluster 3 unreachable"),
    ]
    assert (done.tasks[0].progress, done.tasks[0].result) == (progress, rows)
    assert all(t.finished_at is not None for t in done.tasks)
    assert await raw(store, "SELECT secret FROM jobs WHERE id = :id", id=job.id) == (None,)
    assert await raw(store, "SELECT COUNT(*) FROM tasks WHERE lease_owner IS NOT NULL") == (0,)
    assert await finish(store, claims[2], "a") is None  # already finished


async def test_a_job_succeeds_when_every_task_succeeds(store: SqlStore) -> None:
    job = await store.create_job(new_job(target_cluster_ids=[1, 2]))
    first, second = await store.claim_tasks("a", 10, 60)

    assert await finish(store, first, "a") == "PENDING"
    assert await finish(store, second, "a") == "SUCCESS"

    done = await store.get_job(job.id)
    assert (done.state, done.error) == ("SUCCESS", "")  # type: ignore[union-attr]
    assert await raw(store, "SELECT secret FROM jobs WHERE id = :id", id=job.id) == (None,)
    assert await store.count_jobs_by_state() == {"SUCCESS": 1}


async def test_sibling_tasks_finished_at_once_by_two_replicas_still_roll_the_job_up(
    store: SqlStore, peer: SqlStore
) -> None:
    jobs = [await store.create_job(new_job(target_cluster_ids=[1, 2])) for _ in range(10)]
    for job in jobs:
        [mine] = await store.claim_tasks("a", 1, 60)
        [theirs] = await peer.claim_tasks("b", 1, 60)

        outcomes = await asyncio.gather(finish(store, mine, "a"), finish(peer, theirs, "b"))

        assert sorted(outcomes, key=str) == ["PENDING", "SUCCESS"]
        assert (await store.get_job(job.id)).state == "SUCCESS"  # type: ignore[union-attr]


# --- Kraken events -------------------------------------------------------------------------


async def test_a_kraken_event_makes_its_job_once_in_the_same_transaction(store: SqlStore, peer: SqlStore) -> None:
    first = await store.create_job(new_job(event_key="event-a"))

    with pytest.raises(EventHasJob) as retried:
        await peer.create_job(new_job(event_key="event-a"))

    assert retried.value.job_id == first.id, "a retry handled by another replica: the first job wins"
    assert await store.count_jobs_by_state() == {"PENDING": 1}, "the retry's job was rolled back with its event"
    assert await peer.kraken_event_jobs(["event-a", "event-b"]) == {"event-a": first.id}
    assert await store.kraken_event_jobs([]) == {}

    await store.delete_job(first.id)
    assert await store.kraken_event_jobs(["event-a"]) == {}, "a deleted job's events are forgotten with it"
    assert (await peer.create_job(new_job(event_key="event-a"))).id != first.id, "and the event may make a job again"


# --- personal access tokens ----------------------------------------------------------------


async def test_tokens_create_find_touch_revoke_and_list(store: SqlStore) -> None:
    expires = time.time() + 86400
    ci = await store.create_token("ci", "hash-ci", ["preheat:write", "jobs:read"], expires)
    ops = await store.create_token("ops", "hash-ops", [], None)

    assert (ci.name, ci.scopes, ci.expires_at, ci.last_used_at, ci.revoked_at) == (
        "ci",
        ["preheat:write", "jobs:read"],
        expires,
        None,
        None,
    )
    assert ops.scopes == [] and ops.expires_at is None
    with pytest.raises(ValueError, match="'ci' already exists"):
        await store.create_token("ci", "another-hash", [], None)

    assert await store.find_token("hash-ci") == ci
    assert await store.find_token("no-such-hash") is None
    await store.touch_token(ci.id)
    assert (await store.find_token("hash-ci")).last_used_at is not None  # type: ignore[union-attr]

    assert await store.revoke_token("ci") is True
    assert await store.revoke_token("ci") is False
    assert await store.revoke_token("nobody") is False
    assert (await store.find_token("hash-ci")).revoked_at is not None  # type: ignore[union-attr]

    listed = await store.list_tokens()
    assert [(t.id, t.name) for t in listed] == [(ci.id, "ci"), (ops.id, "ops")]
    assert listed[1].revoked_at is None


# --- the PostgreSQL driver itself (no server needed) ---------------------------------------


def test_parameters_are_translated_for_psycopg() -> None:
    assert translate("SELECT a FROM t WHERE a = :a AND b = :a_2") == "SELECT a FROM t WHERE a = %(a)s AND b = %(a_2)s"
    assert translate("SELECT x::text, ':lit', \"col:x\" FROM t") == "SELECT x::text, ':lit', \"col:x\" FROM t"
    assert translate("SELECT 'it''s :not' || :yes") == "SELECT 'it''s :not' || %(yes)s"
    assert translate("SELECT 5 % 2, '100%' -- :comment %\n") == "SELECT 5 %% 2, '100%%' -- :comment %%\n"


def test_pool_parameters_are_taken_out_of_the_url() -> None:
    driver = PostgresDriver("postgresql://gw:hunter2@db.internal:6543/jobs?pool_max=3&sslmode=disable&pool_min=0")

    assert (driver.min_size, driver.max_size) == (0, 3)
    assert "pool_" not in driver._conninfo and "sslmode=disable" in driver._conninfo
    assert driver.description == "gw@db.internal:6543/jobs"
    assert "hunter2" not in repr(driver)
    assert PostgresDriver("postgres://db.internal/jobs").max_size == 10


async def test_opening_fails_clearly_when_postgres_is_down() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = PostgresDriver(f"postgresql://gw:hunter2@127.0.0.1:{port}/jobs", open_timeout=1)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await driver.open()

    assert time.monotonic() - started < 8
    message = str(raised.value)
    assert f"127.0.0.1:{port}/jobs" in message and "within 1 s" in message
    assert "hunter2" not in message
    with pytest.raises(StoreUnavailable, match="closed"):
        await driver.fetchone("SELECT 1")
