"""Sharing between jobs and registries: fair fetch slots, the minimum transfer rate, de-duplication by source and authority."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters import ratefloor
from adapters.base import Credentials, PreheatError
from adapters.dedupe import Deduper
from adapters.fairshare import FairShare
from adapters.ratefloor import TransferFloor


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


# --- fair slots ----------------------------------------------------------------------------


def test_one_origin_takes_at_most_half_of_the_slots_by_default() -> None:
    async def scenario() -> tuple[int, int, bool]:
        share = FairShare(8)
        release = asyncio.Event()
        started: list[str] = []

        async def hold(origin: str) -> None:
            async with share.slot(origin):
                started.append(origin)
                await release.wait()

        slow = [asyncio.create_task(hold("http://drip")) for _ in range(20)]
        await asyncio.sleep(0.01)
        other = asyncio.create_task(hold("http://legit"))
        await asyncio.sleep(0.01)
        held = share.held("http://drip"), share.held("http://legit")
        got_in = "http://legit" in started
        release.set()
        await asyncio.gather(*slow, other)
        return *held, got_in

    drip, legit, got_in = run(scenario())
    assert (drip, legit, got_in) == (4, 1, True)


def test_a_freed_slot_goes_to_the_origin_holding_fewest_and_fifo_within_one_origin() -> None:
    async def scenario() -> list[str]:
        share = FairShare(2, per_origin=2)
        order: list[str] = []
        gates = {name: asyncio.Event() for name in ("a1", "a2")}

        async def first(name: str) -> None:
            async with share.slot("a"):
                await gates[name].wait()

        async def later(origin: str, name: str) -> None:
            async with share.slot(origin):
                order.append(name)

        holders = [asyncio.create_task(first("a1")), asyncio.create_task(first("a2"))]
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(later("a", "a3")), asyncio.create_task(later("a", "a4"))]
        await asyncio.sleep(0)
        waiters.append(asyncio.create_task(later("b", "b1")))  # arrives last, holds nothing: goes first
        await asyncio.sleep(0)
        gates["a1"].set()
        await asyncio.sleep(0.01)
        gates["a2"].set()
        await asyncio.gather(*holders, *waiters)
        return order

    assert run(scenario()) == ["b1", "a3", "a4"]


def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    async def scenario() -> tuple[int, int]:
        share = FairShare(1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with share.slot("o"):
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(hold()) for _ in range(5)]
        await asyncio.sleep(0)
        for waiter in waiters:
            waiter.cancel()
        gate.set()
        await asyncio.gather(holder, *waiters, return_exceptions=True)
        return share.busy, share.waiting

    assert run(scenario()) == (0, 0)


def test_a_waiter_cancelled_as_it_is_granted_hands_the_slot_on() -> None:
    async def scenario() -> tuple[list[str], int]:
        share = FairShare(1)
        done: list[str] = []
        tasks: dict[str, asyncio.Task[None]] = {}

        async def hold(name: str) -> None:
            async with share.slot("o"):
                await asyncio.sleep(0.01)
                done.append(name)

        async def first() -> None:
            await hold("first")
            tasks["doomed"].cancel()  # in the same step as the release granted it the slot

        tasks["first"] = asyncio.create_task(first())
        await asyncio.sleep(0)
        tasks["doomed"] = asyncio.create_task(hold("doomed"))
        tasks["last"] = asyncio.create_task(hold("last"))
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return done, share.busy

    assert run(scenario()) == (["first", "last"], 0)


# --- minimum transfer rate -----------------------------------------------------------------


def test_the_default_floor_is_16_kib_per_second_over_30_seconds_after_30_seconds_grace() -> None:
    assert TransferFloor(16384, 30.0, 30.0) == ratefloor.DEFAULT
    assert ratefloor.current() == ratefloor.DEFAULT
    assert "16 KiB/s over 30s" in ratefloor.DEFAULT.watch().explain()


def test_the_deadline_moves_only_when_a_whole_window_of_bytes_arrived() -> None:
    watch = TransferFloor(bytes_per_second=100, window_seconds=1, grace_seconds=2).watch()
    first = watch.deadline
    assert first is not None and first == pytest.approx(time.monotonic() + 3, abs=0.1)
    watch.add(99)
    assert watch.deadline == first  # a drip does not buy time
    time.sleep(0.01)
    watch.add(1)
    assert watch.deadline == first  # a block within the grace keeps the grace deadline
    watch.excuse(5)
    assert watch.deadline == pytest.approx(first + 5)


def test_a_floor_of_zero_is_off() -> None:
    assert TransferFloor(bytes_per_second=0).watch().deadline is None


def test_a_paced_read_that_drips_is_stopped_at_grace_plus_window_naming_the_rate() -> None:
    floor = TransferFloor(bytes_per_second=1000, window_seconds=0.2, grace_seconds=0.1)

    async def scenario() -> tuple[float, str, int]:
        started = time.monotonic()
        with pytest.raises(ratefloor.TooSlow) as slow:
            async with ratefloor.paced(floor) as watch:
                while True:
                    await asyncio.sleep(0.01)
                    watch.add(1)  # 100 B/s against a floor of 1000
        return time.monotonic() - started, str(slow.value), watch.received

    seconds, text, received = run(scenario())
    assert 0.25 < seconds < 0.6
    assert "minimum rate of 1000 B/s over 0.2s" in text and "runner.min_transfer_bytes_per_second" in text
    assert received > 10


def test_a_paced_read_at_the_floor_and_its_excused_waits_are_not_stopped() -> None:
    floor = TransferFloor(bytes_per_second=1000, window_seconds=0.1, grace_seconds=0)

    async def scenario() -> int:
        async with ratefloor.paced(floor) as watch:
            for _ in range(20):
                await asyncio.sleep(0.01)
                watch.add(50)  # 5000 B/s
            with watch.excused():
                await asyncio.sleep(0.3)  # our own bandwidth cap, say
            watch.add(1)
        return watch.received

    assert run(scenario()) == 1001


def test_the_floor_applies_to_the_task_that_uses_it() -> None:
    slow = TransferFloor(bytes_per_second=1)
    with ratefloor.using(slow):
        assert ratefloor.current() is slow
    assert ratefloor.current() is ratefloor.DEFAULT


# --- de-duplication --------------------------------------------------------------------------


def test_authority_is_a_keyed_hash_that_never_contains_the_secret() -> None:
    dedupe = Deduper()
    robot = dedupe.authority_of("Bearer s3cr3t", Credentials("robot", "hunter2"))
    assert robot == dedupe.authority_of("Bearer s3cr3t", Credentials("robot", "hunter2"))
    assert robot != dedupe.authority_of("Bearer other", Credentials("robot", "hunter2"))
    assert robot != Deduper().authority_of("Bearer s3cr3t", Credentials("robot", "hunter2"))  # per process
    assert "s3cr3t" not in robot and "hunter2" not in robot
    assert dedupe.authority("ab", "c") != dedupe.authority("a", "bc")


def test_a_caller_with_another_authority_does_not_inherit_the_failure() -> None:
    async def scenario() -> tuple[list[str], int]:
        dedupe, calls = Deduper(window=60), []
        gate = asyncio.Event()

        async def refused() -> int:
            calls.append("refused")
            await gate.wait()
            raise PreheatError("401 for the first caller's token")

        async def fine() -> int:
            calls.append("fine")
            return 7

        first = asyncio.create_task(dedupe.run(("t", "src", "d"), refused, authority="A"))
        await asyncio.sleep(0)
        second = asyncio.create_task(dedupe.run(("t", "src", "d"), fine, authority="B"))
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(PreheatError):
            await first
        return calls, await second

    calls, size = run(scenario())
    assert calls == ["refused", "fine"] and size == 7


def test_a_caller_with_another_authority_uses_bytes_that_arrived_from_the_same_source() -> None:
    """Harbor mints a token per task: tasks of one repository still warm a shared layer once."""

    async def scenario() -> tuple[int, list[int]]:
        dedupe, calls = Deduper(window=0), []

        async def warm() -> int:
            calls.append(1)
            await asyncio.sleep(0.05)
            return 9

        sizes = await asyncio.gather(*(dedupe.run(("t", "src", "d"), warm, authority=f"task-{n}") for n in range(5)))
        return len(calls), sizes

    assert run(scenario()) == (1, [9] * 5)


def test_a_caller_with_the_same_authority_shares_the_failure() -> None:
    async def scenario() -> list[str]:
        dedupe, calls = Deduper(window=60), []
        gate = asyncio.Event()

        async def refused() -> int:
            calls.append("x")
            await gate.wait()
            raise PreheatError("corrupt")

        tasks = [asyncio.create_task(dedupe.run(("t", "src", "d"), refused, authority="A")) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, PreheatError) for r in results)
        return calls

    assert run(scenario()) == ["x"]


def test_a_joiner_whose_leader_was_cancelled_fetches_for_itself() -> None:
    async def scenario() -> int:
        dedupe = Deduper(window=60)

        async def forever() -> int:
            await asyncio.sleep(3600)
            return 0

        async def quick() -> int:
            return 5

        leader = asyncio.create_task(dedupe.run(("k",), forever, authority="A"))
        await asyncio.sleep(0)
        joiner = asyncio.create_task(dedupe.run(("k",), quick, authority="A"))
        await asyncio.sleep(0)
        leader.cancel()
        return await joiner

    assert run(scenario()) == 5


def test_every_fetch_runs_under_the_dedupers_floor() -> None:
    floor = TransferFloor(bytes_per_second=1, window_seconds=1, grace_seconds=0)

    async def scenario() -> TransferFloor:
        seen: list[TransferFloor] = []

        async def warm() -> int:
            seen.append(ratefloor.current())
            return 1

        await Deduper(floor=floor).run(("k",), warm)
        return seen[0]

    assert run(scenario()) is floor
