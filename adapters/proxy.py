"""``proxy``: HTTP forward proxies that cache what passes through them (Dragonfly's dfdaemon on
every node, a Squid or Varnish in front of a registry).

A blob or file is warmed the way a node would fetch it: its ORIGIN URL is requested through
the proxy (``GET http://origin/...`` in absolute form) and read to the end. Blobs are
digest-checked, so a proxy serving corrupt bytes fails the row. For an image, the manifests
are resolved through the proxy as well, with the caller's token (or ``registries.credentials``),
so the proxy caches them too; redirects (to object storage) are followed through the proxy
after the URL policy allowed them, without the caller's credentials.

Scopes, as for mirrors: ``single_seed_peer`` (default) warms each item on one proxy, moving
to the next when one fails; ``all_seed_peers`` and ``all_peers`` warm every proxy. The task
succeeds when every item reached at least one proxy; per-proxy failures are listed.

Each proxy gets its own pooled HTTP client, closed by :meth:`ProxyAdapter.aclose`. https
origins go through a proxy as a CONNECT tunnel, which a caching proxy can only cache if it
intercepts TLS (dfdaemon does with its ``hijackHTTPS`` setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import msgspec

from adapters.base import (
    Adapter,
    AdapterContext,
    ClusterInfo,
    Health,
    PreheatError,
    PreheatRequest,
    Progress,
    TaskRow,
)
from adapters.files import FetchError, FileRef, file_ref, stream_url
from adapters.guard import ConnectGuard
from adapters.oci import Blob, DiscardSink, ImageRef, OciClient, RegistryAuth, parse_manifest_url
from adapters.transport import new_client
from adapters.upstream import check_base_url, check_login, host_ip, parse_seconds

PROBE_TIMEOUT_SECONDS = 5.0


class ProxyEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    """The proxy, e.g. ``http://node-1:65001``."""
    username: str | None = None
    password_env: str | None = None
    """Environment variable holding the proxy's password (never inline)."""

    def __post_init__(self) -> None:
        self.url = check_base_url(self.url, key="url")
        check_login(self.username, self.password_env)


class ProxyOptions(msgspec.Struct, forbid_unknown_fields=True):
    proxies: list[ProxyEndpoint | str]
    """Each ``http://host:port``, or ``{url, username, password_env}``."""
    concurrency: int = 8
    """Items in flight per proxy."""
    timeout: float | str = "60s"
    """Longest wait for the next bytes from a proxy (a proxy fetching a cold blob is slow to start)."""

    def __post_init__(self) -> None:
        if not self.proxies:
            raise ValueError("proxies: list at least one proxy (http://host:port)")
        for index, entry in enumerate(self.proxies):
            if isinstance(entry, str):
                try:
                    self.proxies[index] = ProxyEndpoint(url=entry)
                except ValueError as error:
                    raise ValueError(f"proxies[{index}].{error}") from None
        if self.concurrency < 1:
            raise ValueError("concurrency: must be at least 1")
        self.timeout = parse_seconds(self.timeout, key="timeout")

    @property
    def endpoints(self) -> list[ProxyEndpoint]:
        return [entry for entry in self.proxies if isinstance(entry, ProxyEndpoint)]


@dataclass
class _Proxy:
    """One proxy, as the adapter uses it."""

    config: ProxyEndpoint
    name: str
    """For rows and messages: the host, or host:port when several proxies share a host."""
    client: httpx.AsyncClient
    oci: OciClient
    semaphore: asyncio.Semaphore
    ip: str = ""


@dataclass
class _Item:
    """One blob or file to warm: its row URL, its identity, and how to fetch it through a proxy."""

    url: str
    identity: str
    fetch: Callable[[_Proxy], Awaitable[int]]
    size: int = 0
    """Known for blobs; 0 for files (their size shows only once fetched)."""
    authority: str = ""
    """Who the item is fetched as (:meth:`adapters.base.Deduper.authority` of the caller's credentials)."""
    reached: bool = False
    last_error: str = ""


@dataclass
class _Plan:
    """What one cluster task warms, and in which order it tries the proxies."""

    items: list[_Item]
    order: list[_Proxy]
    what: str
    """``blobs`` or ``files``, for messages."""
    prepare: Callable[[_Proxy], Awaitable[None]] | None = None
    """For ``all_*`` scopes: warm what an item needs first (an image's manifests) on one proxy."""
    errors: dict[str, str] = field(default_factory=dict)
    """Proxies that already failed to prepare, by URL, with why."""


