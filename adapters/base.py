"""The adapter contract: what a backend receives, what it reports, how it is found.

An adapter knows one way to warm one cluster (a local cache, registry mirrors, an upstream
Dragonfly manager, ...). The gateway hands it a :class:`PreheatRequest` for one cluster task
and a :class:`Progress` to report into; the adapter reports every blob (or file) it warmed or
failed to warm as a :class:`TaskRow`, and either returns (the cluster task succeeded) or
raises :class:`PreheatError` with a message a person can act on (the cluster task failed).

This module must never import ``gateway``: third-party adapters depend on it alone.
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, get_args

import httpx
import msgspec

if TYPE_CHECKING:  # the services an AdapterContext lends; their modules build on this one
    from adapters.dedupe import Deduper
    from adapters.oci import OciClient
    from adapters.urlpolicy import URLPolicy

Scope = Literal["single_seed_peer", "all_seed_peers", "all_peers"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
PreheatType = Literal["image", "file"]
DEFAULT_SCOPE: Scope = "single_seed_peer"
DEFAULT_PLATFORM = "linux/amd64"
OPTIONAL_ARGUMENTS = frozenset({"ips", "count", "percentage", "certificate_chain", "insecure_skip_verify"})
"""Dragonfly's preheat arguments that mean something only to some adapters (see :attr:`Adapter.understands`)."""


class PreheatError(Exception):
    """A cluster task failed; ``str(error)`` is shown to the Harbor user verbatim.

    Say what failed, where, and what to do. Never include a secret.
    """


class Credentials(msgspec.Struct, frozen=True):
    """Registry username and password. The password is a secret: never log or render it."""

    username: str
    password: str

    def __repr__(self) -> str:  # keeps the password out of tracebacks and debug logs
        return f"Credentials(username={self.username!r}, password=<redacted>)"


class EndpointChoice(msgspec.Struct, frozen=True, kw_only=True):
    """Which of a cluster's endpoints an ``all_*`` preheat warms: Dragonfly's ``ips``, ``count``, ``percentage``.

    At most one is set (the gateway refuses a mix); none means every endpoint.
    """

    ips: tuple[str, ...] = ()
    """Endpoints by address: an IP an endpoint resolves to, or its host name."""
    count: int | None = None
    """The first ``count`` endpoints in configured order (all of them when there are fewer)."""
    percentage: int | None = None
    """That share of the endpoints, rounded up, in configured order."""

    def __bool__(self) -> bool:
        return bool(self.ips) or self.count is not None or self.percentage is not None


class OriginTLS(msgspec.Struct, frozen=True, kw_only=True):
    """How one job verifies its origin's TLS: Dragonfly's ``certificate_chain`` and ``insecure_skip_verify``."""

    certificate_chain: tuple[str, ...] = ()
    """PEM certificates trusted for the origin instead of the system's, for this job."""
    insecure_skip_verify: bool = False
    """Do not verify the origin's certificate at all, for this job."""


class PreheatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One cluster's share of a preheat job."""

    job_id: int
    type: PreheatType
    urls: tuple[str, ...]
    """``image``: one manifest URL (by tag or digest). ``file``: the files' URLs."""
    platform: str = DEFAULT_PLATFORM
    """``os/arch[/variant]``, or ``all`` for every platform of an index."""
    scope: Scope = DEFAULT_SCOPE
    headers: dict[str, str] = {}
    """The caller's headers for the origin (Harbor's short-lived bearer token). Secret."""
    credentials: Credentials | None = None
    """Origin credentials: from the request, else from ``registries.credentials``."""
    tag: str = ""
    application: str = ""
    filtered_query_params: tuple[str, ...] = ()
    concurrency: int = 8
    """Blobs in flight per endpoint (Dragonfly's ``concurrent_task_count``)."""
    endpoints_at_once: int = 500
    """Endpoints warmed at the same time (Dragonfly's ``concurrent_peer_count``)."""
    choice: EndpointChoice = EndpointChoice()
    """Which endpoints an ``all_*`` scope warms; only adapters naming ``ips``/``count``/``percentage``
    in :attr:`Adapter.understands` ever receive one set."""
    origin_tls: OriginTLS | None = None
    """This job's TLS to its origin (registry or file server); ``None``: the gateway's own (``registries.tls``)."""
    piece_length: int | None = None
    timeout_seconds: float = 1800.0
    extra: dict[str, Any] = {}
    """Arguments the gateway does not interpret, for adapters that forward a request upstream."""

    def __repr__(self) -> str:
        return f"PreheatRequest(job_id={self.job_id}, type={self.type!r}, urls={self.urls!r}, scope={self.scope!r})"


