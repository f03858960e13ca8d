"""The gateway's services, alive between :meth:`Gateway.start` and :meth:`Gateway.stop`.

:class:`Gateway` builds and owns everything with a lifetime (store connections, the HTTP pool,
the adapters, the runner); ``gateway.app`` hands it to every request as lifespan state, where
endpoints read it with :func:`gateway_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.types import Scope

from adapters import registry as adapter_registry
from adapters.base import Adapter, AdapterContext, ClusterInfo
from adapters.dedupe import Deduper
from adapters.guard import ConnectGuard, urls_in
from adapters.oci import OciClient
from adapters.transport import new_client
from gateway.auth import Authenticator
from gateway.config import Config
from gateway.firsttoken import announce_first_token
from gateway.gcpolicy import CollectorPolicy
from gateway.health import ClusterHealth
from gateway.jobs import JobService
from gateway.metrics import Metrics, MirrorStats, counter_family, gauge_family
from gateway.ratelimit import RateLimiter
from gateway.runner import Runner
from gateway.secretbox import SecretBox
from gateway.statuscache import StatusCache
from gateway.store import JobRecord, SqlStore, open_store

log = logging.getLogger("gateway")


def _version() -> str:
    try:
        return importlib.metadata.version("harbor-preheat-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


VERSION = _version()
USER_AGENT = f"harbor-preheat-gateway/{VERSION}"


class Gateway:
    """Everything the endpoints need, alive between start() and stop()."""

    def __init__(self, config: Config, *, tune_process: bool = False) -> None:
        self.config = config
        self.version = VERSION
        self.started_at = time.time()
        self.store: SqlStore = open_store(config.store_url, serving=True)
        self.box = SecretBox.from_env_or_file(
            config.store.secret_key_env,
            Path(config.store.secret_key_file) if config.store.secret_key_file else config.state_dir / "secret.key",
        )
        self.auth = Authenticator(config.auth, self.store)
        tls_by_host = config.registries.tls_contexts()  # registries.tls, built once
        self.http = new_client(
            timeout=httpx.Timeout(config.registries.read_timeout_seconds, connect=10.0),
            headers={"User-Agent": USER_AGENT},
            guard=_connect_guard(config),
            tls_by_host=tls_by_host,
        )
        self.dedupe = Deduper(window=config.runner.dedupe_window_seconds, floor=config.runner.transfer_floor)
        policy = config.registries.policy()
        self.oci = OciClient(
            self.http, policy, user_agent=USER_AGENT, max_in_flight=48, limits=config.registries.limits()
        )
        context = AdapterContext(
            http=self.http,
            oci=self.oci,
            policy=policy,
            dedupe=self.dedupe,
            credentials_for=config.credentials_for,
            hostname=socket.gethostname(),
            ip=_primary_ip(),
            user_agent=USER_AGENT,
            tls_by_host=tls_by_host,
        )
        self.adapters: dict[int, Adapter] = {
            cluster.id: adapter_registry.load(cluster.config.adapter)(
                ClusterInfo(
                    id=cluster.id, name=cluster.name, config_path=cluster.config_path, platform=cluster.config.platform
                ),
                cluster.options,
                context,
            )
            for cluster in config.clusters
        }
        self.metrics = Metrics()
        self.mirror_stats = MirrorStats()
        self.store.observe = lambda operation, seconds: self.metrics.store_duration.labels(operation).observe(seconds)
        self.runner = Runner(config, self.store, self.box, self.adapters, self.metrics)
        self.jobs = JobService(
            config, self.store, self.box, on_created=self._created, on_deleted=self.runner.cancel_job
        )
        self.health = ClusterHealth(self.adapters)
        self.create_limit = RateLimiter(config.server.create_rate_per_second, config.server.create_burst)
        self.metrics.watch(self._scraped)
        self.statuses = StatusCache()
        self._lag_watch: asyncio.Task[None] | None = None
        # Process-wide: only the serve command's own process tunes its collector (embedders and tests keep theirs).
        self._collector = CollectorPolicy(self.metrics.gc_pauses) if tune_process else None

    async def start(self) -> None:
        await self.store.open()
        if self.config.auth.mode == "none":
            log.warning("authentication is OFF (auth.mode: none): anyone who can reach this port can run preheats")
        if self.config.server.mirror_anonymous and self.config.auth.mode != "none":
            log.warning(
                "the registry mirror (/v2/) serves pulls WITHOUT credentials (server.mirror_anonymous): "
                "anyone who can reach it can pull every image this gateway preheated; use it for public images only"
            )
        elif self.config.auth.tokens:
            await announce_first_token(self.store, self.config.server)
        await self.runner.start()
        self._lag_watch = asyncio.create_task(self.metrics.watch_loop_lag(), name="loop-lag")
        if self._collector is not None:
            self._collector.settle()
        log.info(
            "serving %d cluster(s) from %s with store %s", len(self.adapters), self.config.source, self.store.dialect
        )

    draining = False
    """A graceful stop has begun (SIGTERM): ``/readyz`` answers 503 while requests are still served."""

    def drain(self) -> None:
        """The first step of a graceful stop (``gateway.serving`` calls it on SIGTERM): readiness turns
        false and this replica claims no more tasks, so new work goes to the others at once."""
        if not self.draining:
            self.draining = True
            log.info(
                "draining: /readyz answers 503 and no new task is claimed; unfinished ones are handed back at exit"
            )
        self.runner.drain()

    async def stop(self) -> None:
        """After the server drained its requests: hand unfinished tasks back, then close everything."""
        self.draining = True
        if self._collector is not None:
            self._collector.restore()
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        await self.runner.stop()
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.aclose()
        await self.http.aclose()
        await self.store.close()

    def _created(self, job: JobRecord) -> None:
        self.metrics.jobs_created.labels(job.source).inc()
        self.runner.wake()

    def _scraped(self) -> list[Any]:
        """Counters kept by the adapters, the auth layer and the health cache, read at scrape time."""
        dedupe, checks = self.dedupe, self.oci.fingerprints.checks
        up = {
            (self.adapters[i].cluster.name,): float(h["reachable"])
            for i, h in self.health.cached().items()
            if i in self.adapters
        }
        return [
            counter_family(
                "blob_fetches",
                "Blob warm requests: fetched, joined an in-flight fetch, or reused a recent one.",
                {("fetched",): dedupe.fetches, ("joined",): dedupe.joined, ("reused",): dedupe.reused},
                ["outcome"],
            ),
            counter_family(
                "blob_checks",
                "Blob copies read, by check: their own sha256, or a fingerprint compared with a copy that passed it.",
                {(check,): checks[check] for check in ("sha256", "fingerprint")},
                ["check"],
            ),
            counter_family("retries", "Transient registry errors retried.", {(): self.oci.retries}, []),
            counter_family(
                "auth_failures",
                "Requests refused for their credentials.",
                {(reason,): count for reason, count in self.auth.failures.items()},
                ["reason"],
            ),
            gauge_family("cluster_up", "1 when the cluster's last health check reached it.", up, ["cluster"]),
            *_layout_families(
                {
                    (a.cluster.name,): layout
                    for a in self.adapters.values()
                    if (layout := getattr(a, "layout", None)) is not None
                }
            ),
            *self.mirror_stats.families(),
        ]


def _layout_families(layouts: dict[tuple[str, ...], Any]) -> list[Any]:
    """The ``local`` clusters' OCI layouts (adapters.layout): bytes held, their bound, evictions."""
    return [
        gauge_family(
            "local_cache_bytes",
            "Bytes a local cluster's cache holds on disk (blobs and files).",
            {k: layout.held_bytes for k, layout in layouts.items()},
            ["cluster"],
        ),
        gauge_family(
            "local_cache_max_bytes",
            "A local cluster's max_bytes.",
            {k: layout.max_bytes for k, layout in layouts.items()},
            ["cluster"],
        ),
        counter_family(
            "local_cache_evictions",
            "Images and files a local cluster evicted to stay within max_bytes.",
            {k: layout.evictions for k, layout in layouts.items()},
            ["cluster"],
        ),
        counter_family(
            "local_cache_evicted_bytes",
            "Bytes a local cluster evicted to stay within max_bytes.",
            {k: layout.evicted_bytes for k, layout in layouts.items()},
            ["cluster"],
        ),
    ]


def _connect_guard(config: Config) -> ConnectGuard:
    """The shared client's connect-time policy: ``registries.allow``, plus every URL the operator
    put in a cluster's options (mirrors, endpoints), which may be on any address."""
    return ConnectGuard(
        config.registries.policy(), configured=urls_in([cluster.options for cluster in config.clusters])
    )


def _primary_ip() -> str:
    """The address other hosts would see this one by (no packet is sent)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
        return str(probe.getsockname()[0])
    return "127.0.0.1"


def gateway_in(scope: Scope) -> Gateway:
    """The running gateway, from a request scope's lifespan state (without a ``State`` per request)."""
    gateway: Gateway = scope["state"]["gateway"]
    return gateway


def gateway_of(request: Request) -> Gateway:
    """The running gateway, for a Starlette request (:func:`gateway_in` of its scope)."""
    return gateway_in(request.scope)


def caller_of(request: Request) -> str:
    """Who sent the request, for per-caller limits: the authenticated principal's name."""
    principal = request.scope.get("state", {}).get("principal")
    return principal.name if principal is not None else "anonymous"