class ProxyAdapter(Adapter):
    name = "proxy"
    Options = ProxyOptions
    supports = frozenset({"image", "file"})

    def __init__(self, cluster: ClusterInfo, options: ProxyOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        endpoints = options.endpoints
        hosts = Counter(urlsplit(e.url).hostname for e in endpoints)
        self.proxies: list[_Proxy] = []
        for endpoint in endpoints:
            parts = urlsplit(endpoint.url)
            auth = (endpoint.username, os.environ.get(endpoint.password_env, "")) if endpoint.username else None
            client = new_client(
                proxy=httpx.Proxy(endpoint.url, auth=auth),
                timeout=httpx.Timeout(float(options.timeout), connect=10.0),
                limits=httpx.Limits(
                    max_connections=options.concurrency * 2, max_keepalive_connections=options.concurrency
                ),
                headers={"User-Agent": context.user_agent},
                guard=ConnectGuard(context.policy, configured=[endpoint.url]),
            )
            self.proxies.append(
                _Proxy(
                    config=endpoint,
                    name=(parts.hostname or endpoint.url) if hosts[parts.hostname] == 1 else parts.netloc,
                    client=client,
                    oci=OciClient(
                        client,
                        context.policy,
                        user_agent=context.user_agent,
                        fingerprints=context.oci.fingerprints,
                        limits=context.oci.limits,
                    ),
                    semaphore=asyncio.Semaphore(options.concurrency),
                )
            )

    async def aclose(self) -> None:
        await asyncio.gather(*(proxy.client.aclose() for proxy in self.proxies), return_exceptions=True)

    # --- health ----------------------------------------------------------------------------

    async def check(self) -> Health:
        """A forward proxy has no health endpoint: reachable means it accepts connections."""
        started = time.monotonic()
        errors = [error for error in await asyncio.gather(*(self._probe(p) for p in self.proxies)) if error]
        latency = (time.monotonic() - started) * 1000
        return Health(reachable=len(errors) < len(self.proxies), latency_ms=latency, error="; ".join(errors))

    async def _probe(self, proxy: _Proxy) -> str:
        parts = urlsplit(proxy.config.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), PROBE_TIMEOUT_SECONDS)
        except TimeoutError:
            return f"proxy {proxy.name}: no connection within {PROBE_TIMEOUT_SECONDS:.0f}s"
        except OSError as error:
            return f"proxy {proxy.name}: {error.strerror or error}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return ""

    # --- preheat ---------------------------------------------------------------------------

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        for proxy in self.proxies:
            if not proxy.ip:
                proxy.ip = await host_ip(proxy.config.url)
        plan = (
            self._file_plan(request, progress) if request.type == "file" else await self._image_plan(request, progress)
        )
        progress.planned(len(plan.items), sum(item.size for item in plan.items))
        if request.scope == "single_seed_peer":
            await asyncio.gather(*(self._warm_on_first(plan.order, item, progress) for item in plan.items))
        else:
            await asyncio.gather(*(self._warm_all_on(proxy, plan, progress) for proxy in self.proxies))
        missing = [item for item in plan.items if not item.reached]
        if missing:
            raise PreheatError(
                f"{len(missing)} of {len(plan.items)} {plan.what} reached no proxy of cluster {self.cluster.name}: "
                f"{missing[0].last_error}"
            )

    def _file_plan(self, request: PreheatRequest, progress: Progress) -> _Plan:
        items = []
        authority = self.context.dedupe.authority_of_headers(request.headers)
        for url in request.urls:
            ref = file_ref(url, request.filtered_query_params, request.tag, request.application)

            async def fetch(proxy: _Proxy, ref: FileRef = ref) -> int:
                size, _ = await stream_url(
                    proxy.client,
                    self.context.policy,
                    ref,
                    DiscardSink,
                    headers=request.headers,
                    on_bytes=progress.transferred,
                    via=f"proxy {proxy.name}",
                )
                return size

            items.append(_Item(url=ref.display_url, identity=ref.identity, fetch=fetch, authority=authority))
        return _Plan(items=items, order=self.proxies, what="files")

    async def _image_plan(self, request: PreheatRequest, progress: Progress) -> _Plan:
        try:
            origin = parse_manifest_url(request.urls[0])
        except ValueError as error:
            raise PreheatError(str(error)) from None
        auths = {
            proxy.config.url: RegistryAuth(header=request.headers.get("Authorization"), credentials=request.credentials)
            for proxy in self.proxies
        }
        blobs, resolver, errors = await self._resolve(origin, auths, request.platform)
        order = [resolver] + [p for p in self.proxies if p is not resolver and p.config.url not in errors]
        authority = self.context.dedupe.authority_of(request.headers.get("Authorization"), request.credentials)

        def item(blob: Blob) -> _Item:
            async def fetch(proxy: _Proxy) -> int:
                return await proxy.oci.fetch_blob(
                    origin, blob, auths[proxy.config.url], DiscardSink, on_bytes=progress.transferred
                )

            url = origin.blob_url(blob.digest)
            return _Item(url=url, identity=url, fetch=fetch, size=blob.size, authority=authority)

        async def manifests(proxy: _Proxy) -> None:
            await proxy.oci.resolve_blobs(origin, auths[proxy.config.url], request.platform)

        return _Plan(items=[item(blob) for blob in blobs], order=order, what="blobs", prepare=manifests, errors=errors)

    async def _resolve(
        self, origin: ImageRef, auths: dict[str, RegistryAuth], platform: str
    ) -> tuple[list[Blob], _Proxy, dict[str, str]]:
        """Resolve the manifest through the first proxy that answers; keep the others' errors."""
        errors: dict[str, str] = {}
        for proxy in self.proxies:
            try:
                _, blobs = await proxy.oci.resolve_blobs(origin, auths[proxy.config.url], platform)
            except PreheatError as error:
                errors[proxy.config.url] = self._explain(proxy, error)
                if getattr(error, "status", None) == 404 or "no matching manifest" in str(error):
                    break  # the image itself is missing: every proxy would say the same
                continue
            return blobs, proxy, errors
        raise PreheatError(
            f"no proxy of cluster {self.cluster.name} could resolve {origin.name}: " + "; ".join(errors.values())
        )

    async def _warm_on_first(self, order: list[_Proxy], item: _Item, progress: Progress) -> None:
        """``single_seed_peer``: one proxy per item, the next one when it fails."""
        for proxy in order:
            if await self._warm(proxy, item, progress):
                return

    async def _warm_all_on(self, proxy: _Proxy, plan: _Plan, progress: Progress) -> None:
        """``all_*`` scopes: (for an image, the manifests first, then) every item through this proxy."""
        error = plan.errors.get(proxy.config.url)
        if error is None and plan.prepare is not None:
            try:
                await plan.prepare(proxy)
            except PreheatError as failure:
                error = self._explain(proxy, failure)
        if error is not None:
            for item in plan.items:
                self._fail(proxy, item, error, progress)
            return
        await asyncio.gather(*(self._warm(proxy, item, progress) for item in plan.items))

    async def _warm(self, proxy: _Proxy, item: _Item, progress: Progress) -> bool:
        async def fetch() -> int:
            async with proxy.semaphore:  # only real fetches take a slot, not joiners
                return await item.fetch(proxy)

        try:  # the identity names the source (the origin URL); the authority, the caller's credentials
            await self.context.dedupe.run(("proxy", proxy.config.url, item.identity), fetch, authority=item.authority)
        except PreheatError as error:
            self._fail(proxy, item, self._explain(proxy, error), progress)
            return False
        item.reached = True
        progress.succeeded(TaskRow(url=item.url, hostname=proxy.name, ip=proxy.ip))
        return True

    def _explain(self, proxy: _Proxy, error: PreheatError) -> str:
        """Name the proxy in an error; a 407 is the proxy's own refusal, not the origin's."""
        if getattr(error, "status", None) == 407:
            index = self.proxies.index(proxy)
            return (
                f"proxy {proxy.name} refused the gateway (407 Proxy Authentication Required): check username and "
                f"password_env of {self.cluster.config_path}.proxies[{index}]"
            )
        if isinstance(error, FetchError):  # a file's error names the proxy already
            return str(error)
        return f"through proxy {proxy.name}: {error}"

    def _fail(self, proxy: _Proxy, item: _Item, message: str, progress: Progress) -> None:
        item.last_error = message
        progress.failed(TaskRow(url=item.url, hostname=proxy.name, ip=proxy.ip, description=message))
