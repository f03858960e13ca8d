"""``proxy``: HTTP forward proxies that cache what passes through them (Dragonfly's dfdaemon on
every node, a Squid or Varnish in front of a registry).

A blob or file is warmed the way a node would fetch it: its ORIGIN URL is requested through
the proxy (``GET http://origin/...`` in absolute form) and read to the end. Blobs are
checked (sha256, or a fingerprint against a sha256-checked copy), so a proxy serving corrupt bytes fails the row. For an image, the manifests
are resolved through the proxy as well, with the caller's token (or ``registries.credentials``),
so the proxy caches them too; redirects (to object storage) are followed through the proxy
after the URL policy allowed them, without the caller's credentials.

Scopes, as for mirrors (:mod:`adapters.fanout`): ``single_seed_peer`` (default) warms each item
on one proxy, moving to the next when one fails; ``all_seed_peers`` and ``all_peers`` warm every
chosen proxy. The task succeeds when every item reached at least one proxy; per-proxy failures
are listed.

Each proxy gets its own pooled HTTP client, closed by :meth:`ProxyAdapter.aclose`. https
origins go through a proxy as a CONNECT tunnel, which a caching proxy can only cache if it
intercepts TLS (dfdaemon does with its ``hijackHTTPS`` setting).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar
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
)
from adapters.fanout import Route, fan_out
from adapters.files import FileRef, file_ref, stream_url
from adapters.guard import ConnectGuard
from adapters.manifest import Blob
from adapters.oci import OciClient, RegistryAuth
from adapters.options import check_base_url, check_login, parse_seconds
from adapters.origintls import job_context
from adapters.reference import ImageRef, parse_manifest_url
from adapters.retry import FetchError, TransferError
from adapters.streaming import DiscardSink
from adapters.transport import new_client

PROBE_TIMEOUT_SECONDS = 5.0
ItemT = TypeVar("ItemT")


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


@dataclass(eq=False)
class _Proxy:
    """One proxy, as the adapter uses it."""

    config: ProxyEndpoint
    hostname: str
    """For rows and messages: the host, or host:port when several proxies share a host."""
    client: httpx.AsyncClient
    oci: OciClient
    semaphore: asyncio.Semaphore
    ip: str = ""

    @property
    def url(self) -> str:
        return self.config.url


class ProxyAdapter(Adapter):
    name = "proxy"
    Options = ProxyOptions
    supports = frozenset({"image", "file"})
    understands = frozenset({"ips", "count", "percentage", "certificate_chain", "insecure_skip_verify"})

    def __init__(self, cluster: ClusterInfo, options: ProxyOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        endpoints = options.endpoints
        hosts = Counter(urlsplit(e.url).hostname for e in endpoints)
        self.proxies: list[_Proxy] = []
        for endpoint in endpoints:
            parts = urlsplit(endpoint.url)
            auth = (endpoint.username, os.environ.get(endpoint.password_env or "", "")) if endpoint.username else None
            client = new_client(
                proxy=httpx.Proxy(endpoint.url, auth=auth),
                timeout=httpx.Timeout(float(options.timeout), connect=10.0),
                limits=httpx.Limits(
                    max_connections=options.concurrency * 2, max_keepalive_connections=options.concurrency
                ),
                headers={"User-Agent": context.user_agent},
                guard=ConnectGuard(context.policy, configured=[endpoint.url]),
                tls_by_host=context.tls_by_host,  # registries.tls, through the tunnel to the origin
            )
            self.proxies.append(
                _Proxy(
                    config=endpoint,
                    hostname=(parts.hostname or endpoint.url) if hosts[parts.hostname] == 1 else parts.netloc,
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
            return f"proxy {proxy.hostname}: no connection within {PROBE_TIMEOUT_SECONDS:.0f}s"
        except OSError as error:
            return f"proxy {proxy.hostname}: {error.strerror or error}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return ""

    # --- preheat ---------------------------------------------------------------------------

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        if request.type == "file":
            refs = [
                file_ref(url, request.filtered_query_params, request.tag, request.application, request.origin_tls)
                for url in request.urls
            ]
            await fan_out(_FileRoute(self, request, progress), self.proxies, request, refs)
        else:
            try:
                origin = parse_manifest_url(request.urls[0])
            except ValueError as error:
                raise PreheatError(str(error)) from None
            await fan_out(_ImageRoute(self, request, progress, origin), self.proxies, request)

    def explain(self, proxy: _Proxy, error: PreheatError) -> str:
        """Name the proxy in an error; a 407 is the proxy's own refusal, not the origin's."""
        if isinstance(error, TransferError) and error.status == 407:
            index = self.proxies.index(proxy)
            return (
                f"proxy {proxy.hostname} refused the gateway (407 Proxy Authentication Required): check username and "
                f"password_env of {self.cluster.config_path}.proxies[{index}]"
            )
        if isinstance(error, FetchError):  # a file's error names the proxy already
            return str(error)
        return f"through proxy {proxy.hostname}: {error}"


class _Route(Route[_Proxy, ItemT]):
    """One cluster task through the proxies: each item fetched by its origin URL through a proxy."""

    noun = "proxy"

    def __init__(
        self, adapter: ProxyAdapter, request: PreheatRequest, progress: Progress, *, what: str, origin: ImageRef | None
    ) -> None:
        super().__init__(
            cluster=adapter.cluster.name,
            dedupe=adapter.context.dedupe,
            progress=progress,
            what=what,
            image=origin.name if origin else "",
            manifest_url=origin.manifest_url() if origin else "",
        )
        self.adapter, self.request = adapter, request

    def names(self, endpoint: _Proxy) -> tuple[str, ...]:
        return endpoint.hostname, urlsplit(endpoint.config.url).hostname or "", endpoint.ip

    def key(self, endpoint: _Proxy, item: ItemT) -> tuple[str, ...]:
        return ("proxy", endpoint.config.url, self.identity(item))  # the identity names the source: the origin URL

    @abc.abstractmethod
    def identity(self, item: ItemT) -> str:
        """What ``item`` is, whatever URL names it."""

    def explain(self, endpoint: _Proxy, error: PreheatError) -> str:
        return self.adapter.explain(endpoint, error)


class _FileRoute(_Route[FileRef]):
    """Files: fetched through a proxy as they are, with the caller's headers for the first origin only."""

    def __init__(self, adapter: ProxyAdapter, request: PreheatRequest, progress: Progress) -> None:
        super().__init__(adapter, request, progress, what="files", origin=None)
        self._authority = adapter.context.dedupe.authority_of_headers(request.headers)

    def url(self, item: FileRef) -> str:
        return item.display_url

    def identity(self, item: FileRef) -> str:
        return item.identity

    def authority(self, endpoint: _Proxy, item: FileRef) -> str:
        return self._authority  # the caller's headers

    async def fetch(self, endpoint: _Proxy, item: FileRef) -> int:
        size = await stream_url(
            endpoint.client,
            self.adapter.context.policy,
            item,
            DiscardSink,
            headers=self.request.headers,
            on_bytes=self.progress.transferred,
            via=f"proxy {endpoint.hostname}",
            ssl_context=job_context(self.request.origin_tls),  # an https origin is a tunnel: TLS end to end
        )
        return size


