"""Unauthenticated peers cannot deny service (issue 17, section 5).

Every test attacks a real gateway process over raw sockets, with small ``server.*`` limits so
deadlines pass in seconds, and proves through ``survival`` that an authenticated ``/healthy``
on a fresh connection keeps answering 200 within 2 s, that RSS stays bounded and that no
traceback reaches the log.
"""

from __future__ import annotations

import json
import re
import resource
import selectors
import socket
import ssl
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.config import ServerConfig
from gateway.serving import Limits
from tests.conftest import MakeGateway
from tests.gateway_process import (
    REPO_ROOT,
    GatewayProcess,
    gateway_config,
)
from tests.registry import _SigningIdentity
from tests.security.hostile import raw_connection, survival

FAST = {"header_timeout_seconds": 1.5, "body_timeout_seconds": 2.0, "keep_alive_seconds": 1.5}
SLACK = 2.5  # scheduling on two shared cores


@pytest.fixture(scope="module", autouse=True)
def _enough_file_descriptors() -> None:
    """The attacks open thousands of sockets: raise this process's soft limit (the gateway raises its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 9000 if hard == resource.RLIM_INFINITY else min(hard, 9000)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4500:
        pytest.skip("needs 4,500 open files (RLIMIT_NOFILE hard limit too low)")


def start(make_gateway: MakeGateway, tmp_path: Path, **server: Any) -> GatewayProcess:
    return make_gateway(gateway_config(tmp_path, server={**FAST, **server}))


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """Read until the server closes (True) or ``within`` passes (False); returns what was read."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def wait_all_closed(socks: list[socket.socket], within: float) -> tuple[int, float, list[bytes]]:
    """How many of ``socks`` the server closed within ``within`` s, when the last one was, and what each got."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    answers: dict[int, bytes] = {}
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
        answers[index] = b""
    open_ones, last = len(socks), 0.0
    deadline = started + within
    while open_ones and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            sock = socks[key.data]
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                answers[key.data] += chunk
                continue
            selector.unregister(sock)
            open_ones -= 1
            last = time.monotonic() - started
    selector.close()
    return len(socks) - open_ones, last, [answers[i] for i in range(len(socks))]


@contextmanager
def sockets(count: int, port: int, *, first: bytes = b"", spacing: float = 0.0) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = raw_connection(port)
            if first:
                sock.sendall(first)
            opened.append(sock)
            if spacing:
                time.sleep(spacing)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def log_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    events = []
    for line in gateway.logs().splitlines():
        if line.startswith("{"):
            with suppress(ValueError):
                events.append(json.loads(line))
    return events


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = (
        re.search(rf"^{re.escape(name)}{{{re.escape(selector)}}} (\S+)$", text, re.MULTILINE)
        if labels
        else re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    )
    return float(match[1]) if match else 0.0


# --- 1. idle and slow connections --------------------------------------------------------------


def test_four_thousand_silent_connections_never_starve_an_authenticated_request(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """4,100 sockets that never send a byte: /healthy still answers, and each is closed at the header deadline."""
    gateway = start(make_gateway, tmp_path, header_timeout_seconds=4)
    token = gateway.token
    with survival(gateway) as watch, sockets(4100, gateway.port) as silent:
        opened = time.monotonic()
        time.sleep(1.0)
        with httpx.Client(timeout=5) as client:  # the probes the issue saw answer 503
            assert client.get(f"{gateway.url}/livez").status_code == 200
            assert client.get(f"{gateway.url}/healthy", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        closed, _, answers = wait_all_closed(silent, within=4 + 2 * SLACK)
        elapsed = time.monotonic() - opened
    watch.assert_survived()
    assert closed == len(silent), f"{len(silent) - closed} silent connections still open after {elapsed:.1f}s"
    assert not any(answers), "a connection that never sent a byte gets no answer, just a close"
    assert elapsed > 3.0, "closed before the header deadline"


def test_the_gateway_raises_its_open_file_limit_to_the_hard_limit(make_gateway: MakeGateway, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip("needs a finite hard limit above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the gateway inherits a low soft limit...
    try:
        gateway = start(make_gateway, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert gateway.process is not None
    limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)], line  # ...and raises it at serve start


def test_at_the_connection_cap_the_oldest_connection_without_a_request_head_makes_room(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(make_gateway, tmp_path, header_timeout_seconds=60, max_connections=40)
    with survival(gateway) as watch, sockets(40, gateway.port, spacing=0.005) as idle:
        time.sleep(0.5)
        with httpx.Client(timeout=5) as client:
            for _ in range(5):  # each fresh connection evicts the oldest idle one
                assert client.get(f"{gateway.url}/livez", headers={"Connection": "close"}).status_code == 200
        time.sleep(0.5)
        first_closed, _ = closed_by_server(idle[0], within=1)
        last_closed, _ = closed_by_server(idle[-1], within=0.5)
    watch.assert_survived()
    assert first_closed, "the oldest idle connection was not closed to admit new ones"
    assert not last_closed, "the newest idle connection was closed before the older ones"


def test_a_kept_alive_connection_is_closed_after_keep_alive_seconds(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, keep_alive_seconds=1.5, header_timeout_seconds=10)
    with sockets(1, gateway.port) as (sock,):
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b'{"status":"ok"}') and (chunk := sock.recv(65536)):  # head, body: 2 sends
            response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response
        answered = time.monotonic()
        closed, extra = closed_by_server(sock, within=1.5 + SLACK)
        waited = time.monotonic() - answered
    assert closed and extra == b"", "the kept-alive connection outlived server.keep_alive_seconds"
    assert 1.0 < waited < 1.5 + SLACK, waited


def test_slowloris_heads_are_answered_408_and_closed_at_the_header_deadline(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(make_gateway, tmp_path, header_timeout_seconds=2)
    stop = threading.Event()
    with survival(gateway) as watch, sockets(500, gateway.port, first=b"GET /livez HTTP/1.1\r\nHost: x\r\n") as slow:
        started = time.monotonic()

        def drip() -> None:  # one more header line every 0.5 s, forever
            n = 0
            while not stop.wait(0.5):
                n += 1
                for sock in slow:
                    with suppress(OSError):
                        sock.send(f"X-Drip-{n}: a\r\n".encode())

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        closed, last, answers = wait_all_closed(slow, within=2 + 2 * SLACK)
        stop.set()
        dripper.join(5)
    watch.assert_survived()
    assert closed == len(slow), f"{len(slow) - closed} slowloris connections outlived the 2 s header deadline"
    assert last < 2 + 2 * SLACK and time.monotonic() - started > 1.5
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:60] for a in answers}
    assert b"server.header_timeout_seconds" in answers[0]
    closes = [e for e in log_lines(gateway) if "request head not complete" in e["message"]]
    assert len(closes) == len(slow) and {e["level"] for e in closes} == {"info"}


def test_slow_bodies_are_answered_408_and_closed_at_the_body_deadline(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """Unauthenticated (console sign-in) and authenticated (job create) bodies that never finish."""
    gateway = start(make_gateway, tmp_path, body_timeout_seconds=2)
    heads = [
        b"POST /console/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\nt",
        (
            f"POST /oapi/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"
        ).encode(),
    ]
    stop = threading.Event()
    with survival(gateway) as watch, ExitStack() as stack:
        slow = [sock for head in heads for sock in stack.enter_context(sockets(150, gateway.port, first=head))]
        started = time.monotonic()

        def drip() -> None:
            while not stop.wait(0.5):
                for sock in slow:
                    with suppress(OSError):
                        sock.send(b" ")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        closed, _, answers = wait_all_closed(slow, within=2 + 2 * SLACK)
        stop.set()
        dripper.join(5)
    watch.assert_survived()
    assert closed == len(slow), f"{len(slow) - closed} slow bodies outlived the 2 s body deadline"
    assert time.monotonic() - started > 1.5
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"server.body_timeout_seconds" in a for a in answers), {
        a[:80] for a in answers
    }
    events = log_lines(gateway)
    closes = [e for e in events if "request body not complete" in e["message"]]
    assert len(closes) == len(slow), "one line per connection closed"
    assert not [e for e in events if e["level"] in ("error", "critical")], [e for e in events if e["level"] == "error"][
        :2
    ]


def test_idle_connections_do_not_count_against_the_in_flight_limit_but_requests_do(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(
        make_gateway, tmp_path, max_in_flight_requests=20, header_timeout_seconds=30, body_timeout_seconds=30
    )
    with sockets(200, gateway.port):  # idle: uvicorn's limit_concurrency counted these
        assert httpx.get(f"{gateway.url}/livez", timeout=5).status_code == 200
    head = b"POST /console/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 99\r\n\r\n"
    with sockets(20, gateway.port, first=head):  # 20 requests in flight, each waiting for its body
        time.sleep(0.5)
        refused = httpx.get(f"{gateway.url}/livez", timeout=5)
    assert refused.status_code == 503


# --- 2. request head size -------------------------------------------------------------------------


def test_a_64_mib_header_is_refused_with_431_before_it_is_buffered(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path)
    with survival(gateway) as watch, sockets(1, gateway.port) as (sock,):
        started = time.monotonic()
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent, answer = 0, b""
        chunk = b"a" * (1 << 20)
        sock.settimeout(0.05)
        while sent < 64 << 20 and not answer:
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            with suppress(TimeoutError):
                answer = sock.recv(65536)
        if not answer:
            _, answer = closed_by_server(sock, within=3)
    watch.assert_survived()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert b"65536 bytes (server.max_header_bytes)" in answer
    assert sent < 8 << 20, f"the gateway read {sent >> 20} MiB of one header before refusing it"
    assert time.monotonic() - started < 5


def test_eight_parallel_128_mib_headers_leave_rss_bounded(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path)
    results: list[tuple[int, bytes]] = []

    def flood() -> None:
        with sockets(1, gateway.port) as (sock,):
            sock.sendall(b"GET /healthy HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent, piece = 0, b"b" * (1 << 20)  # one 128 MiB header value
            try:
                while sent < 128 << 20:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass
            _, answer = closed_by_server(sock, within=3)
            results.append((sent, answer))

    with survival(gateway) as watch:
        threads = [threading.Thread(target=flood) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    watch.assert_survived()
    assert len(results) == 8
    assert all(sent < 16 << 20 for sent, _ in results), [sent >> 20 for sent, _ in results]
    assert all(answer.startswith(b"HTTP/1.1 431 ") for _, answer in results), [answer[:40] for _, answer in results]
    assert watch.current_rss_mib() < 200


def test_a_head_just_under_the_limit_is_served_and_one_over_it_is_not(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(make_gateway, tmp_path, max_header_bytes=4096)
    base = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    for size, status in ((4096, b"200"), (4097, b"431")):
        request = base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(base)))
        assert len(request) == size
        with sockets(1, gateway.port) as (sock,):
            sock.sendall(request)
            _, answer = closed_by_server(sock, within=3)  # 200 is kept alive until keep_alive_seconds
        assert answer.startswith(b"HTTP/1.1 " + status), (size, answer[:100])


# --- 3. ids are ASCII digits ---------------------------------------------------------------------


def test_non_ascii_digit_ids_are_404_never_500_nor_another_job(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path)
    with gateway.client() as client:
        created = client.post(
            "/oapi/v1/jobs",
            json={"type": "preheat", "args": {"type": "image", "url": "http://127.0.0.1:9/v2/a/manifests/1"}},
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        assert job_id == 1
        gateway.wait_job(job_id)
        for path in ("/oapi/v1/jobs", "/preheats"):
            assert client.get(f"{path}/1").status_code == 200  # cached now: the status cache serves it
            for spelling in ("%C2%B2", "%D9%A1", "%EF%BC%91", "%E2%91%A0", "1%C2%B2", "+1", "%201", "1_0"):
                response = client.get(f"{path}/{spelling}")
                assert response.status_code == 404, (path, spelling, response.status_code, response.text)
                assert response.json()["errors"]
    with gateway.client(token=None) as anonymous:
        for path in ("/oapi/v1/jobs/%C2%B2", "/preheats/%C2%B2", "/preheats/%D9%A1"):
            assert anonymous.get(path).status_code == 401
    assert "Traceback" not in gateway.logs()


# --- 4. disconnects -----------------------------------------------------------------------------


def test_a_client_leaving_mid_body_is_one_info_line_not_a_traceback(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, body_timeout_seconds=30)
    head = (
        f"POST /oapi/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.token}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"type": '
    ).encode()
    signin = b"POST /console/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9999\r\n\r\ntoken="
    with survival(gateway) as watch:
        for index in range(300):
            sock = raw_connection(gateway.port)
            sock.sendall(head if index % 2 else signin)
            time.sleep(0.01)
            if index % 3 == 0:  # some leave with a reset rather than a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(1.5)
    watch.assert_survived()
    events = log_lines(gateway)
    went = [e for e in events if "went away before its request body was complete" in e["message"]]
    assert len(went) == 300, f"{len(went)} lines for 300 disconnects"
    assert {e["level"] for e in went} == {"info"}
    assert not [e for e in events if e["level"] in ("error", "critical") or "exception" in e], [
        e for e in events if e["level"] == "error"
    ][:2]
    assert 'status="499"' in httpx.get(f"{gateway.url}/metrics").text


# --- 5. console sign-in ---------------------------------------------------------------------------


def signin_form(client: httpx.Client) -> str:
    page = client.get("/console/signin")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match[1]


def test_repeated_sign_in_failures_are_counted_and_slowed_per_client(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, signin_failure_burst=3, signin_failures_per_minute=6)
    good = gateway.token
    with httpx.Client(base_url=gateway.url, timeout=10) as browser:
        csrf = signin_form(browser)
        statuses, retry_after = [], None
        for attempt in range(6):
            response = browser.post("/console/signin", data={"csrf": csrf, "token": f"phg_wrong-{attempt}", "next": ""})
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after = response.headers.get("Retry-After")
                assert "Too many failed sign-ins" in response.text
        assert statuses == [200, 200, 200, 429, 429, 429], statuses
        assert retry_after is not None and 1 <= int(retry_after) <= 10
        # the throttled address cannot even try the right token until it waits
        assert browser.post("/console/signin", data={"csrf": csrf, "token": good, "next": ""}).status_code == 429
    assert metric(gateway, "preheat_gateway_auth_failures_total", reason="unknown_token") == 3
    assert metric(gateway, "preheat_gateway_auth_failures_total", reason="signin_throttled") == 4


def test_parallel_guesses_cannot_outrun_the_sign_in_throttle(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, signin_failure_burst=5, signin_failures_per_minute=1)
    with httpx.Client(base_url=gateway.url, timeout=10) as browser:
        csrf = signin_form(browser)
        cookies = dict(browser.cookies)
    statuses: list[int] = []

    def guess(n: int) -> None:
        with httpx.Client(base_url=gateway.url, timeout=10, cookies=cookies) as client:
            statuses.append(client.post("/console/signin", data={"csrf": csrf, "token": f"phg_guess-{n}"}).status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses).count(200) == 5 and statuses.count(429) == 35, statuses
    assert metric(gateway, "preheat_gateway_auth_failures_total", reason="unknown_token") == 5


# --- 6. smaller ---------------------------------------------------------------------------------


def test_the_sqlite_store_and_its_wal_are_private_to_the_owner(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path)
    assert gateway.token  # a write: the WAL and its index exist now
    state = Path(gateway.config["server"]["state_dir"])
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir() if p.name.startswith("gateway.db")}
    assert {"gateway.db", "gateway.db-wal", "gateway.db-shm"} <= set(files), files
    assert {name: mode for name, mode in files.items() if name != "gateway.db.lock"} == {
        "gateway.db": 0o600,
        "gateway.db-wal": 0o600,
        "gateway.db-shm": 0o600,
    }
    assert stat.S_IMODE(state.stat().st_mode) == 0o700, "the state directory it creates is the owner's alone"


def test_an_older_world_readable_store_is_tightened_at_start(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path)
    assert gateway.token
    gateway.stop()
    database = Path(gateway.config["server"]["state_dir"]) / "gateway.db"
    database.chmod(0o644)
    gateway.start()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_a_405_allows_exactly_the_methods_the_path_serves(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path)
    expected = {
        "/oapi/v1/jobs/1": {"GET", "HEAD", "PATCH", "DELETE"},
        "/oapi/v1/jobs": {"GET", "HEAD", "POST"},
        "/preheats/1": {"GET", "HEAD"},
        "/preheats": {"POST"},
        "/healthy": {"GET", "HEAD"},
        "/console/signin": {"GET", "HEAD", "POST"},
    }
    with gateway.client() as client:
        for path, methods in expected.items():
            for method in ("OPTIONS", "PUT", "TRACE"):
                response = client.request(method, path)
                assert response.status_code == 405, (method, path, response.status_code)
                allowed = {m.strip() for m in response.headers["allow"].split(",")}
                assert allowed == methods, (method, path, allowed)


def test_the_openapi_document_states_the_list_bounds_the_server_enforces(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(make_gateway, tmp_path, max_page_size=50)
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=5).json()
    parameters = {p["name"]: p["schema"] for p in document["paths"]["/oapi/v1/jobs"]["get"]["parameters"]}
    assert parameters["page"]["minimum"] == 1 and parameters["page"]["maximum"] == 1_000_000
    assert parameters["per_page"]["minimum"] == 1 and parameters["per_page"]["maximum"] == 50
    assert parameters["type"]["enum"] == ["preheat"]
    with gateway.client() as client:
        assert client.get("/oapi/v1/jobs", params={"page": 1_000_000, "per_page": 50}).status_code == 200
        for params in ({"page": 1_000_001}, {"page": 0}, {"per_page": 51}, {"type": "sync_peers"}):
            response = client.get("/oapi/v1/jobs", params=params)
            assert response.status_code == 400, (params, response.status_code)
        assert client.get("/oapi/v1/jobs", params={"type": "preheat"}).status_code == 200


# --- every protocol: TLS too ---------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    identity = _SigningIdentity.generate("127.0.0.1")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(identity.certificate_pem)
    key.write_bytes(
        identity.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def tls_connection(port: int, cert: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context.wrap_socket(raw_connection(port))


def test_over_tls_the_same_deadlines_and_limits_hold(
    make_gateway: MakeGateway, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    gateway = make_gateway(
        gateway_config(
            tmp_path, server={**FAST, "header_timeout_seconds": 2, "tls": {"cert": str(cert), "key": str(key)}}
        ),
        start=False,
    )
    gateway_url = f"https://127.0.0.1:{gateway.port}"
    gateway.start(verify=_trusting(cert))
    with httpx.Client(verify=_trusting(cert), timeout=5) as client:
        assert client.get(f"{gateway_url}/livez").status_code == 200
    # a TCP connection that never starts its handshake
    with sockets(1, gateway.port) as (silent,):
        began = time.monotonic()
        closed, _ = closed_by_server(silent, within=2 + 2 * SLACK)
        assert closed and time.monotonic() - began > 1.5
    # a slowloris head after the handshake
    sock = tls_connection(gateway.port, cert)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
    closed, answer = closed_by_server(sock, within=2 + 2 * SLACK)
    sock.close()
    assert closed and answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    # an oversized head
    sock = tls_connection(gateway.port, cert)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"z" * (200 << 10) + b"\r\n\r\n")
    closed, answer = closed_by_server(sock, within=5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert "Traceback" not in gateway.logs()


def _trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


# --- defaults -------------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    server = ServerConfig()
    assert (server.header_timeout_seconds, server.body_timeout_seconds, server.keep_alive_seconds) == (10.0, 30.0, 65.0)
    assert (server.max_header_bytes, server.max_connections, server.max_in_flight_requests) == (64 * 1024, 10_000, 4096)
    assert (server.signin_failure_burst, server.signin_failures_per_minute) == (10, 6.0)
    assert Limits.from_config(server) == Limits()
    reference = subprocess.run(
        [sys.executable, "scripts/config_reference.py"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout  # what docs/configuration.md says (kept equal by test_docs_in_sync)
    for row in (
        "`header_timeout_seconds` | float | `10.0`",
        "`body_timeout_seconds` | float | `30.0`",
        "`keep_alive_seconds` | float | `65.0`",
        "`max_header_bytes` | int | `65536`",
        "`max_connections` | int | `10000`",
        "`max_in_flight_requests` | int | `4096`",
        "`signin_failure_burst` | int | `10`",
        "`signin_failures_per_minute` | float | `6.0`",
    ):
        assert row in reference, row
