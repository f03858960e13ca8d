"""Garbage collection tuned for an event loop that serves Harbor, and its pauses timed.

The cyclic collector stops the event loop while it runs. Once start-up is done, what exists
is frozen out of its sight and young collections run 70 times less often; the serving path
makes almost no cyclic garbage, so reference counting frees nearly everything. Applied by the
``serve`` command only (docs/design.md, "Process tuning"); ``preheat_gateway_gc_pause_seconds``
shows what collections cost.
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
