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
import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import cachetools
import httpx
import msgspec

from adapters import ratefloor
from adapters.ratefloor import TransferFloor
from adapters.urlpolicy import URLPolicy

if TYPE_CHECKING:
    from adapters.oci import OciClient

Scope = Literal["single_seed_peer", "all_seed_peers", "all_peers"]
PreheatType = Literal["image", "file"]
DEFAULT_SCOPE: Scope = "single_seed_peer"
DEFAULT_PLATFORM = "linux/amd64"
T = TypeVar("T")


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
    """Blobs in flight per endpoint."""
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
    credentials_for: Callable[[str], Credentials | None]
    """Configured credentials (``registries.credentials``) for a ``host[:port]``."""
    hostname: str
    ip: str
    user_agent: str = "harbor-preheat-gateway"


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


class _LeaderGone(PreheatError):
    """The caller a fetch was shared with went away (its job was deleted or timed out)."""


class Deduper:
    """Single flight and a recent-window for warming one item on one target, from one source.

    ``key`` names a warm: the target (a cache, an endpoint), the SOURCE it reads from (origin
    ``scheme://host:port`` and repository, or a file's identity) and the item (a digest), so
    callers of different registries never share a fetch. ``authority`` names who the fetch is
    made as (:meth:`authority`: a keyed hash of the credentials, never the secret itself):

    - same key, same authority: the caller joins the fetch in flight and shares its outcome;
    - same key, another authority: the caller waits for that fetch and uses its bytes if they
      arrived, but a failure there is not its own (someone else's token may have been refused):
      it then fetches for itself;
    - a caller whose leader was cancelled (its job deleted) fetches for itself too.

    A key warmed within ``window`` seconds is not fetched again. Failures are not remembered,
    so the next caller retries. Every fetch runs under ``floor`` (:mod:`adapters.ratefloor`).
    """

    def __init__(self, window: float = 600.0, maxsize: int = 200_000, *, floor: TransferFloor | None = None) -> None:
        self._recent: cachetools.TTLCache[tuple[str, ...], int] = (
            cachetools.TTLCache(maxsize=maxsize, ttl=window) if window > 0 else cachetools.TTLCache(maxsize=1, ttl=1e-9)
        )
        self._inflight: dict[tuple[str, ...], dict[str, asyncio.Future[int]]] = {}
        self._secret = secrets.token_bytes(32)  # this process only: authorities cannot be compared elsewhere
        self.floor = floor
        self.fetches = 0
        self.joined = 0
        self.reused = 0
        self.refetched = 0
        """Callers that fetched for themselves after the fetch they waited on failed."""

    def authority(self, *secrets_: str | None) -> str:
        """Who a fetch is made as (an Authorization header, a username and password, ...), as a
        keyed hash: equal for equal inputs within this process, and no secret can be read back."""
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in secrets_:
            data = b"" if part is None else part.encode("utf-8", "surrogatepass")
            mac.update(b"\0" if part is None else len(data).to_bytes(8, "big") + data)
        return mac.hexdigest()[:32]

    def authority_of(self, header: str | None = None, credentials: Credentials | None = None) -> str:
        """:meth:`authority` of a caller's ``Authorization`` header and registry credentials."""
        return self.authority(
            header, credentials.username if credentials else None, credentials.password if credentials else None
        )

    def authority_of_headers(self, headers: dict[str, str]) -> str:
        """:meth:`authority` of the headers a file is fetched with (tokens, cookies), in any order or case."""
        return self.authority(*sorted(f"{name.lower()}:{value}" for name, value in headers.items()))

    def forget(self, key: tuple[str, ...]) -> None:
        self._recent.pop(key, None)

    async def run(self, key: tuple[str, ...], warm: Callable[[], Awaitable[int]], *, authority: str = "") -> int:
        """Warm ``key`` with ``warm()`` (returning bytes read) unless done or in flight; see the class docstring."""
        for attempt in range(3):
            size = self._recent.get(key)
            if size is not None:
                self.reused += 1
                return size
            flights = self._inflight.get(key) or {}
            shared = flights.get(authority)
            same_authority = shared is not None
            if shared is None and flights and attempt == 0:
                shared = next(iter(flights.values()))
            if shared is None:
                break
            self.joined += 1
            try:
                return await asyncio.shield(shared)
            except _LeaderGone:
                pass
            except Exception:
                if same_authority:
                    raise  # the same source, as the same caller: the same failure
            self.refetched += 1
        return await self._lead(key, authority, warm)

    async def _lead(self, key: tuple[str, ...], authority: str, warm: Callable[[], Awaitable[int]]) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inflight.setdefault(key, {})[authority] = future
        try:
            self.fetches += 1
            with ratefloor.using(self.floor):
                size = await warm()
        except BaseException as error:
            if not future.done():
                # A cancelled leader hands on a failure its joiners fetch past.
                future.set_exception(
                    _LeaderGone("the fetch was shared with a job that went away; retry")
                    if isinstance(error, asyncio.CancelledError)
                    else error
                )
                future.exception()  # mark retrieved: joiners may not exist
            raise
        else:
            self._recent[key] = size
            future.set_result(size)
            return size
        finally:
            flights = self._inflight.get(key)
            if flights is not None and flights.get(authority) is future:
                del flights[authority]
                if not flights:
                    del self._inflight[key]


class Throttle:
    """A token bucket shared by every transfer of one cluster: a bandwidth cap for WAN links."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._allowance = bytes_per_second
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more may pass (callers take turns, so the cap is shared fairly)."""
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate) - nbytes
            self._last = now
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self.rate)


async def bounded_gather(limit: int, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs`` with at most ``limit`` in flight; cancel the rest if one raises."""
    semaphore = asyncio.Semaphore(max(1, limit))

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(job)) for job in jobs]
    return [task.result() for task in tasks]
