"""The ASGI application: wires the store, adapters, runner and endpoints together.

:class:`Gateway` owns everything with a lifetime (store connections, the HTTP pool, the
runner); :func:`create_app` builds the Starlette app whose lifespan starts and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.metadata
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from adapters import registry as adapter_registry
from adapters.base import Adapter, AdapterContext, ClusterInfo
from adapters.dedupe import Deduper
from adapters.guard import ConnectGuard, urls_in
from adapters.oci import OciClient
from adapters.transport import new_client
from gateway import console
from gateway.auth import Authenticator, hash_token, new_token
from gateway.config import Config
from gateway.endpoints import kraken, legacy, metrics, mirror, openapi, probes, schema
from gateway.gcpolicy import CollectorPolicy
from gateway.health import ClusterHealth
from gateway.httputil import APIError, error_response
from gateway.jobs import InvalidRequest, JobService
from gateway.metrics import Metrics, counter_family, gauge_family
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.httpmetrics import HTTPMetricsMiddleware
from gateway.middleware.listener import ListenerSplitMiddleware
from gateway.middleware.prefix import PathPrefixMiddleware
from gateway.middleware.requestid import RequestIdMiddleware
from gateway.middleware.startup import StartupRefusalMiddleware
from gateway.ratelimit import RateLimiter
from gateway.routing import merge_by_path
from gateway.runner import Runner
from gateway.secretbox import SecretBox
from gateway.statuscache import StatusCache
from gateway.store import JobRecord, SqlStore, StoreUnavailable, open_store

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
        self.store: SqlStore = open_store(config.store_url)
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
        self.store.observe = lambda operation, seconds: self.metrics.store_duration.labels(operation).observe(seconds)
        self.runner = Runner(config, self.store, self.box, self.adapters, self.metrics)
        self.jobs = JobService(
            config, self.store, self.box, on_created=self._created, on_deleted=self.runner.cancel_job
        )
        self.health = ClusterHealth(self.adapters)
        self.create_limit = RateLimiter(config.server.create_rate_per_second, config.server.create_burst)
        self.metrics.watch(self._scraped)
        self.statuses = StatusCache()
        self._lock_file: Any = None
        self._lag_watch: asyncio.Task[None] | None = None
        # Process-wide: only the serve command's own process tunes its collector (embedders and tests keep theirs).
        self._collector = CollectorPolicy(self.metrics.gc_pauses) if tune_process else None

    async def start(self) -> None:
        if self.store.dialect == "sqlite":
            self._lock_file = _lock_exclusive(Path(self.config.store_url.removeprefix("sqlite:///")))
        await self.store.open()
        if self.config.auth.mode == "none":
            log.warning("authentication is OFF (auth.mode: none): anyone who can reach this port can run preheats")
        if self.config.server.mirror_anonymous and self.config.auth.mode != "none":
            log.warning(
                "the registry mirror (/v2/) serves pulls WITHOUT credentials (server.mirror_anonymous): "
                "anyone who can reach it can pull every image this gateway preheated; use it for public images only"
            )
        elif self.config.auth.tokens and not await self.store.list_tokens():
            await self._print_first_token()
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
        if self._lock_file is not None:
            self._lock_file.close()

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
            *mirror.metric_families(self),
        ]

    async def _print_first_token(self) -> None:
        token = new_token()
        try:
            await self.store.create_token("default", hash_token(token), ["job"], None)
        except ValueError:  # another replica starting at the same moment made it first
            return
        host, port = self.config.server.host, self.config.server.port
        print(
            f"Created personal access token 'default' (shown once, store it now):\n  {token}\n"
            f"Use it in Harbor as auth mode OAuth, or: curl -H 'Authorization: Bearer {token}' http://{host}:{port}/healthy",
            flush=True,
        )


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


def _lock_exclusive(database: Path) -> Any:
    """One process owns an embedded SQLite store: a second one would re-run the first's tasks."""
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(database.with_name(database.name + ".lock"), "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreUnavailable(
            f"another gateway process serves the SQLite store {database}; run one process per SQLite file, "
            "or use PostgreSQL (store.url: postgresql://...) for several replicas"
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


async def _invalid_request(_request: Request, error: Exception) -> Response:
    return error_response(422, str(error))


async def _api_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return error_response(error.status, error.message, error.headers)


async def _http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(error.status_code, str(error.detail))
    return error_response(error.status_code, message, dict(error.headers or {}))


async def _store_unavailable(_request: Request, error: Exception) -> Response:
    log.error("store unavailable: %s", error)
    return error_response(503, "the job store is unavailable; retry shortly", {"Retry-After": "5"})


async def _internal_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal error; the gateway log has the details")


def create_app(config: Config, *, tune_process: bool = False) -> Starlette:
    """The gateway as an ASGI app; ``tune_process`` (the ``serve`` command) also tunes the process's collector."""
    gateway = Gateway(config, tune_process=tune_process)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await gateway.start()
        except StoreUnavailable as error:  # e.g. another process holds the SQLite file: one line, no traceback
            app.state.startup_refusal = f"cannot start: {error}"
            raise
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await gateway.stop()

    # One route per path: a 405's Allow then names every method the path serves.
    routes = merge_by_path(
        [
            *probes.routes(),
            *metrics.routes(),
            *schema.routes(),
            *openapi.routes(),
            *legacy.routes(),
            *kraken.routes(),
            *console.routes(),
            *mirror.routes(),
        ]
    )
    # Status polls, most of what Harbor sends, are matched first: Starlette tries routes in order.
    routes.sort(key=lambda route: getattr(route, "path", "") not in ("/oapi/v1/jobs/{id:int}", "/preheats/{id}"))
    app = Starlette(
        routes=routes,
        middleware=[
            *([Middleware(PathPrefixMiddleware, root_path=config.server.root_path)] if config.server.root_path else []),
            Middleware(ListenerSplitMiddleware, separate=bool(config.server.mirror_listen)),
            Middleware(RequestIdMiddleware),
            Middleware(HTTPMetricsMiddleware, metrics=gateway.metrics, routes=routes),
            Middleware(
                AuthMiddleware, authenticator=lambda: gateway.auth, anonymous_pull=config.server.mirror_anonymous
            ),
        ],
        exception_handlers={
            InvalidRequest: _invalid_request,
            APIError: _api_error,
            HTTPException: _http_error,
            StoreUnavailable: _store_unavailable,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(StartupRefusalMiddleware, app_state=app.state)
    app.state.ready = False
    return app
