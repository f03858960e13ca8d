"""gateway/dialects/openapi.py: the create bodies Harbor and scripts send, what is shown of them, what is refused."""

from __future__ import annotations

import pytest

from gateway.dialects.openapi import parse_create
from gateway.jobs import InvalidRequest


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