class TaskRow(msgspec.Struct, frozen=True, omit_defaults=True):
    """One row of Harbor's result table: a blob (or file) on one host."""

    url: str
    hostname: str
    ip: str
    description: str = ""


class Progress(Protocol):
    """Where an adapter reports as it goes; the gateway records it durably."""

    def planned(self, items: int, total_bytes: int) -> None:
        """Announce (or raise) how many blobs/files and bytes this task will warm."""

    def transferred(self, nbytes: int) -> None:
        """Count bytes read from a source while warming."""

    def succeeded(self, row: TaskRow) -> None:
        """One blob or file is warm on one host."""

    def failed(self, row: TaskRow) -> None:
        """One blob or file could not be warmed on one host; ``row.description`` says why."""


class Health(msgspec.Struct, frozen=True):
    """The outcome of probing a cluster's backends."""

    reachable: bool
    latency_ms: float = 0.0
    error: str = ""


class ClusterInfo(msgspec.Struct, frozen=True):
    """The cluster an adapter instance serves, for messages and rows."""

    id: int
    name: str
    config_path: str = ""
    """Where the cluster sits in the config file (``clusters[1]``), for actionable errors."""
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class AdapterContext:
    """Shared services the gateway lends every adapter."""

    http: httpx.AsyncClient
    """Pooled client for origin registries, mirrors and upstream APIs (no redirects followed)."""
    oci: OciClient
    """Registry client sharing token and manifest caches across clusters."""
    policy: URLPolicy
    """Which hosts may be fetched from; adapters check redirects and endpoints through it."""
    dedupe: Deduper
    """Single flight for warms, shared by every cluster (:mod:`adapters.dedupe`)."""
    credentials_for: Callable[[str], Credentials | None]
    """Configured credentials (``registries.credentials``) for a ``host[:port]``."""
    hostname: str
    ip: str
    user_agent: str = "harbor-preheat-gateway"
    tls_by_host: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    """``registries.tls`` as contexts by ``host[:port]``: ``http`` uses them already; an adapter that makes
    its own clients to reach origins (``proxy``) passes them on as its clients' ``tls_by_host``."""


class Adapter(abc.ABC):
    """Base class for backends. Subclasses set ``name`` and ``Options``.

    ``Options`` is a msgspec Struct holding the adapter's own keys of a cluster entry in the
    config file (everything besides ``id``, ``name``, ``adapter``, ``platform``); the gateway
    decodes it strictly so an unknown or mistyped key is reported with its path.
    """

    name: ClassVar[str]
    Options: ClassVar[type[msgspec.Struct]]
    supports: ClassVar[frozenset[PreheatType]] = frozenset({"image"})
    """The preheat types this adapter warms; the gateway fails other types' cluster tasks before calling it."""
    unsupported_hint: ClassVar[str] = (
        "use a local, proxy or dragonfly cluster for those, naming it in scheduler_cluster_ids"
    )
    """What to tell a user whose job targets this adapter with a type it does not support."""
    understands: ClassVar[frozenset[str]] = frozenset()
    """Which of Dragonfly's optional arguments (:data:`OPTIONAL_ARGUMENTS`) this adapter gives a meaning to;
    the gateway refuses a job that sends another one to it (422), rather than ignore it."""

    def __init__(self, cluster: ClusterInfo, options: Any, context: AdapterContext) -> None:
        self.cluster = cluster
        self.options = options
        self.context = context

    @abc.abstractmethod
    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        """Warm what ``request`` names; return on success, raise :class:`PreheatError` on failure.

        Must honour cancellation promptly and never hold a whole blob in memory.
        """

    async def check(self) -> Health:
        """Probe the backends. The default says reachable; override to probe for real."""
        return Health(reachable=True)

    async def aclose(self) -> None:  # noqa: B027 - optional: most adapters hold nothing of their own
        """Release what the adapter holds (clients, pools)."""
