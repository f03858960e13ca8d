"""How jobs and clusters look on the console's pages, with every secret kept off the page.

The store already blanks a job's headers and password; this module also hides what a URL or
an adapter's options could carry: a URL's user-info (name and password), signatures of
pre-signed URLs (:func:`gateway.redact.public_url`, the one rule for every URL the gateway
shows), and option values whose names say they are secret. An
option that names where a secret lives (``password_env``, ``token_file``) is shown, since the
name is what an operator needs to find it; its value never is.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from adapters.reference import parse_manifest_url
from gateway.config import Cluster
from gateway.redact import public_url, strip_userinfo
from gateway.store import JobRecord, TaskProgress, TaskRecord

HIDDEN = "(hidden)"
_SECRET_NAME = re.compile(r"pass|secret|token|key|credential|auth|cookie|header|signature|private", re.I)
_NAMES_A_SECRET = ("_env", "_file", "_path")


# --- times, sizes, states ------------------------------------------------------------------


def timestamp(value: float | None) -> str:
    return "" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: float | None) -> str:
    return "" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def job_duration(job: JobRecord) -> str:
    """How long it took, or how long it has been going."""
    end = job.finished_at if job.finished_at is not None else time.time()
    return duration(end - job.created_at)


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def badge(state: str) -> str:
    """The word on a state badge: Harbor's three states (a running task is still pending)."""
    return {"SUCCESS": "success", "FAILURE": "failure"}.get(state, "pending")


def job_badge(job: JobRecord) -> str:
    """A job's badge: ``running`` once a cluster has started on it (Harbor still reads PENDING)."""
    if job.state == "PENDING" and any(task.state == "RUNNING" for task in job.tasks):
        return "running"
    return badge(job.state)


def task_badge(task: TaskRecord) -> str:
    return "running" if task.state == "RUNNING" else badge(task.state)


def job_updated(job: JobRecord) -> float:
    """When anything about a job last changed: its own row or any task's progress."""
    return max([job.updated_at, *(task.updated_at for task in job.tasks)])


@dataclass(frozen=True)
class ProgressView:
    """What a progress line says, and how full its bar is (``None``: no bar)."""

    text: str
    bytes_text: str
    fraction: float | None
    failed: bool
    bytes_moved: int = 0
    bytes_total: int = 0


def progress_view(kind: str, tasks: Sequence[TaskRecord], state: str) -> ProgressView:
    """How far a job (or one cluster's task) got, in its own units (blobs or files), told truthfully.

    The bar follows bytes when the total is known, else items; a failed job shows no bar but
    what failed; bytes a successful task did not fetch were already warm (on disk, or warmed
    by another job moments before) and are said to be.
    """
    unit = "files" if kind == "file" else "blobs"
    p = total_progress(tasks)
    finished_items = p.items_done + p.items_failed
    if p.bytes_total:
        moved = min(p.bytes_transferred, p.bytes_total)
        if state == "SUCCESS" and moved < p.bytes_total:
            warm = size(p.bytes_total - moved)
            bytes_text = f"already warm ({warm})" if moved == 0 else f"{size(moved)} fetched, {warm} already warm"
        else:
            bytes_text = f"{size(moved)} of {size(p.bytes_total)}"
    else:
        bytes_text = f"{size(p.bytes_transferred)} fetched" if p.bytes_transferred else ""
    if state == "FAILURE":
        parts = []
        failed_tasks = sum(1 for task in tasks if task.state == "FAILURE")
        if len(tasks) > 1:
            parts.append(f"{failed_tasks} of {len(tasks)} clusters failed")
        if p.items_failed:
            parts.append(f"{p.items_failed} of {p.items_total} {unit} failed")
        parts.append(f"{p.items_done} {unit} warmed" if p.items_done else f"no {unit[:-1]} warmed")
        return ProgressView("Failed: " + "; ".join(parts), bytes_text, None, True, p.bytes_transferred, p.bytes_total)
    text = f"{p.items_done} of {p.items_total} {unit} done" + (f", {p.items_failed} failed" if p.items_failed else "")
    if state == "SUCCESS":
        fraction: float | None = 1.0
    elif p.bytes_total:
        fraction = min(1.0, p.bytes_transferred / p.bytes_total)
    elif p.items_total:
        fraction = min(1.0, finished_items / p.items_total)
    else:
        fraction = None
    return ProgressView(text, bytes_text, fraction, False, p.bytes_transferred, p.bytes_total)


def kind_of(job: JobRecord) -> str:
    return "file" if job.args.get("type", "image") == "file" else "image"


def total_progress(tasks: Iterable[TaskRecord]) -> TaskProgress:
    total = TaskProgress()
    for task in tasks:
        p = task.progress
        total.items_total += p.items_total
        total.items_done += p.items_done
        total.items_failed += p.items_failed
        total.bytes_total += p.bytes_total
        total.bytes_transferred += p.bytes_transferred
    return total


def started_at(job: JobRecord) -> float | None:
    times = [t.started_at for t in job.tasks if t.started_at is not None]
    return min(times) if times else None


# --- what a job is about --------------------------------------------------------------------


def display_url(url: str, filtered: Iterable[str] = ()) -> str:
    """A URL as the console shows it: :func:`gateway.redact.public_url` (no user-info, no signing parameters)."""
    return public_url(str(url), filtered)


def job_urls(job: JobRecord) -> list[str]:
    filtered = job.args.get("filtered_query_params") or []
    return [display_url(str(u), filtered) for u in job.args.get("urls") or []]


def subject(job: JobRecord) -> str:
    """One line naming what is preheated: ``host/repo:tag`` for an image, the URL for a file."""
    urls = job_urls(job)
    if not urls:
        return ""
    if job.args.get("type", "image") == "image":
        try:
            ref = parse_manifest_url(strip_userinfo(str(job.args["urls"][0])))
            return f"{ref.host}{ref.prefix}/{ref.name}"
        except (ValueError, KeyError, IndexError):
            return urls[0]
    return urls[0] if len(urls) == 1 else f"{urls[0]} (+{len(urls) - 1} more)"


def cluster_name(clusters: Mapping[int, Cluster], cluster_id: int) -> str:
    cluster = clusters.get(cluster_id)
    return cluster.name if cluster else f"cluster {cluster_id} (no longer configured)"


# --- clusters ---------------------------------------------------------------------------------


def option_rows(options: Any) -> list[tuple[str, str]]:
    """An adapter's options as ``(path, shown value)`` rows, secrets hidden."""
    return list(_flatten(msgspec.to_builtins(options) if options is not None else {}, ""))


def _flatten(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if _SECRET_NAME.search(str(key)) and not str(key).lower().endswith(_NAMES_A_SECRET):
                if item not in (None, "", [], {}):
                    yield child, HIDDEN
                continue
            yield from _flatten(item, child)
    elif isinstance(value, list):
        if not value:
            yield path, "(none)"
        for index, item in enumerate(value):
            yield from _flatten(item, f"{path}[{index}]")
    elif value is None:
        return
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        yield path, display_url(text) if "://" in text else text


# --- validation errors next to their field ------------------------------------------------------


def field_of(message: str) -> str:
    """Which create-form field an API validation message is about (``""``: the form as a whole)."""
    lowered = message.lower()
    for prefix, name in (
        ("scope ", "scope"),
        ("platform ", "platform"),
        ("unknown cluster", "clusters"),
        ("bio ", "bio"),
        ("args.type", "type"),
        ("tag ", "tag"),
        ("filtered", "filtered_query_params"),
    ):
        if lowered.startswith(prefix):
            return name
    if "url" in lowered or lowered.startswith("host "):
        return "urls"
    return ""
