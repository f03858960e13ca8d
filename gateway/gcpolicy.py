"""Garbage collection tuned for an event loop that serves Harbor, and its pauses measured.

CPython's cyclic collector runs on the event loop's thread and stops every request while it
works. With the default thresholds (a young collection every 700 net container allocations,
an older one every 10 of those, a full one when the old generation has grown by a quarter)
the gateway collected 474 times during the thousand-tag benchmark (own core), 1.3 s in all;
each of its 3 full collections walked every object in the process for about 100 ms, and a
create that arrived then waited for it.

Two changes, once the gateway has started and before it serves: everything built so far
(modules, the app, the adapters, the store) is moved out of the collector's sight with
:func:`gc.freeze`, so a full collection walks only what the gateway allocated since; and the
young generation is collected every 50,000 net allocations. The serving path makes no
cyclic garbage (``adapters.transport`` unties httpx's responses), so reference counting frees
nearly everything and the count seldom gets there: in the same benchmark, no collection at
all, and a peak RSS of 79 MiB instead of 87 (README, Benchmarks).
``preheat_gateway_gc_pause_seconds`` shows what collections cost in production.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

YOUNG_GENERATION_THRESHOLD = 50_000


class CollectorPolicy:
    """Applies the tuning on :meth:`settle` and times every collection into ``pauses`` until :meth:`restore`."""

    def __init__(self, pauses: Histogram) -> None:
        self._by_generation = [pauses.labels(str(generation)) for generation in range(3)]
        self._started = 0.0
        self._thresholds: tuple[int, int, int] | None = None

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)

    def settle(self) -> None:
        """Call once start-up is done, before serving: what exists now lives as long as the process.
        Collections are timed from here on (this first one stops nothing: nothing is served yet)."""
        self._thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *self._thresholds[1:])
        gc.callbacks.append(self._timed)

    def restore(self) -> None:
        """Undo :meth:`settle` (the gateway stops; in tests, the process goes on)."""
        if self._thresholds is None:
            return
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()
        gc.callbacks.remove(self._timed)
        self._thresholds = None
