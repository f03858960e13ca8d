"""A minimum transfer rate: a source that drips cannot hold a fetch slot forever.

The per-read timeout (30 s) trips only when nothing arrives for 30 s; a registry sending one
byte a second never trips it and keeps a slot, a connection and a job busy for as long as it
likes. A :class:`TransferFloor` asks every body read through :func:`adapters.streaming.drain` for
``bytes_per_second × window_seconds`` bytes in every ``window_seconds`` after a
``grace_seconds`` start (slow first bytes of a cold cache); a read that falls behind fails
with a message naming the rate.

The floor in force is the one of the current task (:func:`using`), so the gateway's setting
reaches every fetch without threading it through every call; :data:`DEFAULT` applies
elsewhere. ``bytes_per_second = 0`` turns it off. Any reader can be held to it with
:func:`paced`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

DEFAULT_BYTES_PER_SECOND = 16 * 1024
DEFAULT_WINDOW_SECONDS = 30.0
DEFAULT_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class TransferFloor:
    """At least ``bytes_per_second`` averaged over each ``window_seconds``, after ``grace_seconds``."""

    bytes_per_second: float = DEFAULT_BYTES_PER_SECOND
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    grace_seconds: float = DEFAULT_GRACE_SECONDS

    def __post_init__(self) -> None:
        if self.bytes_per_second < 0:
            raise ValueError("bytes_per_second must not be negative (0 turns the floor off)")
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if self.grace_seconds < 0:
            raise ValueError("grace_seconds must not be negative")

    @property
    def enabled(self) -> bool:
        return self.bytes_per_second > 0

    def watch(self) -> RateWatch:
        """Start watching one body read, now."""
        return RateWatch(self)

    def describe(self) -> str:
        return f"{_rate(self.bytes_per_second)} over {self.window_seconds:g}s"


DEFAULT = TransferFloor()
_current: ContextVar[TransferFloor] = ContextVar("transfer_floor", default=DEFAULT)


def current() -> TransferFloor:
    """The floor in force for the running task."""
    return _current.get()


@contextmanager
def using(floor: TransferFloor | None) -> Iterator[None]:
    """Run the block (in this task) under ``floor``; ``None`` keeps the one in force."""
    if floor is None:
        yield
        return
    token = _current.set(floor)
    try:
        yield
    finally:
        _current.reset(token)


class TooSlow(Exception):
    """A read fell below its floor; ``str(error)`` says so, naming the rate and the config key."""


@asynccontextmanager
async def paced(floor: TransferFloor | None = None) -> AsyncIterator[RateWatch]:
    """Hold the reads in the block to ``floor`` (the task's by default): report each chunk with
    :meth:`RateWatch.add`, wrap deliberate waits in :meth:`RateWatch.excused`. A read that falls
    behind is cancelled and the block raises :class:`TooSlow`."""
    watch = (floor or current()).watch()
    try:
        async with asyncio.timeout_at(watch.deadline) as timer:
            watch._timer = timer
            yield watch
    except TimeoutError:
        if not watch.expired:
            raise
        raise TooSlow(watch.explain()) from None


class RateWatch:
    """The deadline by which one read must have received its next ``rate × window`` bytes.

    Bytes arrive in blocks of ``rate × window``; each block must complete within ``window``
    seconds of the previous one (the first within ``grace + window`` of the start). Time spent
    deliberately waiting (a bandwidth cap) is excused with :meth:`excuse`.
    """

    def __init__(self, floor: TransferFloor) -> None:
        self.floor = floor
        self.block = floor.bytes_per_second * floor.window_seconds
        now = time.monotonic()
        self.started = now
        self._anchor = now + floor.grace_seconds
        self._pending = 0.0
        self._timer: asyncio.Timeout | None = None
        self.received = 0

    @property
    def deadline(self) -> float | None:
        """``loop.time()``-compatible deadline (monotonic seconds), or ``None`` without a floor."""
        if not self.floor.enabled:
            return None
        return self._anchor + self.floor.window_seconds

    @property
    def expired(self) -> bool:
        """The deadline has passed (what a timeout at the deadline means)."""
        deadline = self.deadline
        return deadline is not None and time.monotonic() >= deadline - 0.001

    def add(self, nbytes: int) -> None:
        self.received += nbytes
        if not self.floor.enabled:
            return
        self._pending += nbytes
        if self._pending >= self.block:
            self._pending %= self.block
            self._anchor = max(self._anchor, time.monotonic())
            self._reschedule()

    def excuse(self, seconds: float) -> None:
        """Do not count ``seconds`` the reader spent waiting on purpose."""
        self._anchor += max(0.0, seconds)
        self._reschedule()

    @contextmanager
    def excused(self) -> Iterator[None]:
        """The block's time does not count (a reader waiting on its own bandwidth cap)."""
        if self._timer is not None:
            self._timer.reschedule(None)
        paused = time.monotonic()
        try:
            yield
        finally:
            self.excuse(time.monotonic() - paused)

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.reschedule(self.deadline)

    def explain(self) -> str:
        """Why the read was stopped, for a row a person reads."""
        elapsed = time.monotonic() - self.started
        return (
            f"the transfer fell below the minimum rate of {self.floor.describe()} "
            f"({self.received} bytes in {elapsed:.0f}s; runner.min_transfer_bytes_per_second): the source is too slow "
            "or stalled; check it and its network, or lower the floor"
        )


def _rate(bytes_per_second: float) -> str:
    if bytes_per_second >= 1024 * 1024:
        return f"{bytes_per_second / 1048576:g} MiB/s"
    if bytes_per_second >= 1024:
        return f"{bytes_per_second / 1024:g} KiB/s"
    return f"{bytes_per_second:g} B/s"
