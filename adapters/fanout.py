"""Warming a task's items through a cluster's endpoints, as its scope says: one algorithm for
every adapter with several endpoints (``mirror``'s caches, ``proxy``'s proxies).

An image's items (its blobs) are resolved through the first endpoint that answers; a 404 or a
missing platform ends the search, since every endpoint would say the same. Then:

- ``single_seed_peer`` warms each item on one endpoint: the one that resolved first, then the
  next in configured order when it fails, skipping endpoints that could not resolve;
- ``all_seed_peers`` and ``all_peers`` warm every endpoint :func:`adapters.selection.choose`
  picks, at most ``endpoints_at_once`` at a time. An endpoint that could not resolve fails each
  item with why; each other endpoint reads the manifests too (so it caches them), alongside its
  items, and a failure there is a row of the manifest's own.

The task succeeds when every item reached at least one endpoint; every failure is a row.
Each fetch runs once across jobs (:class:`adapters.dedupe.Deduper`) and holds one of its
endpoint's slots only while it really fetches. An adapter says how its endpoints are reached
by filling in a :class:`Route`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

from adapters.base import PreheatError, PreheatRequest, Progress, TaskRow
from adapters.retry import TransferError
from adapters.selection import choose, on_each
from adapters.urlpolicy import host_ip

if TYPE_CHECKING:
    from adapters.dedupe import Deduper


class Endpoint(Protocol):
    """What the fan-out reads of an endpoint: its URL, the host name and address its rows show
    (``ip`` is filled in from ``url`` on first use), and its slots."""

    ip: str

    @property
    def url(self) -> str: ...

    @property
    def hostname(self) -> str: ...

    @property
    def semaphore(self) -> asyncio.Semaphore: ...


E = TypeVar("E", bound=Endpoint)
ItemT = TypeVar("ItemT")


class Route(abc.ABC, Generic[E, ItemT]):
    """How one task reaches one adapter's endpoints: the seam :func:`fan_out` calls.

    ``what`` names the items in the task's error (``blobs of library/app:1.0``, ``files``);
    ``image`` names what :meth:`resolve` resolves and ``manifest_url`` its row, for an image.
    """

    noun: ClassVar[str]
    """What one endpoint is called in messages: ``cache``, ``proxy``."""

    def __init__(
        self, *, cluster: str, dedupe: Deduper, progress: Progress, what: str, image: str = "", manifest_url: str = ""
    ) -> None:
        self.cluster, self.dedupe, self.progress = cluster, dedupe, progress
        self.what, self.image, self.manifest_url = what, image, manifest_url

    @abc.abstractmethod
    def names(self, endpoint: E) -> tuple[str, ...]:
        """The host names and addresses ``ips`` may pick ``endpoint`` by."""

    async def resolve(self, endpoint: E) -> list[ItemT]:
        """An image's items, through ``endpoint``; raises :class:`PreheatError`. Only for images."""
        raise NotImplementedError

    @abc.abstractmethod
    def url(self, item: ItemT) -> str:
        """The URL ``item``'s rows show."""

    def size(self, item: ItemT) -> int:
        """``item``'s size if known before it is fetched, else 0."""
        return 0

    @abc.abstractmethod
    def key(self, endpoint: E, item: ItemT) -> tuple[str, ...]:
        """What one warm of ``item`` on ``endpoint`` is across jobs (:meth:`adapters.dedupe.Deduper.run`)."""

    @abc.abstractmethod
    def authority(self, endpoint: E, item: ItemT) -> str:
        """Who ``item`` is fetched through ``endpoint`` as (:meth:`adapters.dedupe.Deduper.authority`)."""

    @abc.abstractmethod
    async def fetch(self, endpoint: E, item: ItemT) -> int:
        """Fetch ``item`` through ``endpoint`` to the end, checked; returns its size or raises :class:`PreheatError`."""

    def explain(self, endpoint: E, error: PreheatError) -> str:
        """``error`` as ``endpoint``'s row and the task's error show it."""
        return str(error)


