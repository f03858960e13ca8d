"""What a caller hands in, and what a job stores: the create-time and storage bounds (issue 17, sections 1 and 3).

Every test drives a real gateway process over loopback, with a hostile registry, mirror or
file origin of its own, and reads what came out the other end: the status codes, the API's
and the console's bytes, the SQLite file, the gateway's logs, and every request the hostile
server received.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway.config import RunnerConfig
from tests.conftest import MakeGateway
from tests.gateway_process import GatewayProcess, gateway_config
from tests.security.hostile import (
    Exchange,
    HostileServer,
    image_manifest,
    sha256,
    survival,
)

PASSWORD = "pw-Zq8h3v-never-shown"
SIGNATURE = "sigVALUE-4b1f9e"
CREDENTIAL = "AKIAEXAMPLE-cred"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
USERINFO_MESSAGE = "user-info in URLs is not accepted: send credentials as headers or configure registries.credentials"


# --- small helpers --------------------------------------------------------------------------------


def db_bytes(gateway: GatewayProcess) -> bytes:
    """Every byte of the SQLite store as it is on disk (main file, WAL and shared memory)."""
    state = Path(gateway.config["server"]["state_dir"])
    return b"".join(p.read_bytes() for p in sorted(state.glob("gateway.db*")) if p.is_file())


def db_size(gateway: GatewayProcess) -> int:
    state = Path(gateway.config["server"]["state_dir"])
    return sum(p.stat().st_size for p in state.glob("gateway.db*") if p.is_file())


def job_count(gateway: GatewayProcess) -> int:
    with gateway.client() as client:
        return int(client.get("/oapi/v1/jobs").headers["X-Total-Count"])


def create(gateway: GatewayProcess, args: dict[str, Any], **body: Any) -> httpx.Response:
    with gateway.client() as client:
        return client.post("/oapi/v1/jobs", json={"type": "preheat", "args": args, **body})


@contextmanager
def console(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """A console session signed in with the gateway's job token, as a person at a browser would."""
    with httpx.Client(base_url=f"{gateway.url}/console", timeout=30, follow_redirects=True) as client:
        page = client.get("/signin").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf, page[:500]
        signed_in = client.post("/signin", data={"csrf": csrf[1], "token": gateway.token, "next": ""})
        assert signed_in.status_code == 200 and "Signed in as" in signed_in.text, signed_in.text[:500]
        yield client


