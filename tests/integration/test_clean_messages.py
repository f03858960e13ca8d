"""What an operator reads in the log and in ``/healthy`` is one clean line (issue 20).

No ANSI colour codes in the JSON log, no traceback when a second process is pointed at the
same SQLite file, and no HTTP library's raw error text in ``/healthy``'s 503.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeGateway
from tests.gateway_process import GatewayProcess, gateway_config, run_cli


@pytest.fixture
def hangs_up() -> Iterator[int]:
    """A port whose server accepts a connection, reads a little and closes it: 'connection reset'."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                client.recv(100)
            finally:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def test_serving_logs_are_json_lines_without_colour_codes(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path))
    with gateway.client() as client:
        assert client.get("/healthy").status_code == 200
    gateway.stop()

    lines = gateway.stderr_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert any(event["logger"] == "uvicorn.error" and "Uvicorn running on" in event["message"] for event in events)
    assert all("color_message" not in event for event in events)
    assert not any("\x1b" in line or "\\u001b" in line for line in lines)


def test_a_second_process_on_one_sqlite_file_refuses_in_one_line(make_gateway: MakeGateway, tmp_path: Path) -> None:
    first = make_gateway(gateway_config(tmp_path))
    same_store = {
        key: value for key, value in first.config["server"].items() if key != "listen"
    }  # another port, the same state_dir
    second = GatewayProcess(tmp_path / "second", {**first.config, "server": same_store})

    refused = run_cli("serve", "--config", str(second.config_path), check=False)

    assert refused.returncode == 3
    assert "Traceback" not in refused.stderr and "StoreUnavailable" not in refused.stderr
    errors = [json.loads(line) for line in refused.stderr.splitlines() if '"level":"error"' in line]
    assert errors[0]["message"].startswith("cannot start: another gateway process serves the SQLite store ")
    assert "use PostgreSQL" in errors[0]["message"] and "\n" not in errors[0]["message"]
    with first.client() as client:
        assert client.get("/healthy").status_code == 200  # the first one is untouched


def test_healthy_503_names_each_cluster_problem_in_plain_words(
    make_gateway: MakeGateway, tmp_path: Path, hangs_up: int
) -> None:
    clusters = [
        {"id": 1, "name": "tls-mirror", "adapter": "mirror", "endpoints": [{"url": f"https://127.0.0.1:{hangs_up}"}]},
        {"id": 2, "name": "plain-mirror", "adapter": "mirror", "endpoints": [{"url": f"http://127.0.0.1:{hangs_up}"}]},
    ]
    gateway = make_gateway(gateway_config(tmp_path, clusters=clusters))

    with gateway.client() as client:
        answer = client.get("/healthy")

    assert answer.status_code == 503
    message = answer.json()["errors"]
    assert message.startswith("no cluster is usable: cluster 1: 127.0.0.1: ")
    for raw in ("Cannot connect to host", "ssl:default", "[Errno", "\n"):
        assert raw not in message, message
    assert f"cannot connect to 127.0.0.1:{hangs_up}" in message or "connection reset by the peer" in message, message
