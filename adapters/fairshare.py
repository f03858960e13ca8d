"""Fetch slots shared fairly between origins, so one registry cannot starve the others.

The gateway bounds how many requests it has open to registries at once. With one FIFO
semaphore, six jobs against a registry that drips one byte a second took every slot and a
job on another registry waited with nothing sent. :class:`FairShare` keeps the total cap and
adds two rules:

- no origin (``scheme://host:port``) holds more than ``per_origin`` slots (half the total by
  default), so a slow or hostile origin leaves the rest to everyone else;
- a freed slot goes to the waiting origin that holds the fewest slots (the one waiting longest
  among equals): round-robin between origins, FIFO within one origin.

Waiting is bounded by the total and the per-origin cap, and cancellation-safe: a waiter
cancelled before or while it is granted a slot never leaks it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

DEFAULT_SHARE = 0.5
"""The part of all slots one origin may hold when ``per_origin`` is not given."""


@dataclass(eq=False)
class _Waiter:
    origin: str
    order: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairShare:
    """``total`` request slots, at most ``per_origin`` of them to one origin; see the module docstring."""

    def __init__(self, total: int, per_origin: int | None = None) -> None:
        if total < 1:
            raise ValueError("total must be at least 1")
        self.total = total
        self.per_origin = max(1, min(total, per_origin if per_origin is not None else int(total * DEFAULT_SHARE)))
        self._held: Counter[str] = Counter()
        self._queues: dict[str, deque[_Waiter]] = {}
        self._busy = 0
        self._order = itertools.count()

    def held(self, origin: str) -> int:
        """Slots ``origin`` holds now."""
        return self._held[origin]

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    @asynccontextmanager
    async def slot(self, origin: str) -> AsyncIterator[None]:
        """Hold one slot for ``origin`` for the duration of the block."""
        await self._acquire(origin)
        try:
            yield
        finally:
            self._release(origin)

    def _free_for(self, origin: str) -> bool:
        return self._busy < self.total and self._held[origin] < self.per_origin

    async def _acquire(self, origin: str) -> None:
        if self._free_for(origin) and not self._queues.get(origin):
            self._take(origin)
            return
        waiter = _Waiter(origin, next(self._order))
        self._queues.setdefault(origin, deque()).append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._release(origin)  # granted as we were cancelled: hand the slot on
            else:
                self._forget(waiter)
            raise

    def _take(self, origin: str) -> None:
        self._held[origin] += 1
        self._busy += 1

    def _release(self, origin: str) -> None:
        self._held[origin] -= 1
        if self._held[origin] <= 0:
            del self._held[origin]
        self._busy -= 1
        self._dispatch()

    def _forget(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.origin)
        if queue is not None:
            with suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self._queues[waiter.origin]

    def _dispatch(self) -> None:
        """Grant free slots: the eligible origin holding fewest first, then the longest waiting."""
        while self._busy < self.total:
            eligible = [
                (self._held[o], q[0].order, o) for o, q in self._queues.items() if q and self._held[o] < self.per_origin
            ]
            if not eligible:
                return
            origin = min(eligible)[2]
            queue = self._queues[origin]
            waiter = queue.popleft()
            if not queue:
                del self._queues[origin]
            if waiter.granted.done():  # cancelled while queued
                continue
            self._take(origin)
            waiter.granted.set_result(None)