@contextmanager
def livez_watch(gateway: GatewayProcess) -> Iterator[list[float]]:
    """The latency of ``GET /livez`` on fresh connections, every 0.2 s, while the block runs."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = httpx.get(f"{gateway.url}/livez", timeout=10).status_code
            except httpx.HTTPError:
                status = 0
            latencies.append(time.monotonic() - started if status == 200 else 99.0)
            stop.wait(0.2)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(15)


def registry_serving(manifest: bytes, blob: Any) -> HostileServer:
    """A registry answering the manifest of ``library/app:1`` and every blob with ``blob(exchange)``."""

    def handle(exchange: Exchange) -> None:
        path = urlsplit(exchange.path).path
        if "/manifests/" in path:
            exchange.send(200, manifest, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(manifest)})
        elif "/blobs/" in path:
            blob(exchange)
        else:
            exchange.json(404, {"errors": [{"code": "NOT_FOUND", "message": "not here"}]})

    return HostileServer(handle)


def layers(count: int) -> list[tuple[str, int]]:
    return [(sha256(f"layer-{i}".encode()), 100 + i) for i in range(count)]


# --- 1. quoted text is capped where it is stored ------------------------------------------------------


def test_a_registry_quoting_a_mebibyte_per_blob_grows_neither_the_status_nor_the_store(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    message = "\x1b[31mblob unknown\r\n\u202e" + "A" * (1 << 20)
    error_body = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": message}]}).encode()
    manifest = image_manifest(b"{}", layers(300))

    def blob(exchange: Exchange) -> None:
        exchange.send(404, error_body, {"Content-Type": "application/json"})

    with registry_serving(manifest, blob) as registry:
        gateway = make_gateway(gateway_config(tmp_path))
        with survival(gateway) as watch, livez_watch(gateway) as livez:
            started = time.monotonic()
            response = create(gateway, {"url": f"{registry.url}/v2/library/app/manifests/1"})
            assert response.status_code == 200, response.text
            job = gateway.wait_job(response.json()["id"], timeout=90)
            took = time.monotonic() - started
            with gateway.client() as client:
                status = client.get(f"/oapi/v1/jobs/{job['id']}")
        watch.assert_survived()

    assert job["state"] == "FAILURE"
    assert took < 60, f"the job took {took:.0f}s to fail"
    assert len(status.content) < 512 * 1024, f"status is {len(status.content)} bytes"
    rows = job["result"]["job_states"][0]["results"][0]["failure_tasks"]
    assert len(rows) == 301  # the config and 300 layers, each one row: all fit in the default 1 MiB
    for row in rows:
        assert len(row["description"]) <= 500, len(row["description"])
        assert not re.search(r"[\x00-\x1f\x7f\u202e]", row["description"]), row["description"][:80]
    error = job["result"]["job_states"][0]["error"]
    assert len(error) <= 1100 and not re.search(r"[\x00-\x1f\x7f]", error), error[:300]
    assert db_size(gateway) < 16 << 20, f"SQLite holds {db_size(gateway)} bytes"
    assert max(livez) < 1.0, f"/livez took {max(livez):.2f}s"
    assert sum(1 for r in registry.received if "/blobs/" in r.path) >= 301


QUOTING_ADAPTER = '''
"""A careless third-party adapter: it fetches each URL and quotes the whole answer, again and again."""
import msgspec
from adapters.base import Adapter, Health, PreheatError, TaskRow


class Options(msgspec.Struct):
    times: int = 300


class QuotingAdapter(Adapter):
    name = "quoting"
    Options = Options
    supports = frozenset({"image", "file"})

    async def preheat(self, request, progress):
        progress.planned(self.options.times, 0)
        text = ""
        for index in range(self.options.times):
            response = await self.context.http.get(request.urls[0])
            text = response.text
            progress.failed(TaskRow(url=f"{request.urls[0]}&n={index}", hostname="node", ip="", description=text))
        raise PreheatError("the origin said: " + text)

    async def check(self):
        return Health(reachable=True, latency_ms=0.0)
'''


def install_quoting_adapter(where: Path) -> dict[str, str]:
    """The adapter above as an installed distribution on ``PYTHONPATH`` (an entry point, no pip, no shared venv)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "quoting_adapter.py").write_text(QUOTING_ADAPTER)
    info = where / "quoting_adapter-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quoting-adapter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[harbor_preheat_gateway.adapters]\nquoting = quoting_adapter:QuotingAdapter\n"
    )
    return {"PYTHONPATH": str(where)}


