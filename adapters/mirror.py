"""``mirror``: pull-through registry caches (distribution in proxy mode, Harbor proxy-cache
projects, Zot, Spegel, dfdaemon's registry mirror).

A cache is warmed the way a node would warm it: by pulling through it. The gateway reads
``GET {url}/v2/{path_prefix}{repository}/manifests/{reference}`` and then every blob to the
end (digest-checked, or length-checked with ``verify: size``), appending ``?ns={origin host}``
for caches that use containerd's convention. The cache fetches from the origin with its own
credentials and keeps a copy.

Scopes: ``single_seed_peer`` (default) warms each blob on one endpoint, moving to the next
endpoint when one fails; ``all_seed_peers`` and ``all_peers`` warm every endpoint. The task
succeeds when every blob reached at least one endpoint; per-endpoint failures are listed.
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
    TaskRow,
    Throttle,
)
from adapters.bounded import BodyError, send_capped
from adapters.oci import (
    Blob,
    DiscardSink,
    ImageRef,
    RegistryAuth,
    Verify,
    _describe,
    parse_manifest_url,
)
from adapters.upstream import UPSTREAM_PROBE_BYTES, check_base_url, check_login, host_ip

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


@dataclass
class _Endpoint:
    """One cache, as the adapter uses it."""

    config: MirrorEndpoint
    hostname: str
    semaphore: asyncio.Semaphore
    credentials: Credentials | None
    ip: str = ""
    authority: str = ""
    """Who the gateway reads this cache as (a keyed hash of its credentials), for de-duplication."""

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
    unsupported_hint = "files cannot go through a registry mirror: use a proxy or local cluster for files, naming it in scheduler_cluster_ids"

    def __init__(self, cluster: ClusterInfo, options: MirrorOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        self.endpoints = [
            _Endpoint(
                config=endpoint,
                hostname=urlsplit(endpoint.url).hostname or endpoint.url,
                semaphore=asyncio.Semaphore(options.concurrency),
                credentials=Credentials(endpoint.username, os.environ.get(endpoint.password_env, ""))
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
            return f"{endpoint.hostname}: {_describe(error)}"
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
        await self._resolve_ips()
        run = _Run(self, origin, request.platform, progress)
        blobs, resolver, manifest_errors = await run.resolve()
        copies = 1 if request.scope == "single_seed_peer" else len(self.endpoints)
        progress.planned(len(blobs) * copies, sum(blob.size for blob in blobs) * copies)
        if request.scope == "single_seed_peer":
            order = [resolver] + [e for e in self.endpoints if e is not resolver and e.hostname not in manifest_errors]
            await asyncio.gather(*(run.warm_on_first(order, blob) for blob in blobs))
        else:
            await asyncio.gather(
                *(
                    run.warm_all_on(
                        endpoint, blobs, manifest_errors.get(endpoint.config.url), resolved=endpoint is resolver
                    )
                    for endpoint in self.endpoints
                )
            )
        missing = [blob for blob in blobs if blob.digest not in run.reached]
        if missing:
            raise PreheatError(
                f"{len(missing)} of {len(blobs)} blobs of {origin.name} reached no cache of cluster "
                f"{self.cluster.name}: {run.last_error.get(missing[0].digest, 'see the failure rows')}"
            )

    async def _resolve_ips(self) -> None:
        for endpoint in self.endpoints:
            if not endpoint.ip:
                endpoint.ip = await host_ip(endpoint.config.url)


class _Run:
    """The state of one cluster task: which blobs reached a cache, and the last error of each."""

    def __init__(self, adapter: MirrorAdapter, origin: ImageRef, platform: str, progress: Progress) -> None:
        self.adapter = adapter
        self.oci = adapter.context.oci
        self.dedupe = adapter.context.dedupe
        self.origin = origin
        self.platform = platform
        self.progress = progress
        self.reached: set[str] = set()
        self.last_error: dict[str, str] = {}

    async def resolve(self) -> tuple[list[Blob], _Endpoint, dict[str, str]]:
        """Resolve the manifest through the first cache that answers; keep the others' errors."""
        errors: dict[str, str] = {}
        for endpoint in self.adapter.endpoints:
            try:
                blobs = await self._manifests_through(endpoint)
            except PreheatError as error:
                errors[endpoint.config.url] = str(error)
                if getattr(error, "status", None) == 404 or "no matching manifest" in str(error):
                    break  # the image itself is missing: every cache would say the same
                continue
            return blobs, endpoint, errors
        raise PreheatError(
            f"no cache of cluster {self.adapter.cluster.name} could resolve {self.origin.name}: "
            + "; ".join(errors.values())
        )

    async def _manifests_through(self, endpoint: _Endpoint) -> list[Blob]:
        _, blobs = await self.oci.resolve_blobs(
            endpoint.image(self.origin), endpoint.auth(), self.platform, query=endpoint.query(self.origin)
        )
        return blobs

    async def warm_all_on(
        self, endpoint: _Endpoint, blobs: list[Blob], manifest_error: str | None, *, resolved: bool
    ) -> None:
        """``all_*`` scopes: the manifests and every blob through this endpoint.

        Blobs are fetched by digest, so they need not wait for the manifests: both go at once.
        An endpoint that already failed to serve the manifests is not tried again.
        """
        if manifest_error is not None:
            for blob in blobs:
                self._fail(endpoint, blob, manifest_error)
            return

        async def manifests() -> None:
            try:
                await self._manifests_through(endpoint)
            except PreheatError as error:  # the blobs may still land: report the manifest on its own row
                self.progress.failed(
                    TaskRow(
                        url=self.origin.manifest_url(),
                        hostname=endpoint.hostname,
                        ip=endpoint.ip,
                        description=str(error),
                    )
                )

        await asyncio.gather(*([] if resolved else [manifests()]), *(self.warm(endpoint, blob) for blob in blobs))

    async def warm_on_first(self, order: list[_Endpoint], blob: Blob) -> None:
        """``single_seed_peer``: one endpoint per blob, the next one when it fails."""
        for endpoint in order:
            if await self.warm(endpoint, blob):
                return

    async def warm(self, endpoint: _Endpoint, blob: Blob) -> bool:
        image = endpoint.image(self.origin)
        query = endpoint.query(self.origin)
        verify = self.adapter.options.verify

        async def fetch() -> int:
            async with endpoint.semaphore:  # only real fetches take a slot, not joiners
                return await self.oci.fetch_blob(
                    image,
                    blob,
                    endpoint.auth(),
                    DiscardSink,
                    query=query,
                    on_bytes=self.progress.transferred,
                    throttle=self.adapter.throttle,
                    verify=verify,
                    source=self.origin.base,
                )

        # One fetch per cache, repository, origin and check: a digest-checked warm never joins one that
        # only counted bytes; the authority is the cache's own account, the same for every job.
        key = ("mirror", image.base, image.repository, query, self.origin.base, blob.digest, verify)
        try:
            await self.dedupe.run(key, fetch, authority=endpoint.authority)
        except PreheatError as error:
            self._fail(endpoint, blob, str(error))
            return False
        self.reached.add(blob.digest)
        self.progress.succeeded(
            TaskRow(url=self.origin.blob_url(blob.digest), hostname=endpoint.hostname, ip=endpoint.ip)
        )
        return True

    def _fail(self, endpoint: _Endpoint, blob: Blob, message: str) -> None:
        self.last_error[blob.digest] = message
        self.progress.failed(
            TaskRow(
                url=self.origin.blob_url(blob.digest), hostname=endpoint.hostname, ip=endpoint.ip, description=message
            )
        )
