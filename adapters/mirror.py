"""``mirror``: pull-through registry caches (distribution in proxy mode, Harbor proxy-cache
projects, Zot, Spegel, dfdaemon's registry mirror).

A cache is warmed the way a node would warm it: by pulling through it. The gateway reads
``GET {url}/v2/{path_prefix}{repository}/manifests/{reference}`` and then every blob to the
end (checked by sha256 or fingerprint, or length-checked with ``verify: size``), appending ``?ns={origin host}``
for caches that use containerd's convention. The cache fetches from the origin with its own
credentials and keeps a copy.

Scopes (:mod:`adapters.fanout`): ``single_seed_peer`` (default) warms each blob on one endpoint,
moving to the next endpoint when one fails; ``all_seed_peers`` and ``all_peers`` warm every
chosen endpoint. The task succeeds when every blob reached at least one endpoint; per-endpoint
failures are listed.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec

from adapters.base import (
    Adapter,
    AdapterContext,
    ClusterInfo,
    Credentials,
    Health,
    PreheatError,
    PreheatRequest,
    Progress,
)
from adapters.bounded import UPSTREAM_PROBE_BYTES, BodyError, send_capped
from adapters.describe import describe
from adapters.fanout import Route, fan_out
from adapters.manifest import Blob
from adapters.oci import RegistryAuth
from adapters.options import check_base_url, check_login
from adapters.reference import ImageRef, parse_manifest_url
from adapters.streaming import DiscardSink, Verify
from adapters.throttle import Throttle

PROBE_TIMEOUT_SECONDS = 5.0


class MirrorEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    """Base URL of the cache, e.g. ``http://mirror-a.eu:5000``."""
    path_prefix: str = ""
    """Prepended to the repository, e.g. ``dockerhub-proxy/`` for a Harbor proxy-cache project."""
    ns: bool = False
    """Append ``?ns=<origin host>`` (containerd's mirror convention)."""
    username: str | None = None
    password_env: str | None = None
    """Environment variable holding the cache's password (never inline)."""

    def __post_init__(self) -> None:
        self.url = check_base_url(self.url, key="url")
        if self.path_prefix and not self.path_prefix.endswith("/"):
            self.path_prefix += "/"
        self.path_prefix = self.path_prefix.lstrip("/")
        check_login(self.username, self.password_env)


class MirrorOptions(msgspec.Struct, forbid_unknown_fields=True):
    endpoints: list[MirrorEndpoint]
    concurrency: int = 8
    """Blobs in flight per endpoint (Dragonfly's concurrent_task_count)."""
    bandwidth_mib_per_second: float | None = None
    """Cap on what this cluster reads, all endpoints together (for WAN links); none: unlimited."""
    verify: Verify = "digest"
    """How the gateway checks each blob a cache serves: ``digest`` (the sha256 of one copy of each
    blob, and every other copy compared with that one by a fast fingerprint) or ``size`` (its
    length only). ``size`` spares the gateway even the sha256, for caches that check digests
    themselves when they store a blob (distribution, Harbor's proxy cache, Zot); a cache that
    stored corrupt bytes of the right length then goes unnoticed."""

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("endpoints is empty: list at least one cache")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.bandwidth_mib_per_second is not None and self.bandwidth_mib_per_second <= 0:
            raise ValueError("bandwidth_mib_per_second must be positive (leave it out for no cap)")


@dataclass(eq=False)
class _Endpoint:
    """One cache, as the adapter uses it."""

    config: MirrorEndpoint
    hostname: str
    semaphore: asyncio.Semaphore
    credentials: Credentials | None
    ip: str = ""
    authority: str = ""
    """Who the gateway reads this cache as (a keyed hash of its credentials), for de-duplication."""

    @property
    def url(self) -> str:
        return self.config.url

    def image(self, origin: ImageRef) -> ImageRef:
        parts = urlsplit(self.config.url)
        return ImageRef(
            parts.scheme, parts.netloc, self.config.path_prefix + origin.repository, origin.reference, parts.path
        )

    def query(self, origin: ImageRef) -> str:
        """containerd's ``?ns=<origin host[:port]>``: the host alone (never user-info), URL-encoded."""
        return "?" + urlencode({"ns": origin.host.rpartition("@")[2]}) if self.config.ns else ""

    def auth(self) -> RegistryAuth:
        return RegistryAuth(credentials=self.credentials)


