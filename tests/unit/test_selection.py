"""Choosing a cluster's endpoints the way Dragonfly chooses peers, and warming them a few at a time."""

from __future__ import annotations

import asyncio

import pytest

from adapters.base import EndpointChoice, PreheatError
from adapters.selection import choose, on_each

ENDPOINTS = [("cache-a", "10.0.0.1"), ("cache-b", "10.0.0.2"), ("cache-c", "10.0.0.3"), ("cache-d", "10.0.0.4")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pick(choice: EndpointChoice) -> list[str]:
    return [name for name, _ in choose(ENDPOINTS, choice, names=lambda e: e, cluster="edge")]


def test_no_choice_is_every_endpoint() -> None:
    assert pick(EndpointChoice()) == ["cache-a", "cache-b", "cache-c", "cache-d"]


def test_ips_match_an_address_or_a_host_name_in_configured_order() -> None:
    assert pick(EndpointChoice(ips=("10.0.0.3", "cache-a"))) == ["cache-a", "cache-c"]


def test_an_address_naming_no_endpoint_fails_and_lists_the_endpoints() -> None:
    with pytest.raises(PreheatError, match=r"ips 10\.0\.0\.9 name no endpoint of cluster edge.*cache-b 10\.0\.0\.2"):
        pick(EndpointChoice(ips=("10.0.0.1", "10.0.0.9")))


@pytest.mark.parametrize(("count", "names"), [(1, 1), (3, 3), (200, 4)])
def test_count_takes_the_first_endpoints(count: int, names: int) -> None:
    assert pick(EndpointChoice(count=count)) == [name for name, _ in ENDPOINTS][:names]


@pytest.mark.parametrize(("percentage", "names"), [(1, 1), (25, 1), (26, 2), (50, 2), (100, 4)])
def test_percentage_rounds_up_and_is_never_none(percentage: int, names: int) -> None:
    assert len(pick(EndpointChoice(percentage=percentage))) == names


@pytest.mark.anyio
async def test_on_each_warms_at_most_so_many_endpoints_at_once() -> None:
    running, most = 0, 0

    async def warm(_endpoint: str) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    await on_each(["a", "b", "c", "d", "e"], 2, warm)

    assert most == 2
