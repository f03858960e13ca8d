"""Prometheus metrics: what operators graph and alert on.

Every label is bounded (clusters and routes come from the config and the route table, never
from a request), and no label or value ever carries a secret. Counters the adapters and the
auth layer keep themselves are read at scrape time rather than pushed on the hot path.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

PREFIX = "preheat_gateway"
TASK_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
CLIENT_CLOSED = 499
"""The status label of a request whose client went away before it was complete (nginx's convention)."""
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_created = Counter(
            f"{PREFIX}_jobs_created_total", "Jobs accepted, by dialect or client.", ["source"], registry=r
        )
        self.jobs_finished = Counter(
            f"{PREFIX}_jobs_finished_total", "Jobs that ended, by source and state.", ["source", "state"], registry=r
        )
        self.jobs = Gauge(f"{PREFIX}_jobs", "Jobs in the store by state.", ["state"], registry=r)
        self.task_duration = Histogram(
            f"{PREFIX}_task_duration_seconds",
            "Cluster task run time.",
            ["cluster", "state"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.bytes_warmed = Counter(
            f"{PREFIX}_bytes_warmed_total", "Bytes read from sources while warming.", ["cluster"], registry=r
        )
        self.blobs = Counter(
            f"{PREFIX}_blobs_total", "Blobs or files warmed or failed, per host row.", ["cluster", "result"], registry=r
        )
        self.http_duration = LoopHistogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request latency.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.store_duration = LoopHistogram(
            f"{PREFIX}_store_duration_seconds",
            "Job store call latency.",
            ["operation"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            f"{PREFIX}_rate_limited_total", "Job creations refused by the rate limit.", registry=r
        )
        self.loop_lag = Histogram(
            f"{PREFIX}_event_loop_lag_seconds",
            "How late a timer fires: high values mean the API waits behind warming work (lower runner.workers).",
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.gc_pauses = Histogram(
            f"{PREFIX}_gc_pause_seconds",
            "How long each garbage collection stopped the event loop, by generation (2: a full collection).",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=r,
        )

    async def watch_loop_lag(self, interval: float = 0.25) -> None:
        """Measure, until cancelled, how late the event loop runs a timer: the delay every request also sees."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, time.perf_counter() - started - interval))

    def watch(self, collect: Callable[[], Iterable[Any]]) -> None:
        """Register values read at scrape time (counters kept elsewhere)."""

        class _Callback(Collector):
            def collect(self) -> Iterable[Any]:
                return collect()

        self.registry.register(_Callback())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Tally:
    """One label set's observations: a count per bucket (not cumulative) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf's
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= le
        self.sum += amount

    def cumulative(self) -> list[tuple[str, float]]:
        counts = list(itertools.accumulate(self.counts))
        return [*zip(map(floatToGoString, self.bounds), counts[:-1], strict=True), ("+Inf", counts[-1])]


class LoopHistogram(Collector):
    """A labelled histogram for what is observed on the event loop's thread alone (every request,
    every store call): an observation is a bisect and two additions where prometheus_client's
    ``Histogram`` takes a lock per value it updates (docs/design.md, "Status polling"); the
    exposition is prometheus_client's, without ``_created``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(sorted(float(bound) for bound in buckets))
        self._tallies: dict[tuple[str, ...], Tally] = {}
        registry.register(self)

    def labels(self, *values: str) -> Tally:
        tally = self._tallies.get(values)
        if tally is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            tally = self._tallies[values] = Tally(self.bounds)
        return tally

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, tally in list(self._tallies.items()):
            family.add_metric(list(values), tally.cumulative(), tally.sum)
        yield family


LabelValues = TypeVar("LabelValues", bound=tuple[str, ...])
"""One sample's label values, in the order of its family's label names."""


def counter_family(
    name: str, documentation: str, values: Mapping[LabelValues, float], labels: list[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def gauge_family(
    name: str, documentation: str, values: Mapping[LabelValues, float], labels: list[str]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


class MirrorStats:
    """What the registry mirror served: requests by kind (manifest, blob) and outcome (hit, miss), bytes sent."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bytes_served = 0

    def sent(self, count: int) -> None:
        self.bytes_served += count

    def families(self) -> list[Any]:
        """Its counters, read at scrape time."""
        requests = {
            (kind, outcome): float(self.requests[kind, outcome])
            for kind in ("manifest", "blob")
            for outcome in ("hit", "miss")
        }
        return [
            counter_family(
                "mirror_requests",
                "Pulls of the registry mirror (/v2/), by kind and outcome: hit (served) or miss (404, "
                "the node falls through to its next host).",
                requests,
                ["kind", "outcome"],
            ),
            counter_family(
                "mirror_bytes_served",
                "Manifest and blob bytes the registry mirror sent.",
                {(): float(self.bytes_served)},
                [],
            ),
        ]
