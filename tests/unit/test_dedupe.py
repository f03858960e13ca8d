"""adapters/dedupe.py: the same warm runs once, and a failed one is not remembered."""

from __future__ import annotations

import asyncio

import pytest

from adapters.dedupe import Deduper


def test_the_same_warm_runs_once_while_in_flight_and_is_reused_within_the_window() -> None:
    async def scenario() -> tuple[int, list[int]]:
        dedupe, calls = Deduper(window=60), []

        async def warm() -> int:
            calls.append(1)
            await asyncio.sleep(0.05)
            return 42

        sizes = await asyncio.gather(*(dedupe.run(("endpoint", "blob"), warm) for _ in range(5)))
        sizes.append(await dedupe.run(("endpoint", "blob"), warm))
        return len(calls), sizes

    calls, sizes = asyncio.run(scenario())
    assert calls == 1 and sizes == [42] * 6


def test_a_failed_warm_is_not_remembered() -> None:
    async def scenario() -> int:
        dedupe, calls = Deduper(window=60), []

        async def flaky() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return 1

        with pytest.raises(RuntimeError):
            await dedupe.run(("e", "b"), flaky)
        await dedupe.run(("e", "b"), flaky)
        return len(calls)

    assert asyncio.run(scenario()) == 2
