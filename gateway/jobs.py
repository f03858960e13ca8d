"""The job model every dialect shares, its validation, and the job service.

A dialect turns its request into a :class:`JobSpec`; the service validates it (every problem
a 422 with a message a person can act on, before any job exists), seals its secrets,
commits the job with one task per target cluster, and wakes the runner. The work runs in the
background, so creating a job takes milliseconds whatever the registry is doing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from adapters.files import filter_url
from adapters.oci import parse_manifest_url, parse_platform
from adapters.urlpolicy import RefusedURL, URLPolicy, split_http_url
from gateway.config import SCOPES, Cluster, Config
from gateway.secretbox import SecretBox
from gateway.store import JobRecord, NewJob, SqlStore

MAX_HEADERS = 32
MAX_HEADER_BYTES = 16 << 10


class InvalidRequest(Exception):
    """A request the gateway will not accept; the message says what and how to fix it (422)."""


class JobSpec(msgspec.Struct, kw_only=True):
    """A preheat as every dialect describes it."""

    type: Literal["image", "file"]
    urls: list[str]
    tag: str = ""
    application: str = ""
    filtered_query_params: list[str] = []
    platform: str = ""
    scope: str = ""
    headers: dict[str, str] = {}
    """Secret: sealed at rest, never echoed."""
    username: str = ""
    password: str = ""
    """Secret: sealed at rest, never echoed."""
    piece_length: int | None = None
    concurrent_count: int = 0
    timeout_seconds: float = 0.0
    cluster_ids: list[int] | None = None
    bio: str = ""
    source: str = "openapi"
    extra: dict[str, Any] = {}
    """Arguments the gateway does not interpret, kept for adapters that forward upstream."""

    def public_urls(self) -> list[str]:
        """The URLs without signing parameters: a signed URL is a credential for its object."""
        if self.type != "file":
            return list(self.urls)
        return [filter_url(url, self.filtered_query_params) for url in self.urls]

    def public(self) -> dict[str, Any]:
        """The spec with every secret blanked: what the store keeps in the clear and what is echoed."""
        return msgspec.to_builtins(msgspec.structs.replace(self, headers={}, password="", urls=self.public_urls()))

    def secrets(self) -> dict[str, Any]:
        """What :meth:`public` leaves out and a worker needs: sealed at rest, purged when the job ends."""
        urls = self.urls if self.public_urls() != self.urls else []
        return {"headers": self.headers, "password": self.password, "urls": urls}


def parse_filtered_query_params(text: str) -> list[str]:
    return [name for name in (part.strip() for part in text.split("&")) if name]


class JobService:
    """Creates, reads, lists and removes jobs; shared by every dialect and the console."""

    def __init__(
        self,
        config: Config,
        store: SqlStore,
        box: SecretBox,
        *,
        on_created: Callable[[JobRecord], None] = lambda _job: None,
        on_deleted: Callable[[int], None] = lambda _job_id: None,
    ) -> None:
        self.config = config
        self.store = store
        self.box = box
        self.policy: URLPolicy = config.registries.policy()
        self.clusters: Mapping[int, Cluster] = {cluster.id: cluster for cluster in config.clusters}
        self.on_created = on_created
        self.on_deleted = on_deleted

    async def validate(self, spec: JobSpec) -> None:
        """Raise :class:`InvalidRequest` for anything the gateway cannot do."""
        if spec.type == "image" and len(spec.urls) != 1:
            raise InvalidRequest("an image preheat takes exactly one url: the image's manifest URL")
        if not spec.urls:
            raise InvalidRequest("a file preheat needs url (or urls): the files' http(s) URLs")
        if len(spec.urls) > self.config.server.max_urls:
            raise InvalidRequest(f"too many urls ({len(spec.urls)}): at most {self.config.server.max_urls} per job (server.max_urls)")
        for url in spec.urls:
            if len(url) > 8192:
                raise InvalidRequest("a url is longer than 8192 characters")
            try:
                split_http_url(url)
                if spec.type == "image":
                    parse_manifest_url(url)
                await self.policy.check(url)
            except (RefusedURL, ValueError) as error:
                raise InvalidRequest(str(error)) from None
        if spec.scope and spec.scope not in SCOPES:
            raise InvalidRequest(f"scope {spec.scope!r} is not one of {', '.join(SCOPES)}")
        if spec.platform and spec.platform != "all":
            try:
                parse_platform(spec.platform)
            except ValueError as error:
                raise InvalidRequest(str(error)) from None
        if spec.cluster_ids:
            unknown = sorted({i for i in spec.cluster_ids if i not in self.clusters})
            if unknown:
                known = ", ".join(f"{c.id} ({c.name})" for c in self.clusters.values())
                raise InvalidRequest(
                    f"unknown cluster id {', '.join(map(str, unknown))}: this gateway has clusters {known}; "
                    "see GET /oapi/v1/clusters"
                )
        if spec.timeout_seconds < 0:
            raise InvalidRequest("timeout cannot be negative (it is a Go duration in nanoseconds; 0 means the default)")
        if spec.concurrent_count < 0 or spec.concurrent_count > 1000:
            raise InvalidRequest("concurrent_count must be between 0 (the default, 8) and 1000")
        if spec.piece_length is not None and spec.piece_length < 0:
            raise InvalidRequest("piece_length cannot be negative")
        if len(spec.headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in spec.headers.items()) > MAX_HEADER_BYTES:
            raise InvalidRequest(f"headers are too large: at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes")
        if len(spec.bio) > 1000:
            raise InvalidRequest("bio is longer than 1000 characters")

    async def create(self, spec: JobSpec) -> JobRecord:
        await self.validate(spec)
        now = time.time()
        timeout = spec.timeout_seconds or self.config.runner.default_timeout_seconds
        targets = sorted(set(spec.cluster_ids)) if spec.cluster_ids else sorted(self.clusters)
        job = await self.store.create_job(NewJob(
            task_id=f"group_{uuid.uuid4()}",
            type="preheat",
            source=spec.source,
            args=spec.public(),
            cluster_ids=sorted(set(spec.cluster_ids)) if spec.cluster_ids else None,
            target_cluster_ids=targets,
            bio=spec.bio,
            secret=self.box.seal(spec.secrets()),
            deadline=now + timeout,
            created_at=now,
        ))
        self.on_created(job)
        return job

    async def get(self, job_id: int) -> JobRecord | None:
        return await self.store.get_job(job_id)

    async def cancel(self, job_id: int, by: str) -> bool:
        """Stop a job's unfinished work; it stays listed as FAILURE ("canceled by ..."). False if nothing ran."""
        self.on_deleted(job_id)
        return await self.store.cancel_job(job_id, f"canceled by {by}")

    async def delete(self, job_id: int) -> bool:
        """Cancel unfinished work, then remove the job."""
        self.on_deleted(job_id)
        return await self.store.delete_job(job_id)