async def fan_out(
    route: Route[E, ItemT], endpoints: Sequence[E], request: PreheatRequest, items: list[ItemT] | None = None
) -> None:
    """Warm ``items`` (``None``: an image's, resolved through ``endpoints``) on ``endpoints`` as
    ``request.scope`` says; return when every item reached one, else raise :class:`PreheatError`."""
    for endpoint in endpoints:
        if not endpoint.ip:
            endpoint.ip = await host_ip(endpoint.url)
    single = request.scope == "single_seed_peer"
    targets = list(endpoints) if single else choose(endpoints, request.choice, names=route.names, cluster=route.cluster)
    resolver: E | None = None
    unresolved: dict[E, str] = {}
    if items is None:
        items, resolver = await _resolve(route, targets, unresolved)
    warming = _Warming(route, targets, items, resolver, unresolved)
    copies = 1 if single else len(targets)
    route.progress.planned(len(items) * copies, sum(route.size(item) for item in items) * copies)
    if single:
        await asyncio.gather(*(warming.on_first(index) for index in range(len(items))))
    else:
        await on_each(targets, request.endpoints_at_once, warming.all_on)
    missing = [index for index, reached in enumerate(warming.reached) if not reached]
    if missing:
        raise PreheatError(
            f"{len(missing)} of {len(items)} {route.what} reached no {route.noun} of cluster {route.cluster}: "
            f"{warming.last_error[missing[0]] or 'see the failure rows'}"
        )


async def _resolve(route: Route[E, ItemT], targets: list[E], unresolved: dict[E, str]) -> tuple[list[ItemT], E]:
    """The image's items through the first of ``targets`` that answers, and that target; the
    others' errors go into ``unresolved``."""
    for endpoint in targets:
        try:
            return await route.resolve(endpoint), endpoint
        except PreheatError as error:
            unresolved[endpoint] = route.explain(endpoint, error)
            if (isinstance(error, TransferError) and error.status == 404) or "no matching manifest" in str(error):
                break  # the image itself is missing: every endpoint would say the same
    raise PreheatError(
        f"no {route.noun} of cluster {route.cluster} could resolve {route.image}: " + "; ".join(unresolved.values())
    )


class _Warming(Generic[E, ItemT]):
    """One task's fan-out after resolution: which endpoint resolved, which could not, what each item reached."""

    def __init__(
        self, route: Route[E, ItemT], targets: list[E], items: list[ItemT], resolver: E | None, unresolved: dict[E, str]
    ) -> None:
        self.route, self.targets, self.items = route, targets, items
        self.resolver = resolver
        """The endpoint that resolved the image (``None`` for items known up front)."""
        self.unresolved = unresolved
        """Endpoints that could not resolve the image, with why."""
        self.order = [resolver] if resolver is not None else []
        """``single_seed_peer``'s order: the resolving endpoint first, then every other that could resolve."""
        self.order += [e for e in targets if e is not resolver and e not in unresolved]
        self.reached = [False] * len(items)
        self.last_error = [""] * len(items)

    async def on_first(self, index: int) -> None:
        """``single_seed_peer``: one endpoint per item, the next one when it fails."""
        for endpoint in self.order:
            if await self.warm(endpoint, index):
                return

    async def all_on(self, endpoint: E) -> None:
        """``all_*`` scopes: every item through ``endpoint``, and an image's manifests alongside them.

        Blobs are fetched by digest, so they need not wait for the manifests. An endpoint that
        could not resolve is not tried again.
        """
        error = self.unresolved.get(endpoint)
        if error is not None:
            for index in range(len(self.items)):
                self._fail(endpoint, index, error)
            return
        manifests = [self._manifests(endpoint)] if self.resolver is not None and endpoint is not self.resolver else []
        await asyncio.gather(*manifests, *(self.warm(endpoint, index) for index in range(len(self.items))))

    async def _manifests(self, endpoint: E) -> None:
        try:
            await self.route.resolve(endpoint)
        except PreheatError as error:  # the blobs may still land: the manifest has a row of its own
            self.route.progress.failed(
                TaskRow(
                    url=self.route.manifest_url,
                    hostname=endpoint.hostname,
                    ip=endpoint.ip,
                    description=self.route.explain(endpoint, error),
                )
            )

    async def warm(self, endpoint: E, index: int) -> bool:
        """Warm one item on one endpoint, once across jobs; report its row."""
        route, item = self.route, self.items[index]

        async def fetch() -> int:
            async with endpoint.semaphore:  # only real fetches take a slot, not joiners
                return await route.fetch(endpoint, item)

        try:
            await route.dedupe.run(route.key(endpoint, item), fetch, authority=route.authority(endpoint, item))
        except PreheatError as error:
            self._fail(endpoint, index, route.explain(endpoint, error))
            return False
        self.reached[index] = True
        route.progress.succeeded(TaskRow(url=route.url(item), hostname=endpoint.hostname, ip=endpoint.ip))
        return True

    def _fail(self, endpoint: E, index: int, message: str) -> None:
        self.last_error[index] = message
        self.route.progress.failed(
            TaskRow(
                url=self.route.url(self.items[index]), hostname=endpoint.hostname, ip=endpoint.ip, description=message
            )
        )
