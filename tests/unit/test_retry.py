"""One retry loop for registry and file fetches (adapters/retry.py): transient failures only, Retry-After honoured."""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable

import httpx
import pytest

from adapters import retry
from adapters.retry import FetchError, RegistryError, TransferError, retry_after, retrying

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    # The module's own name for asyncio, not asyncio.sleep itself: a gateway thread's loop must keep its sleep.
    monkeypatch.setattr(retry, "asyncio", types.SimpleNamespace(sleep=sleep))
    return slept


def failing(*errors: TransferError) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    return calls, attempt


def test_registry_and_file_failures_share_one_shape() -> None:
    for kind in (RegistryError, FetchError):
        error = kind("503", transient=True, status=503, retry_after=2.0)
        assert isinstance(error, TransferError)
        assert (error.transient, error.status, error.retry_after, str(error)) == (True, 503, 2.0, "503")


async def test_a_transient_failure_is_retried_with_growing_jittered_waits(waits: list[float]) -> None:
    calls, attempt = failing(FetchError("a", transient=True), RegistryError("b", transient=True))
    retried: list[int] = []

    assert await retrying(attempt, attempts=3, base_seconds=0.5, on_retry=lambda: retried.append(1)) == "done"

    assert len(calls) == 3 and len(retried) == 2
    assert 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0


async def test_a_failure_that_is_not_transient_fails_at_once(waits: list[float]) -> None:
    calls, attempt = failing(RegistryError("404", status=404))

    with pytest.raises(RegistryError, match="404"):
        await retrying(attempt, attempts=4, base_seconds=0.5)

    assert len(calls) == 1 and waits == []


async def test_the_last_attempt_raises_its_own_failure(waits: list[float]) -> None:
    calls, attempt = failing(*(FetchError(f"try {n}", transient=True) for n in range(3)))

    with pytest.raises(FetchError, match="try 2"):
        await retrying(attempt, attempts=3, base_seconds=0.5)

    assert len(calls) == 3 and len(waits) == 2


async def test_retry_after_is_waited_out_exactly(waits: list[float]) -> None:
    _, attempt = failing(RegistryError("429", transient=True, status=429, retry_after=7.0))

    await retrying(attempt, attempts=2, base_seconds=0.5)

    assert waits == [7.0]


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0.5", 0.5), ("-1", 0.0), ("3600", 30.0), ("soon", None)])
def test_retry_after_is_read_as_capped_seconds(header: str, seconds: float | None) -> None:
    assert retry_after(httpx.Response(503, headers={"Retry-After": header})) == seconds
    assert retry_after(httpx.Response(503)) is None