class _ImageRoute(_Route[Blob]):
    """An image: its manifests resolved and its blobs pulled through a proxy, with the caller's token."""

    def __init__(self, adapter: ProxyAdapter, request: PreheatRequest, progress: Progress, origin: ImageRef) -> None:
        super().__init__(adapter, request, progress, what="blobs", origin=origin)
        self.origin = origin
        self._auths: dict[_Proxy, RegistryAuth] = {}
        self._authority = adapter.context.dedupe.authority_of(request.headers.get("Authorization"), request.credentials)

    def auth(self, proxy: _Proxy) -> RegistryAuth:
        """The task's authentication to the origin through ``proxy`` (its tokens are got through that proxy)."""
        if proxy not in self._auths:
            self._auths[proxy] = RegistryAuth(
                header=self.request.headers.get("Authorization"),
                credentials=self.request.credentials,
                ssl=job_context(self.request.origin_tls),  # an https origin is a tunnel: TLS end to end
            )
        return self._auths[proxy]

    async def resolve(self, endpoint: _Proxy) -> list[Blob]:
        _, blobs = await endpoint.oci.resolve_blobs(self.origin, self.auth(endpoint), self.request.platform)
        return blobs

    def url(self, item: Blob) -> str:
        return self.origin.blob_url(item.digest)

    def identity(self, item: Blob) -> str:
        return self.url(item)

    def size(self, item: Blob) -> int:
        return item.size

    def authority(self, endpoint: _Proxy, item: Blob) -> str:
        return self._authority  # the caller's token and credentials

    async def fetch(self, endpoint: _Proxy, item: Blob) -> int:
        return await endpoint.oci.fetch_blob(
            self.origin, item, self.auth(endpoint), DiscardSink, on_bytes=self.progress.transferred
        )
