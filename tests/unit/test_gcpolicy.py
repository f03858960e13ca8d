"""gateway/gcpolicy.py: the collector after start-up: what it skips, how often it collects, how it is timed."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Histogram

from gateway.gcpolicy import YOUNG_GENERATION_THRESHOLD, CollectorPolicy


def test_after_start_up_the_collector_skips_what_exists_collects_young_objects_less_often_and_is_timed() -> None:
    registry = CollectorRegistry()
    pauses = Histogram("pauses", "", ["generation"], registry=registry)
    policy, before = CollectorPolicy(pauses), gc.get_threshold()

    policy.settle()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
        gc.collect(0)
        assert registry.get_sample_value("pauses_count", {"generation": "0"}) == 1
        assert registry.get_sample_value("pauses_count", {"generation": "2"}) == 0  # the one at start-up is not counted
    finally:
        policy.restore()

    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    gc.collect(0)
    assert registry.get_sample_value("pauses_count", {"generation": "0"}) == 1
