"""Small pieces with sharp edges: durations, de-duplication, redaction, JSON depth, the Open API parser."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from prometheus_client import CollectorRegistry, Histogram

from adapters.dedupe import Deduper
from adapters.durations import parse_duration
from gateway.config import ConfigError, build_config
from gateway.dialects.dragonfly import parse_create
from gateway.gcpolicy import YOUNG_GENERATION_THRESHOLD, CollectorPolicy
from gateway.httputil import json_depth
from gateway.jobs import InvalidRequest
from gateway.logs import RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "seconds"), [("90d", 7776000), ("30m", 1800), ("15s", 15), ("500ms", 0.5), (12, 12.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_says_what_a_good_one_looks_like() -> None:
    with pytest.raises(ValueError, match="like 500ms, 30s, 15m, 12h or 90d"):
        parse_duration("soon")


def test_a_value_outside_a_fixed_set_is_reported_with_the_allowed_ones() -> None:
    mirror = {"id": 1, "name": "m", "adapter": "mirror", "endpoints": [{"url": "http://127.0.0.1:5000"}]}
    with pytest.raises(ConfigError) as raised:
        build_config({"auth": {"mode": "sometimes"}, "clusters": [{**mirror, "verify": 7}]}, source="test")

    assert raised.value.errors == [
        "auth.mode: invalid enum value 'sometimes' (allowed: none, required)",
        "clusters[0].verify: expected str, got int (allowed: digest, size)",
    ]


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


@pytest.mark.parametrize(
    "secret_text",
    [
        "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig",
        "token phg_AbCdEf0123456789",
        "password=hunter2",
        "https://robot:s3cr3t@harbor.example.com/v2/",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_log_redaction_hides_secrets(secret_text: str) -> None:
    record = logging.makeLogRecord({"msg": "failed with %s", "args": (secret_text,)})
    RedactingFilter().filter(record)
    for secret in ("eyJhbGciOiJSUzI1NiJ9", "phg_AbCdEf", "hunter2", "s3cr3t", "dXNlcjpwYXNz"):
        assert secret not in record.getMessage()
    assert "<redacted>" in redact(secret_text)


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{", "b": [1, {"c": []}]}') == 4
    assert json_depth(b"[" * 1000 + b"]" * 1000) == 1000


def test_harbors_exact_create_body_parses_with_its_nulls_and_zeros() -> None:
    body = (
        b'{"type":"preheat","args":{"type":"image","url":"https://h/v2/library/alpine/manifests/3.19","tag":"",'
        b'"filtered_query_params":"","headers":{"Authorization":"Bearer x"},"scope":"","concurrent_count":0,"timeout":0},'
        b'"scheduler_cluster_ids":null}'
    )
    spec = parse_create(body)
    assert spec.urls == ["https://h/v2/library/alpine/manifests/3.19"] and spec.cluster_ids is None
    assert spec.headers == {"Authorization": "Bearer x"} and spec.timeout_seconds == 0 and spec.scope == ""


def test_scripts_camel_case_and_nanosecond_timeouts_parse_too() -> None:
    spec = parse_create(
        b'{"type":"preheat","args":{"type":"file","url":"https://e/f","filteredQueryParams":"Expires&Signature","timeout":90000000000,"platform":"linux/arm64"}}'
    )
    assert spec.type == "file" and spec.filtered_query_params == ["Expires", "Signature"]
    assert spec.timeout_seconds == 90 and spec.platform == "linux/arm64"


def test_public_args_never_carry_secrets() -> None:
    spec = parse_create(
        b'{"type":"preheat","args":{"url":"https://h/v2/a/manifests/b","headers":{"Authorization":"Bearer t"},"username":"u","password":"p"}}'
    )
    public = spec.public()
    assert public["headers"] == {} and public["password"] == "" and public["username"] == "u"


def test_unsupported_job_types_are_named() -> None:
    with pytest.raises(InvalidRequest, match="job type 'sync_peers'"):
        parse_create(b'{"type":"sync_peers","args":{"url":"x"}}')


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


def test_a_mistyped_nested_key_is_reported_once() -> None:
    bad = {"registries": {"credentials": [{"host": "h", "username": "u", "passwrd": "x"}]}}
    with pytest.raises(ConfigError) as error:
        build_config(bad, source="test")
    assert error.value.errors == ["registries.credentials[0].passwrd: unknown key"]