class MirrorAdapter(Adapter):
    name = "mirror"
    Options = MirrorOptions
    understands = frozenset({"ips", "count", "percentage"})
    unsupported_hint = "files cannot go through a registry mirror: use a proxy or local cluster for files, naming it in scheduler_cluster_ids"

    def __init__(self, cluster: ClusterInfo, options: MirrorOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        self.endpoints = [
            _Endpoint(
                config=endpoint,
                hostname=urlsplit(endpoint.url).hostname or endpoint.url,
                semaphore=asyncio.Semaphore(options.concurrency),
                credentials=Credentials(endpoint.username, os.environ.get(endpoint.password_env or "", ""))
                if endpoint.username
                else None,
            )
            for endpoint in options.endpoints
        ]
        for endpoint in self.endpoints:
            endpoint.authority = context.dedupe.authority_of(credentials=endpoint.credentials)
        self.throttle = (
            Throttle(options.bandwidth_mib_per_second * 1048576) if options.bandwidth_mib_per_second else None
        )

    async def check(self) -> Health:
        started = time.monotonic()
        results = await asyncio.gather(*(self._probe(endpoint) for endpoint in self.endpoints))
        errors = [error for error in results if error]
        latency = (time.monotonic() - started) * 1000
        if len(errors) == len(self.endpoints):
            return Health(reachable=False, latency_ms=latency, error="; ".join(errors))
        return Health(reachable=True, latency_ms=latency, error="; ".join(errors))

    async def _probe(self, endpoint: _Endpoint) -> str:
        try:
            response, _ = await send_capped(
                self.context.http,
                "GET",
                f"{endpoint.config.url}/v2/",
                limit=UPSTREAM_PROBE_BYTES,
                timeout=PROBE_TIMEOUT_SECONDS,
            )
        except httpx.TransportError as error:
            return f"{endpoint.hostname}: {describe(error)}"
        except BodyError as error:
            return f"{endpoint.hostname}: /v2/ answered with {error}"
        if response.status_code not in (200, 401):
            return f"{endpoint.hostname}: /v2/ answered {response.status_code}"
        return ""

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        try:
            origin = parse_manifest_url(request.urls[0])
        except ValueError as error:
            raise PreheatError(str(error)) from None
        await fan_out(_Route(self, origin, request.platform, progress), self.endpoints, request)


class _Route(Route[_Endpoint, Blob]):
    """One cluster task through the caches: an image's blobs, pulled through each cache."""

    noun = "cache"

    def __init__(self, adapter: MirrorAdapter, origin: ImageRef, platform: str, progress: Progress) -> None:
        super().__init__(
            cluster=adapter.cluster.name,
            dedupe=adapter.context.dedupe,
            progress=progress,
            what=f"blobs of {origin.name}",
            image=origin.name,
            manifest_url=origin.manifest_url(),
        )
        self.adapter, self.oci, self.origin, self.platform = adapter, adapter.context.oci, origin, platform

    def names(self, endpoint: _Endpoint) -> tuple[str, ...]:
        return endpoint.hostname, endpoint.ip

    async def resolve(self, endpoint: _Endpoint) -> list[Blob]:
        _, blobs = await self.oci.resolve_blobs(
            endpoint.image(self.origin), endpoint.auth(), self.platform, query=endpoint.query(self.origin)
        )
        return blobs

    def url(self, item: Blob) -> str:
        return self.origin.blob_url(item.digest)

    def size(self, item: Blob) -> int:
        return item.size

    def key(self, endpoint: _Endpoint, item: Blob) -> tuple[str, ...]:
        # One fetch per cache, repository, origin and check: a checked warm never joins one that
        # only counted bytes.
        image = endpoint.image(self.origin)
        query = endpoint.query(self.origin)
        return (
            "mirror",
            image.base,
            image.repository,
            query,
            self.origin.base,
            item.digest,
            self.adapter.options.verify,
        )

    def authority(self, endpoint: _Endpoint, item: Blob) -> str:
        return endpoint.authority  # the cache's own account, the same for every job

    async def fetch(self, endpoint: _Endpoint, item: Blob) -> int:
        return await self.oci.fetch_blob(
            endpoint.image(self.origin),
            item,
            endpoint.auth(),
            DiscardSink,
            query=endpoint.query(self.origin),
            on_bytes=self.progress.transferred,
            throttle=self.adapter.throttle,
            verify=self.adapter.options.verify,
            source=self.origin.base,
        )
