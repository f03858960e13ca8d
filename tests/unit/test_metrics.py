"""The gateway's Prometheus metrics: what an operator's scrape reads."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import HTTP_BUCKETS, LoopHistogram

OBSERVATIONS = [0.0, 0.0004, 0.001, 0.0011, 0.003, 0.01, 0.2, 0.9999, 1.0, 4.2, 5.0, 7.5, 3600.0]


def samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    exposition = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())), round(sample.value, 9))
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_a_loop_histogram_exposes_what_prometheus_clients_histogram_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("latency_seconds", "Latency.", ["route", "status"], buckets=HTTP_BUCKETS, registry=ours)
    stock = Histogram("latency_seconds", "Latency.", ["route", "status"], buckets=HTTP_BUCKETS, registry=theirs)
    for labels in (("/a", "200"), ("/b", "404")):
        for amount in OBSERVATIONS if labels[0] == "/a" else OBSERVATIONS[:3]:
            loop.labels(*labels).observe(amount)
            stock.labels(*labels).observe(amount)

    assert samples(ours) == samples(theirs)
    assert ("latency_seconds_bucket", (("le", "0.001"), ("route", "/a"), ("status", "200")), 3.0) in samples(ours)


def test_a_loop_histogram_refuses_the_wrong_number_of_labels() -> None:
    histogram = LoopHistogram("x_seconds", "X.", ["route"], buckets=(1.0,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("/a", "GET")


def test_an_unobserved_loop_histogram_is_listed_without_samples() -> None:
    registry = CollectorRegistry()
    LoopHistogram("idle_seconds", "Idle.", ["route"], buckets=(1.0,), registry=registry)
    assert "# TYPE idle_seconds histogram" in generate_latest(registry).decode()
