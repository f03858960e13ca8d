"""Claims pending cluster tasks, drives adapters, heartbeats, and recovers after a crash.

Every replica runs one runner. It claims tasks under a lease, runs each through its
cluster's adapter with a deadline, records progress about once a second, and renews its
leases. A task whose replica died is reclaimed when its lease runs out (on the embedded
SQLite store, which one process owns, at start). Deleting a job removes its tasks; the
heartbeat notices the lost lease and cancels the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from adapters.base import (
    DEFAULT_PLATFORM,
    DEFAULT_SCOPE,
    Adapter,
    Credentials,
    EndpointChoice,
    PreheatError,
    PreheatRequest,
    TaskRow,
)
from gateway.config import Config
from gateway.jobs import JobSpec
from gateway.metrics import Metrics
from gateway.redact import stored_error, stored_row, strip_userinfo
from gateway.secretbox import SecretBox
from gateway.store import TERMINAL, Claim, SqlStore, TaskProgress, TaskResult

MAX_ROWS_PER_TASK = 10_000
DEFAULT_MAX_RESULT_BYTES = 1 << 20
PROGRESS_INTERVAL_SECONDS = 1.0
log = logging.getLogger("gateway.runner")
_ROW = msgspec.json.Encoder()


class Recorder:
    """The :class:`adapters.base.Progress` the runner hands an adapter: counts and rows, kept bounded.

    Rows are clipped as they arrive (:func:`stored_row`) and stored until their JSON reaches
    ``max_result_bytes`` (or ``MAX_ROWS_PER_TASK`` of a kind); later rows are only counted, in
    ``result.*_left_out``, so an adapter quoting a hostile registry cannot grow a job's status.
    """

    def __init__(self, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES, filtered: Sequence[str] = ()) -> None:
        self.progress = TaskProgress()
        self.result = TaskResult(success_tasks=[], failure_tasks=[])
        self.dirty = False
        self.max_result_bytes = max_result_bytes
        self.result_bytes = 0
        self._full = False
        self._filtered = tuple(str(name) for name in filtered)

    def _keep(self, row: TaskRow, rows: list[TaskRow]) -> bool:
        if self._full or len(rows) >= MAX_ROWS_PER_TASK:
            return False
        row = stored_row(row, filtered=self._filtered)
        size = len(_ROW.encode(row)) + 1
        if self.result_bytes + size > self.max_result_bytes:
            self._full = True
            return False
        self.result_bytes += size
        rows.append(row)
        return True

    @property
    def left_out(self) -> int:
        return self.result.success_left_out + self.result.failure_left_out

    def planned(self, items: int, total_bytes: int) -> None:
        self.progress.items_total += items
        self.progress.bytes_total += total_bytes
        self.dirty = True

    def transferred(self, nbytes: int) -> None:
        self.progress.bytes_transferred += nbytes
        self.dirty = True

    def succeeded(self, row: TaskRow) -> None:
        self.progress.items_done += 1
        if not self._keep(row, self.result.success_tasks):
            self.result.success_left_out += 1
        self.dirty = True

    def failed(self, row: TaskRow) -> None:
        self.progress.items_failed += 1
        if not self._keep(row, self.result.failure_tasks):
            self.result.failure_left_out += 1
        self.dirty = True


class _Running(msgspec.Struct):
    claim: Claim
    task: asyncio.Task[None]
    recorder: Recorder
    cancelled: bool = False
    bytes_counted: int = 0


class Runner:
    def __init__(
        self, config: Config, store: SqlStore, box: SecretBox, adapters: Mapping[int, Adapter], metrics: Metrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.box = box
        self.adapters = adapters
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._running: dict[int, _Running] = {}
        self._stopping = False
        self._draining_since = 0.0
        self._loops: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self.store.dialect == "sqlite":
            recovered = await self.store.release_tasks("*")
            if recovered:
                log.warning("resuming %d task(s) left running by a previous process", recovered)
        self.store.watch(self.wake)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="runner-claim"),
            asyncio.create_task(self._tick_loop(), name="runner-tick"),
        ]

    def drain(self) -> None:
        """Claim no more work (the process is shutting down: another replica takes new tasks); running ones go on."""
        if self._stopping:
            return
        self._stopping = True
        self._draining_since = time.monotonic()
        self._wake.set()  # the claim loop ends after the claim it may be making (never cut: its tasks would be lost)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let running tasks finish until ``grace`` seconds after :meth:`drain` (leases still
        renewed), then hand the rest back. The server's drain counts, so a graceful stop is not made longer."""
        self.drain()
        if self._loops:
            await asyncio.gather(self._loops[0], return_exceptions=True)
        pending = [running.task for running in self._running.values()]
        left = grace - (time.monotonic() - self._draining_since)
        if pending and left > 0:
            await asyncio.wait(pending, timeout=left)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        leftover = list(self._running.values())
        for running in leftover:
            running.task.cancel()
        await asyncio.gather(*(running.task for running in leftover), return_exceptions=True)
        if leftover:
            released = await self.store.release_tasks(self.owner, [running.claim.task_id for running in leftover])
            log.info("handed back %d unfinished task(s)", released)

    def cancel_job(self, job_id: int) -> None:
        """Cancel this replica's work on a job (it is being deleted)."""
        for running in self._running.values():
            if running.claim.job_id == job_id:
                running.cancelled = True
                running.task.cancel()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            free = self.config.runner.workers - len(self._running)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = await self.store.claim_tasks(self.owner, free, self.config.runner.lease_seconds)
                except Exception:
                    log.exception("claiming tasks failed; retrying")
                    await asyncio.sleep(self.config.runner.poll_seconds)
                    continue
            for claim in claims:
                recorder = Recorder(self.config.runner.max_result_bytes, claim.args.get("filtered_query_params") or ())
                task = asyncio.create_task(self._run(claim, recorder), name=f"task-{claim.task_id}")
                self._running[claim.task_id] = _Running(claim=claim, task=task, recorder=recorder)
            if claims and free - len(claims) > 0:
                continue  # there may be more waiting
            self._wake.clear()
            if self._stopping:  # drain() may have set the event just before it was cleared
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.runner.poll_seconds)

    async def _tick_loop(self) -> None:
        """Save progress about once a second; renew leases a few times per lease."""
        last_renewal = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_SECONDS)
            try:
                for task_id, running in list(self._running.items()):
                    self._count_bytes(running)
                    if running.recorder.dirty and not running.task.done():
                        running.recorder.dirty = False
                        await self.store.save_progress(
                            task_id, self.owner, running.recorder.progress, running.recorder.result
                        )
                        await asyncio.sleep(
                            0
                        )  # an embedded store never suspends: let waiting requests in between saves
                if time.monotonic() - last_renewal >= self.config.runner.lease_seconds / 3:
                    last_renewal = time.monotonic()
                    held_ids = [i for i, r in self._running.items() if not r.task.done()]
                    still = await self.store.renew_leases(self.owner, held_ids, self.config.runner.lease_seconds)
                    for task_id in set(held_ids) - still:
                        lost = self._running.get(task_id)
                        if lost is not None:
                            log.info("lost task %d (job deleted or lease taken over); stopping it", task_id)
                            lost.cancelled = True
                            lost.task.cancel()
            except Exception:
                log.exception("saving progress or renewing leases failed; retrying")

    async def _run(self, claim: Claim, recorder: Recorder) -> None:
        state, error = "FAILURE", ""
        adapter = self.adapters.get(claim.cluster_id)
        started = time.monotonic()
        try:
            if adapter is None:
                error = f"cluster {claim.cluster_id} is no longer configured on this gateway; the job cannot run there"
            elif claim.deadline <= time.time():
                error = "timed out before any worker was free; raise args.timeout or runner.workers"
            elif (kind := str(claim.args.get("type", "image"))) not in adapter.supports:
                error = (
                    f"cluster {adapter.cluster.name} (id {adapter.cluster.id}): the {adapter.name} adapter does not "
                    f"preheat {kind}s; {stored_error(adapter.unsupported_hint)}"
                )
            else:
                request = self._request(claim, adapter)
                try:
                    async with asyncio.timeout(claim.deadline - time.time()):
                        await adapter.preheat(request, recorder)
                    state, error = self._success_rule(claim.cluster_id, adapter, recorder)
                except PreheatError as failure:
                    error = f"cluster {adapter.cluster.name} (id {adapter.cluster.id}): {stored_error(failure)}"
                except TimeoutError:
                    p = recorder.progress
                    error = (
                        f"cluster {adapter.cluster.name} (id {adapter.cluster.id}): timed out after "
                        f"{time.monotonic() - started:.0f}s with {p.items_done} of {p.items_total} blobs warm "
                        f"({p.bytes_transferred} of {p.bytes_total} bytes); raise args.timeout or check the backend"
                    )
        except asyncio.CancelledError:
            running = self._running.pop(claim.task_id, None)
            if running is not None and not running.cancelled and not self._stopping:
                raise
            if running is not None and running.cancelled:
                log.info(
                    "task %d of job %d stopped: the job was canceled, deleted or taken over",
                    claim.task_id,
                    claim.job_id,
                )
            return  # handed back by stop() otherwise
        except Exception as failure:  # an adapter bug must not take the runner down
            log.exception("adapter failed unexpectedly on task %d", claim.task_id)
            name = adapter.name if adapter else "?"
            error = f"internal error in the {name} adapter ({type(failure).__name__}); see the gateway log for job {claim.job_id}"
        if state == "FAILURE" and recorder.left_out:
            error += (
                f" ({recorder.left_out} more result rows were counted but not stored: runner.max_result_bytes "
                f"is {recorder.max_result_bytes} bytes per cluster task)"
            )
        self._observe_end(claim, adapter, state, time.monotonic() - started)
        try:
            job_state = await self.store.finish_task(
                claim.task_id, self.owner, state=state, error=error, progress=recorder.progress, result=recorder.result
            )
            if job_state in TERMINAL:
                self.metrics.jobs_finished.labels(str(claim.args.get("source", "")), job_state).inc()
            if job_state is None:
                log.warning("task %d finished after its lease was lost; its result was dropped", claim.task_id)
            else:
                log.info(
                    "task %d of job %d ended %s",
                    claim.task_id,
                    claim.job_id,
                    state,
                    extra={"job_id": claim.job_id, "cluster_id": claim.cluster_id},
                )
        except Exception:
            log.exception(
                "recording the end of task %d failed; its lease will expire and it will run again", claim.task_id
            )
        finally:
            self._running.pop(claim.task_id, None)

    def _success_rule(self, cluster_id: int, adapter: Adapter, recorder: Recorder) -> tuple[str, str]:
        """The state of a task whose adapter returned: a cluster with ``success: all`` fails on any failed row."""
        rule = next((c.config.success for c in self.config.clusters if c.id == cluster_id), "any")
        failed = recorder.progress.items_failed
        if rule != "all" or failed == 0:
            return "SUCCESS", ""
        rows = recorder.result.failure_tasks
        first = f"; first: {rows[0].hostname or rows[0].ip or '?'}: {rows[0].description}" if rows else ""
        return "FAILURE", (
            f"cluster {adapter.cluster.name} (id {adapter.cluster.id}): {failed} of {recorder.progress.items_done + failed} "
            f"copies failed, and this cluster succeeds only when every endpoint got every blob (success: all){first}"
        )

    def _count_bytes(self, running: _Running) -> None:
        adapter = self.adapters.get(running.claim.cluster_id)
        delta = running.recorder.progress.bytes_transferred - running.bytes_counted
        if adapter is not None and delta > 0:
            self.metrics.bytes_warmed.labels(adapter.cluster.name).inc(delta)
            running.bytes_counted += delta

    def _observe_end(self, claim: Claim, adapter: Adapter | None, state: str, seconds: float) -> None:
        running = self._running.get(claim.task_id)
        if adapter is None or running is None:
            return
        self._count_bytes(running)
        cluster = adapter.cluster.name
        self.metrics.task_duration.labels(cluster, state).observe(seconds)
        self.metrics.blobs.labels(cluster, "warmed").inc(running.recorder.progress.items_done)
        self.metrics.blobs.labels(cluster, "failed").inc(running.recorder.progress.items_failed)

    def _request(self, claim: Claim, adapter: Adapter) -> PreheatRequest:
        spec = msgspec.convert(claim.args, JobSpec)
        secrets: dict[str, Any] = self.box.open(claim.secret)
        headers = {str(k): str(v) for k, v in (secrets.get("headers") or {}).items()}
        password = str(secrets.get("password") or "")
        # Signed URLs are sealed; user-info is refused at create (a job stored before that fetches without it).
        urls = [strip_userinfo(str(url)) for url in secrets.get("urls") or spec.urls]
        credentials = Credentials(spec.username, password) if spec.username and password else None
        tls = spec.origin_tls()
        # The operator's credentials go only over the TLS the operator configured: a caller's own CA or
        # skip-verify could otherwise hand them to a man in the middle.
        if credentials is None and spec.type == "image" and tls is None:
            credentials = self.config.credentials_for(urlsplit(spec.urls[0]).netloc)
        return PreheatRequest(
            job_id=claim.job_id,
            type=spec.type,
            urls=tuple(urls),
            platform=spec.platform or adapter.cluster.platform or DEFAULT_PLATFORM,
            scope=spec.scope or DEFAULT_SCOPE,  # type: ignore[arg-type]
            headers=headers,
            credentials=credentials,
            tag=spec.tag,
            application=spec.application,
            filtered_query_params=tuple(spec.filtered_query_params),
            concurrency=spec.concurrent_count or 8,
            endpoints_at_once=spec.concurrent_peer_count or 500,
            choice=EndpointChoice(ips=tuple(spec.ips), count=spec.count, percentage=spec.percentage),
            origin_tls=tls,
            piece_length=spec.piece_length,
            timeout_seconds=max(0.0, claim.deadline - time.time()),
            extra=spec.extra,
        )
