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
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from adapters.oci import parse_manifest_url
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
        ("scope ", "scope"), ("platform ", "platform"), ("unknown cluster", "clusters"),
        ("bio ", "bio"), ("args.type", "type"), ("tag ", "tag"), ("filtered", "filtered_query_params"),
    ):
        if lowered.startswith(prefix):
            return name
    if "url" in lowered or lowered.startswith("host "):
        return "urls"
    return ""