def test_a_third_party_adapter_quoting_a_mebibyte_is_clipped_where_the_gateway_stores_it(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    body = ("\x1b[2J\r\nInjected: yes\n" + "Q" * (1 << 20)).encode()
    with HostileServer(lambda exchange: exchange.send(500, body, {"Content-Type": "text/plain"})) as origin:
        config = gateway_config(tmp_path, clusters=[{"id": 1, "name": "careless", "adapter": "quoting", "times": 300}])
        gateway = make_gateway(config, env=install_quoting_adapter(tmp_path / "site"))
        with survival(gateway) as watch, livez_watch(gateway) as livez:
            created = create(gateway, {"type": "file", "url": f"{origin.url}/object?X-Amz-Signature={SIGNATURE}"})
            assert created.status_code == 200, created.text
            job = gateway.wait_job(created.json()["id"], timeout=90)
            with gateway.client() as client:
                status = client.get(f"/oapi/v1/jobs/{job['id']}")
                legacy = client.get(f"/preheats/{job['id']}")
        watch.assert_survived()
    assert len(origin.received) == 300  # every quote was read: the bound is the gateway's, not the adapter's
    assert job["state"] == "FAILURE"
    state = job["result"]["job_states"][0]
    rows = state["results"][0]["failure_tasks"]
    assert len(rows) == 300 and state["results"][0].get("failure_tasks_left_out", 0) == 0
    for row in rows:
        assert len(row["description"]) == 500 and row["description"].endswith("…[cut]")
        assert row["description"].startswith("[2J Injected: yes Q")  # controls became spaces: no forged lines
        assert SIGNATURE not in row["url"]
    assert state["error"].startswith("cluster careless (id 1): the origin said: [2J Injected: yes QQQ")
    assert state["error"].endswith("…[cut]") and len(state["error"]) < 1100
    assert len(status.content) < 300 * 1024, f"status is {len(status.content)} bytes"
    assert len(legacy.content) < 4 * 1024
    assert db_size(gateway) < 8 << 20, f"SQLite holds {db_size(gateway)} bytes"
    assert max(livez) < 1.0, f"/livez took {max(livez):.2f}s"


def test_rows_beyond_runner_max_result_bytes_are_counted_and_the_job_says_how_many(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(b"{}", layers(60))

    def blob(exchange: Exchange) -> None:
        exchange.json(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "B" * 400}]})

    with registry_serving(manifest, blob) as registry:
        gateway = make_gateway(gateway_config(tmp_path, runner={"max_result_bytes": 8192}))
        response = create(gateway, {"url": f"{registry.url}/v2/library/app/manifests/1"})
        job = gateway.wait_job(response.json()["id"], timeout=60)
        with gateway.client() as client:
            status = client.get(f"/oapi/v1/jobs/{job['id']}")

    state = job["result"]["job_states"][0]
    results = state["results"][0]
    stored = len(results["failure_tasks"])
    assert 0 < stored < 61
    assert len(json.dumps(results["failure_tasks"], separators=(",", ":"), ensure_ascii=False).encode()) <= 8192
    assert results["failure_tasks_left_out"] == 61 - stored
    assert results["success_tasks_left_out"] == 0
    assert state["progress"]["items_failed"] == 61  # counted, even where not stored
    assert f"{61 - stored} more result rows were counted but not stored" in state["error"]
    assert "runner.max_result_bytes" in state["error"]
    assert len(status.content) < 32 * 1024
    with console(gateway) as session:
        page = session.get(f"/preheats/{job['id']}").text
    assert f"{61 - stored} more rows ({61 - stored} failed) counted but not stored" in page


def test_the_bounds_have_the_documented_defaults() -> None:
    runner = RunnerConfig()
    assert runner.max_result_bytes == 1 << 20
    assert runner.max_timeout == "24h" and runner.max_timeout_seconds == 86400
    from gateway.redact import ERROR_CHARS, QUOTE_CHARS

    assert (QUOTE_CHARS, ERROR_CHARS) == (500, 1000)


# --- 2. a caller's timeout has an upper bound ---------------------------------------------------------


def test_a_timeout_beyond_the_maximum_is_refused_with_a_422_naming_it(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    url = f"http://{'127.0.0.1:9'}/v2/library/app/manifests/1"
    for nanoseconds in (10**30, 86400 * 10**9 + 1, 2**63 - 1):
        response = create(gateway, {"url": url, "timeout": nanoseconds})
        assert response.status_code == 422, (nanoseconds, response.text)
        assert "maximum of 24h (86400000000000 nanoseconds, runner.max_timeout)" in response.json()["errors"]
    with gateway.client() as client:
        digits = client.post(
            "/oapi/v1/jobs",
            content=b'{"type": "preheat", "args": {"url": "' + url.encode() + b'", "timeout": 1' + b"0" * 400 + b"}}",
            headers={"Content-Type": "application/json"},
        )
    assert digits.status_code == 422, digits.text
    assert "runner.max_timeout" in digits.json()["errors"]
    assert job_count(gateway) == 0
    accepted = create(gateway, {"url": url, "timeout": 86400 * 10**9})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["args"]["timeout"] == 86400 * 10**9
    assert "Traceback" not in gateway.logs()


def test_runner_max_timeout_sets_the_bound(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path, runner={"max_timeout": "1h"}))
    url = "http://127.0.0.1:9/v2/library/app/manifests/1"
    refused = create(gateway, {"url": url, "timeout": 7200 * 10**9})
    assert refused.status_code == 422 and "maximum of 1h (3600000000000 nanoseconds" in refused.json()["errors"]
    assert create(gateway, {"url": url, "timeout": 3600 * 10**9}).status_code == 200


