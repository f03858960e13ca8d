"""One fan-out for every adapter with several endpoints (adapters/fanout.py): resolve through the first
endpoint that answers, then one endpoint per item or every chosen endpoint, with a row per outcome."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from adapters.base import EndpointChoice, PreheatError, PreheatRequest, Scope, TaskRow
from adapters.dedupe import Deduper
from adapters.fanout import Route, fan_out
from adapters.retry import RegistryError

pytestmark = pytest.mark.anyio
URL = "https://registry.example/v2/app/manifests/1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(eq=False)
class Cache:
    hostname: str
    resolves: Exception | None = None
    fails: set[str] = field(default_factory=set)
    ip: str = "10.0.0.1"
    semaphore: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    resolved: int = 0
    fetched: list[str] = field(default_factory=list)


@dataclass
class Recorder:
    plans: list[tuple[int, int]] = field(default_factory=list)
    ok: list[TaskRow] = field(default_factory=list)
    bad: list[TaskRow] = field(default_factory=list)

    def planned(self, items: int, total_bytes: int) -> None:
        self.plans.append((items, total_bytes))

    def transferred(self, nbytes: int) -> None:
        pass

    def succeeded(self, row: TaskRow) -> None:
        self.ok.append(row)

    def failed(self, row: TaskRow) -> None:
        self.bad.append(row)


class Blobs(Route[Cache, str]):
    noun = "cache"

    def __init__(self, progress: Recorder) -> None:
        super().__init__(
            cluster="edge",
            dedupe=Deduper(window=0),
            progress=progress,
            what="blobs of app:1",
            image="app:1",
            manifest_url=URL,
        )

    def names(self, endpoint: Cache) -> tuple[str, ...]:
        return (endpoint.hostname, endpoint.ip)

    async def resolve(self, endpoint: Cache) -> list[str]:
        endpoint.resolved += 1
        if endpoint.resolves is not None:
            raise endpoint.resolves
        return ["a", "b"]

    def url(self, item: str) -> str:
        return f"blob/{item}"

    def size(self, item: str) -> int:
        return 10

    def key(self, endpoint: Cache, item: str) -> tuple[str, ...]:
        return (endpoint.hostname, item)

    def authority(self, endpoint: Cache, item: str) -> str:
        return ""

    async def fetch(self, endpoint: Cache, item: str) -> int:
        endpoint.fetched.append(item)
        if item in endpoint.fails:
            raise PreheatError(f"{endpoint.hostname} lost {item}")
        return 10


def request(scope: Scope = "single_seed_peer", **choice: int) -> PreheatRequest:
    return PreheatRequest(job_id=1, type="image", urls=(URL,), scope=scope, choice=EndpointChoice(**choice))


async def test_single_seed_peer_warms_each_item_once_on_the_first_endpoint_that_resolved() -> None:
    down, first, second = Cache("down", resolves=RegistryError("refused", transient=True)), Cache("a"), Cache("b")
    progress = Recorder()

    await fan_out(Blobs(progress), [down, first, second], request())

    assert (down.fetched, first.fetched, second.fetched) == ([], ["a", "b"], [])
    assert progress.plans == [(2, 20)]
    assert {(row.url, row.hostname) for row in progress.ok} == {("blob/a", "a"), ("blob/b", "a")}


async def test_an_item_that_fails_moves_to_the_next_endpoint_but_never_to_one_that_could_not_resolve() -> None:
    down = Cache("down", resolves=RegistryError("refused", transient=True))
    first, second = Cache("a", fails={"b"}), Cache("b")
    progress = Recorder()

    await fan_out(Blobs(progress), [down, first, second], request())

    assert (down.fetched, first.fetched, second.fetched) == ([], ["a", "b"], ["b"])
    assert [(row.url, row.hostname, row.description) for row in progress.bad] == [("blob/b", "a", "a lost b")]


async def test_a_missing_image_stops_the_search_at_the_first_endpoint_and_names_every_error() -> None:
    missing, other = Cache("a", resolves=RegistryError("app:1 not found (404)", status=404)), Cache("b")

    with pytest.raises(PreheatError, match=r"no cache of cluster edge could resolve app:1: app:1 not found \(404\)"):
        await fan_out(Blobs(Recorder()), [missing, other], request())

    assert other.resolved == 0


async def test_all_peers_warms_every_chosen_endpoint_and_plans_every_copy() -> None:
    caches = [Cache("a"), Cache("b"), Cache("c")]
    progress = Recorder()

    await fan_out(Blobs(progress), caches, request("all_peers", count=2))

    assert [cache.fetched for cache in caches] == [["a", "b"], ["a", "b"], []]
    assert [cache.resolved for cache in caches] == [1, 1, 0], "each warmed endpoint reads the manifests once"
    assert progress.plans == [(4, 40)] and len(progress.ok) == 4


async def test_an_endpoint_that_could_not_resolve_fails_each_item_with_why() -> None:
    down, up = Cache("down", resolves=RegistryError("connection refused", transient=True)), Cache("up")
    progress = Recorder()

    await fan_out(Blobs(progress), [down, up], request("all_seed_peers"))

    assert [(row.url, row.hostname, row.description) for row in progress.bad] == [
        ("blob/a", "down", "connection refused"),
        ("blob/b", "down", "connection refused"),
    ]
    assert down.fetched == [] and len(progress.ok) == 2


async def test_a_manifest_failure_after_resolving_is_a_row_of_its_own_and_the_blobs_still_land() -> None:
    up, flaky = Cache("up"), Cache("flaky")
    progress = Recorder()
    route = Blobs(progress)
    resolve = route.resolve

    async def resolve_once(endpoint: Cache) -> list[str]:
        if endpoint is flaky:
            raise RegistryError("manifest went away")
        return await resolve(endpoint)

    route.resolve = resolve_once  # type: ignore[method-assign]

    await fan_out(route, [up, flaky], request("all_peers"))

    assert [(row.url, row.hostname, row.description) for row in progress.bad] == [(URL, "flaky", "manifest went away")]
    assert flaky.fetched == ["a", "b"] and len(progress.ok) == 4


async def test_the_task_fails_naming_how_many_items_reached_no_endpoint_and_the_last_error() -> None:
    only = Cache("a", fails={"b"})

    with pytest.raises(PreheatError, match="1 of 2 blobs of app:1 reached no cache of cluster edge: a lost b"):
        await fan_out(Blobs(Recorder()), [only], request())


async def test_items_known_up_front_skip_resolution() -> None:
    caches = [Cache("a"), Cache("b")]
    progress = Recorder()

    await fan_out(Blobs(progress), caches, request("all_peers"), items=["f"])

    assert [cache.resolved for cache in caches] == [0, 0]
    assert [cache.fetched for cache in caches] == [["f"], ["f"]]
