"""Hostile input finds no 5xx: a corpus of bad bodies and URLs, and a property-based fuzz.

These run the app in-process (Starlette's TestClient) so thousands of requests stay fast;
the gateway must answer every one with a 4xx and a message, and keep serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import build_config

ROUTES = [
    ("POST", "/oapi/v1/jobs"),
    ("PATCH", "/oapi/v1/jobs/1"),
    ("POST", "/preheats"),
    ("POST", "/registry/notifications"),
]
SECRET = "phg_the-secret-token-must-never-echo"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("hostile")
    config = build_config(
        {
            "server": {"state_dir": str(tmp / "state"), "create_rate_per_second": 0},
            "auth": {"mode": "none"},
            "registries": {"allow": ["127.0.0.1"]},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(tmp / "cache")}],
        },
        source="test",
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_refused_politely(response_status: int, body: bytes) -> None:
    assert 400 <= response_status < 500, (response_status, body[:300])
    assert json.loads(body)["errors"]
    assert b"Traceback" not in body and SECRET.encode() not in body


CORPUS: list[bytes] = [
    b"",
    b"null",
    b"0",
    b'"text"',
    b"[]",
    b"{",
    b"}",
    b"\xff\xfe",
    b'{"type": "preheat", "args": null}',
    b'{"type": 1, "args": {}}',
    b'{"type": "preheat", "args": {"url": 12}}',
    b'{"type": "preheat", "args": {"headers": [1]}}',
    b'{"type": "preheat", "args": {"url": "http://127.0.0.1/v2/a/manifests/b", "timeout": 1e400}}',
    b'{"type": "preheat", "args": {"url": "http://127.0.0.1/v2/a/manifests/b", "concurrent_count": 99999999999999999999999}}',
    b'{"type": "preheat", "scheduler_cluster_ids": [-1], "args": {"url": "http://127.0.0.1/v2/a/manifests/b"}}',
    b'{"type": "preheat", "args": {"url": "http://127.0.0.1/v2/a/manifests/b", "headers": {"Authorization": "'
    + SECRET.encode()
    + b'"}, "scope": "x"}}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"type": "preheat", "args": {"type": "file", "urls": [' + b",".join([b'"http://127.0.0.1/f"'] * 5000) + b"]}}",
    b'{"Events": "nope"}',
    b'{"Events": [{"Action": "push", "Target": null}]}',
    b'{"Events": [{"Action": "push", "Target": {"Url": "gopher://x", "MediaType": "application/vnd.docker.distribution.manifest.v2+json"}}]}',
    b'{"type": "image", "url": "file:///etc/passwd"}',
    b'{"type": "image", "url": "http://169.254.169.254/v2/a/manifests/b"}',
] + [
    json.dumps({"type": "preheat", "args": {"type": "image", "url": url}}).encode()
    for url in (
        "http://169.254.169.254/v2/latest/manifests/meta-data",
        "http://[::1]:5000/v2/a/manifests/b",
        "http://evil.example/v2/a/manifests/b",
        "javascript:alert(1)",
        "http://127.0.0.1:99999/v2/a/manifests/b",
        "http://user:pass@127.0.0.1/v2/a/manifests/b@x",
        "http://127.0.0.1/v2/../../etc/manifests/b",
        "http://" + "a" * 70000 + "/v2/a/manifests/b",
    )
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_corpus_body_gets_a_4xx_with_a_message(client: TestClient, method: str, path: str) -> None:
    for body in CORPUS:
        response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
        if path == "/oapi/v1/jobs" and response.status_code == 200:
            pytest.fail(f"accepted a hostile body: {body[:200]!r}")
        if path != "/oapi/v1/jobs" and response.status_code in (200, 202):
            continue  # a dialect may accept-and-ignore an event it does not act on
        assert_refused_politely(response.status_code, response.content)
    assert client.get("/livez").status_code == 200


def test_huge_bodies_are_refused_with_413(client: TestClient) -> None:
    for method, path in ROUTES:
        response = client.request(method, path, content=b"{" + b" " * (3 << 20) + b"}")
        assert response.status_code == 413, (path, response.status_code)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "type",
        "url",
        "urls",
        "tag",
        "headers",
        "scope",
        "platform",
        "timeout",
        "username",
        "password",
        "filtered_query_params",
        "filteredQueryParams",
        "piece_length",
        "concurrent_count",
        "ips",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    args=st.dictionaries(field_names, json_values, max_size=8),
    top=st.dictionaries(st.sampled_from(["type", "scheduler_cluster_ids", "bio"]), json_values),
)
def test_fuzzed_create_requests_never_crash(
    client: TestClient, args: dict[str, object], top: dict[str, object]
) -> None:
    body = {"type": "preheat", **top, "args": args}
    response = client.post("/oapi/v1/jobs", json=body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert response.json()["errors"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, path=st.sampled_from([p for _, p in ROUTES]))
def test_fuzzed_bodies_on_every_route_never_crash(client: TestClient, body: object, path: str) -> None:
    method = dict((p, m) for m, p in ROUTES)[path]
    response = client.request(method, path, json=body)
    assert response.status_code < 500, (path, body, response.text)


def test_the_openapi_document_describes_every_open_api_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    described = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    routes = {
        (method, route.path.replace("{id:int}", "{id}"))
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route) and (route.path.startswith("/oapi/") or route.path == "/healthy")
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert described == routes
    create = document["components"]["schemas"]["PreheatArgs"]["properties"]
    assert {"url", "headers", "scope", "timeout", "filteredQueryParams"} <= set(create)


def test_metrics_and_request_ids(client: TestClient) -> None:
    client.post("/oapi/v1/jobs", content=b"{")
    response = client.get("/livez", headers={"X-Request-Id": "abc-123"})
    metrics = client.get("/metrics").text

    assert response.headers["x-request-id"] == "abc-123"
    assert client.get("/livez", headers={"X-Request-Id": "bad id\n"}).headers["x-request-id"] != "bad id\n"
    for name in (
        "preheat_gateway_http_request_duration_seconds_bucket",
        "preheat_gateway_jobs{",
        "preheat_gateway_store_duration_seconds",
        "preheat_gateway_blob_fetches_total",
        'preheat_gateway_blob_checks_total{check="sha256"}',
        "preheat_gateway_retries_total",
        "preheat_gateway_cluster_up",
        "# TYPE preheat_gateway_gc_pause_seconds histogram",  # timed only in the serve command's process
    ):
        assert name in metrics, name
    assert 'route="/oapi/v1/jobs"' in metrics and "phg_" not in metrics


def test_job_creation_is_rate_limited_per_credential(tmp_path: Path) -> None:
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path / "state"), "create_rate_per_second": 1, "create_burst": 2},
            "auth": {"mode": "none"},
            "clusters": [{"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")}],
        },
        source="test",
    )
    body = {"type": "preheat", "args": {"type": "image", "url": "https://registry.example.com/v2/a/manifests/b"}}
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        statuses = [client.post("/oapi/v1/jobs", json=body) for _ in range(4)]
    assert [r.status_code for r in statuses][2:] == [429, 429]
    assert int(statuses[2].headers["retry-after"]) >= 1 and "create_rate_per_second" in statuses[2].json()["errors"]