def test_the_cli_refuses_a_timeout_beyond_the_maximum(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    env = {"PREHEAT_GATEWAY_TOKEN": gateway.token}
    url = "http://127.0.0.1:9/v2/library/app/manifests/1"
    too_long = gateway.cli("preheat", url, "--server", gateway.url, "--timeout", "48h", check=False, env_extra=env)
    assert too_long.returncode == 2, too_long.stderr
    assert "(422)" in too_long.stderr and "maximum of 24h" in too_long.stderr
    absurd = gateway.cli(
        "preheat", url, "--server", gateway.url, "--timeout", "9" * 400 + "h", check=False, env_extra=env
    )
    assert absurd.returncode == 2 and "too long" in absurd.stderr and "Traceback" not in absurd.stderr
    fine = gateway.cli("preheat", url, "--server", gateway.url, "--timeout", "2h", check=False, env_extra=env)
    assert fine.returncode == 0, fine.stderr
    with gateway.client() as client:
        assert client.get("/oapi/v1/jobs").json()[0]["args"]["timeout"] == 7200 * 10**9


# --- 3. user-info is refused at create, never rendered, and never reaches a mirror ------------------------


def test_user_info_is_refused_at_create_in_every_dialect_and_never_stored(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    with HostileServer(lambda exchange: exchange.json(404, {"errors": []})) as registry:
        gateway = make_gateway(gateway_config(tmp_path))
        image = f"http://robot:{PASSWORD}@{registry.host}/v2/library/app/manifests/1"
        attempts = {
            "openapi image": ("/oapi/v1/jobs", {"type": "preheat", "args": {"url": image}}),
            "openapi file": (
                "/oapi/v1/jobs",
                {"type": "preheat", "args": {"type": "file", "url": f"http://u:{PASSWORD}@{registry.host}/f"}},
            ),
            "openapi urls": (
                "/oapi/v1/jobs",
                {
                    "type": "preheat",
                    "args": {
                        "type": "file",
                        "urls": [f"http://{registry.host}/a", f"http://:{PASSWORD}@{registry.host}/b"],
                    },
                },
            ),
            "legacy": ("/preheats", {"type": "image", "url": image, "headers": {}}),
            "kraken": (
                "/registry/notifications",
                {
                    "Events": [
                        {
                            "Action": "push",
                            "Target": {
                                "MediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                "Url": image,
                            },
                        }
                    ]
                },
            ),
        }
        with gateway.client() as client:
            for name, (path, body) in attempts.items():
                response = client.post(path, json=body)
                assert response.status_code == 422, (name, response.text)
                assert USERINFO_MESSAGE in response.json()["errors"], (name, response.text)
                assert PASSWORD not in response.text, name
        time.sleep(1.5)  # a runner would have claimed anything created by now
        assert job_count(gateway) == 0
        assert registry.received == []
    assert PASSWORD.encode() not in db_bytes(gateway)
    assert PASSWORD not in gateway.logs() and "internal error" not in gateway.logs()


def _insert_legacy_job(db: Path, *, registry_host: str, state: str = "FAILURE", cluster_id: int = 1) -> int:
    """A job as an older gateway stored it: user-info in the URL, quoted in the error and in a row."""
    url = f"http://robot:{PASSWORD}@{registry_host}/v2/library/app/manifests/1"
    args = {
        "type": "image",
        "urls": [url],
        "tag": "",
        "application": "",
        "filtered_query_params": [],
        "platform": "",
        "scope": "",
        "headers": {},
        "username": "",
        "password": "",
        "piece_length": None,
        "concurrent_count": 0,
        "timeout_seconds": 0.0,
        "cluster_ids": None,
        "bio": "legacy",
        "source": "openapi",
        "extra": {},
    }
    error = f"cluster local (id 1): manifest robot:{PASSWORD}@{registry_host}/library/app:1 not found (404)"
    result = {
        "success_tasks": [],
        "failure_tasks": [
            {
                "url": f"http://robot:{PASSWORD}@{registry_host}/v2/library/app/blobs/sha256:{'0' * 64}",
                "hostname": "local",
                "ip": "",
                "description": f"GET {url} answered 404",
            }
        ],
    }
    now = time.time()
    with sqlite3.connect(db, timeout=30) as connection:
        cursor = connection.execute(
            "INSERT INTO jobs (task_id, type, state, source, args, cluster_ids, bio, error, deadline, created_at, updated_at, finished_at) "
            "VALUES ('group_legacy', 'preheat', ?, 'openapi', ?, NULL, 'legacy', ?, ?, ?, ?, ?)",
            (
                state if state != "RUNNING" else "PENDING",
                json.dumps(args),
                error if state == "FAILURE" else "",
                now + 600,
                now,
                now,
                now if state == "FAILURE" else None,
            ),
        )
        job_id = int(cursor.lastrowid or 0)
        connection.execute(
            "INSERT INTO tasks (job_id, cluster_id, state, error, result, updated_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                cluster_id,
                "FAILURE" if state == "FAILURE" else "PENDING",
                error if state == "FAILURE" else "",
                json.dumps(result) if state == "FAILURE" else None,
                now,
                now if state == "FAILURE" else None,
            ),
        )
    return job_id


def test_user_info_stored_before_the_rule_is_never_rendered(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    db = Path(gateway.config["server"]["state_dir"]) / "gateway.db"
    job_id = _insert_legacy_job(
        db, registry_host="127.0.0.1:9"
    )  # written behind a running gateway, as an old replica would
    with gateway.client() as client:
        rendered = [
            client.get(f"/oapi/v1/jobs/{job_id}"),
            client.get("/oapi/v1/jobs"),
            client.get(f"/preheats/{job_id}"),
        ]
    with console(gateway) as session:
        rendered += [
            session.get("/preheats"),
            session.get(f"/preheats/{job_id}"),
            session.get(f"/preheats/{job_id}/status"),
            session.get("/preheats", params={"q": "legacy"}),
            session.get("/preheats/rows"),
        ]
    for response in rendered:
        assert response.status_code == 200, (response.url, response.text[:300])
        assert PASSWORD not in response.text, response.url
        assert "robot:" not in response.text, response.url
    body = rendered[0].json()
    assert body["args"]["url"] == "http://127.0.0.1:9/v2/library/app/manifests/1"
    assert "127.0.0.1:9/library/app:1 not found" in body["result"]["job_states"][0]["error"]
    assert "127.0.0.1:9/library/app" in rendered[4].text  # the console still says which image it was


def test_the_store_migration_scrubs_user_info_from_the_file(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    gateway.stop()
    db = Path(gateway.config["server"]["state_dir"]) / "gateway.db"
    with sqlite3.connect(db) as connection:  # the store as an older gateway left it: schema 1, a job in clear
        connection.execute("DELETE FROM schema_version WHERE version >= 2")
        connection.execute("DROP TABLE IF EXISTS kraken_events")  # migration 3's table, which schema 1 lacked
    job_id = _insert_legacy_job(db, registry_host="127.0.0.1:9")
    assert PASSWORD.encode() in db_bytes(gateway)
    gateway.start()
    with gateway.client() as client:
        assert client.get("/oapi/v1/jobs", params={"per_page": 50}).headers["X-Total-Count"] == "1"
    with console(gateway) as session:
        search = session.get("/preheats", params={"q": PASSWORD})
    assert "No preheat matches these filters" in search.text  # text search no longer finds it
    gateway.stop()
    assert PASSWORD.encode() not in db_bytes(gateway)
    with sqlite3.connect(db) as connection:
        args, error = connection.execute("SELECT args, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert json.loads(args)["urls"] == ["http://127.0.0.1:9/v2/library/app/manifests/1"]
    assert "robot" not in error and "127.0.0.1:9/library/app:1 not found" in error


def test_the_mirror_ns_parameter_is_the_origin_host_alone_url_encoded(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(b"{}", [])

    def handle(exchange: Exchange) -> None:
        if "/manifests/" in exchange.path:
            exchange.send(200, manifest, {"Content-Type": OCI_MANIFEST})
        else:
            exchange.json(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "no"}]})

    with HostileServer(handle) as mirror:
        clusters = [{"id": 1, "name": "edge", "adapter": "mirror", "endpoints": [{"url": mirror.url, "ns": True}]}]
        gateway = make_gateway(gateway_config(tmp_path, clusters=clusters, allow=["127.0.0.1", "localhost"]))
        origin = "localhost:8443"
        db = Path(gateway.config["server"]["state_dir"]) / "gateway.db"
        legacy = _insert_legacy_job(
            db, registry_host=origin, state="RUNNING"
        )  # pending, with user-info, from before the rule
        gateway.wait_job(legacy, timeout=30)
        with gateway.client() as client:
            fresh = client.post(
                "/oapi/v1/jobs",
                json={"type": "preheat", "args": {"url": f"https://{origin}/v2/library/app/manifests/1"}},
            )
        gateway.wait_job(fresh.json()["id"], timeout=30)
    assert len(mirror.received) >= 2
    for request in mirror.received:
        query = urlsplit(request.path).query
        assert parse_qs(query) == {"ns": [origin]}, request.path  # one parameter: the host[:port] alone
        assert PASSWORD not in request.path and "robot" not in request.path
        assert request.header("Authorization") is None
    assert "internal error" not in gateway.logs()


# --- 4. control characters in headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"X-Trace": "a\r\nX-Injected: 1"}, "header X-Trace: its value contains a carriage return (CR)"),
        ({"X-Trace": "a\nb"}, "header X-Trace: its value contains a line feed (LF)"),
        ({"X-Trace": "nul\x00"}, "header X-Trace: its value contains a NUL byte"),
        ({"X-Trace": "caf\u00e9"}, "header X-Trace: its value contains the character U+00E9"),
        ({"X Trace:": "a"}, "header name 'X Trace:' is not a valid HTTP header name"),
        ({"X-Tr\r\nace": "a"}, "header name 'X-Tr\\\\r\\\\nace' is not a valid HTTP header name"),
    ],
)
def test_control_characters_in_headers_are_refused_naming_the_header(
    make_gateway: MakeGateway,
    tmp_path: Path,
    headers: dict[str, str],
    named: str,
) -> None:
    with HostileServer(lambda exchange: exchange.send(200, b"file")) as origin:
        gateway = make_gateway(gateway_config(tmp_path))
        with gateway.client() as client:
            attempts = [
                client.post(
                    "/oapi/v1/jobs",
                    json={"type": "preheat", "args": {"type": "file", "url": f"{origin.url}/f", "headers": headers}},
                ),
                client.post(
                    "/oapi/v1/jobs",
                    json={"type": "preheat", "args": {"url": f"{origin.url}/v2/a/manifests/1", "headers": headers}},
                ),
                client.post(
                    "/preheats", json={"type": "image", "url": f"{origin.url}/v2/a/manifests/1", "headers": headers}
                ),
            ]
        for response in attempts:
            assert response.status_code == 422, response.text
            assert named in response.json()["errors"], response.json()["errors"]
        time.sleep(1.0)
        assert job_count(gateway) == 0
        assert origin.received == []
    assert "internal error" not in gateway.logs() and "Traceback" not in gateway.logs()


# --- 5. signing parameters stay out of the clear ---------------------------------------------------------


def test_signing_parameters_of_an_image_url_reach_the_registry_but_never_the_api_or_the_store(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    release = threading.Event()
    manifest = image_manifest(b"{}", layers(1))

    def blob(exchange: Exchange) -> None:
        release.wait(20)  # keep the job running while the store is read
        exchange.json(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "no"}]})

    with registry_serving(manifest, blob) as registry:
        gateway = make_gateway(gateway_config(tmp_path))
        query = (
            f"X-Amz-Credential={CREDENTIAL}&X-Amz-Signature={SIGNATURE}&sig={SIGNATURE}z&token={SIGNATURE}t&region=eu"
        )
        url = f"{registry.url}/v2/library/app/manifests/1?{query}"
        created = create(gateway, {"url": url})
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 20
        while not any("/blobs/" in r.path for r in registry.received) and time.monotonic() < deadline:
            time.sleep(0.1)
        with gateway.client() as client:
            while_running = [client.get(f"/oapi/v1/jobs/{job_id}"), client.get("/oapi/v1/jobs")]
        stored_while_running = db_bytes(gateway)
        release.set()
        finished = gateway.wait_job(job_id, timeout=30)
        with console(gateway) as session:
            pages = [session.get("/preheats"), session.get(f"/preheats/{job_id}")]
    assert any("/manifests/" in r.path for r in registry.received)
    assert created.json()["args"]["url"] == f"{registry.url}/v2/library/app/manifests/1?region=eu"
    for text in [created.text, json.dumps(finished), *(r.text for r in while_running), *(p.text for p in pages)]:
        assert SIGNATURE not in text and CREDENTIAL not in text
    for stored in (stored_while_running, db_bytes(gateway)):
        assert SIGNATURE.encode() not in stored and CREDENTIAL.encode() not in stored
    assert SIGNATURE not in gateway.logs() and CREDENTIAL not in gateway.logs()


def test_a_file_url_keeps_its_signature_out_even_with_its_own_filtered_query_params(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    with HostileServer(lambda exchange: exchange.send(200, b"content")) as origin:
        gateway = make_gateway(gateway_config(tmp_path))
        url = f"{origin.url}/bucket/object.bin?X-Amz-Signature={SIGNATURE}&session=1&sig={SIGNATURE}"
        created = create(gateway, {"type": "file", "url": url, "filtered_query_params": "session"})
        assert created.status_code == 200, created.text
        finished = gateway.wait_job(created.json()["id"], timeout=30)
    assert finished["state"] == "SUCCESS", finished
    assert any(SIGNATURE in r.path for r in origin.received)
    assert created.json()["args"]["url"] == f"{origin.url}/bucket/object.bin"
    assert SIGNATURE not in json.dumps(finished)
    assert SIGNATURE.encode() not in db_bytes(gateway)


# --- 6. digests, newlines, nesting, out-of-range integers ------------------------------------------------


def test_a_digest_or_url_with_a_trailing_newline_is_refused_at_create(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    digest = "sha256:" + "a" * 64
    with HostileServer(lambda exchange: exchange.json(404, {"errors": []})) as registry:
        gateway = make_gateway(gateway_config(tmp_path))
        url = f"{registry.url}/v2/library/app/manifests/{digest}"
        manifest_type = "application/vnd.docker.distribution.manifest.v2+json"
        attempts = [
            (
                "/oapi/v1/jobs",
                {"type": "preheat", "args": {"url": url + "\n"}},
                "a url contains a line feed (LF) at position",
            ),
            ("/oapi/v1/jobs", {"type": "preheat", "args": {"url": url + " "}}, "a url contains a space"),
            ("/preheats", {"type": "image", "url": url + "\n"}, "a url contains a line feed (LF)"),
            ("/preheats", {"type": "image", "url": url, "digest": digest + "\n"}, "digest 'sha256:"),
            (
                "/registry/notifications",
                {"Events": [{"Action": "push", "Target": {"MediaType": manifest_type, "Url": url + "\r\n"}}]},
                "a url contains a carriage return (CR)",
            ),
            (
                "/registry/notifications",
                {
                    "Events": [
                        {"Action": "push", "Target": {"MediaType": manifest_type, "Url": url, "Digest": digest + "\n"}}
                    ]
                },
                "Events[0].Target.Digest",
            ),
        ]
        with gateway.client() as client:
            for path, body, message in attempts:
                response = client.post(path, json=body)
                assert response.status_code == 422, (path, response.text)
                assert message in response.json()["errors"], response.json()["errors"]
        time.sleep(1.0)
        assert job_count(gateway) == 0 and registry.received == []


def test_a_deeply_nested_body_is_a_422_on_every_create_route(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    nested = b'{"type": "preheat", "args": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}"
    with gateway.client() as client:
        for path in ("/oapi/v1/jobs", "/preheats", "/registry/notifications"):
            response = client.post(path, content=nested, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (path, response.status_code, response.text[:200])
            assert "nests deeper than" in response.json()["errors"]
    assert "Traceback" not in gateway.logs()


def test_integers_beyond_a_go_int64_are_refused_at_create(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    url = b"http://127.0.0.1:9/v2/library/app/manifests/1"
    with gateway.client() as client:
        for field, refusal in (
            (b"piece_length", "piece_length is out of range"),
            (b"count", "count must be between 1 and 200"),
            (b"percentage", "percentage must be between 1 and 100"),
        ):
            body = b'{"type": "preheat", "args": {"url": "' + url + b'", "' + field + b'": 1' + b"0" * 400 + b"}}"
            response = client.post("/oapi/v1/jobs", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (field, response.text)
            assert refusal in response.json()["errors"]
    assert job_count(gateway) == 0 and "Traceback" not in gateway.logs()
