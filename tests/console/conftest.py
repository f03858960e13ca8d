"""Fixtures for the web console: a real Chromium driven by Playwright, and a gate that holds a preheat.

Chromium is Debian's (``apt-get install chromium``), launched from ``/usr/bin/chromium``;
Playwright's own browser downloads are never used, so the tests run air-gapped. A missing
browser skips these tests locally and fails them on CI (``require``).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROBOT_PASSWORD, ROBOT_USER, MakeGateway, require
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.registry import MissingPrerequisite, Registry
from tests.tcprelay import TcpRelay

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROBOT_PASSWORD_ENV = "CONSOLE_TEST_ROBOT_PASSWORD"


def find_chromium() -> str:
    """Debian's Chromium and Playwright's Python package, or MissingPrerequisite saying how to get them."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        raise MissingPrerequisite("Debian's chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise MissingPrerequisite("the playwright Python package is not installed (pip install -e '.[test]')") from None
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@pytest.fixture(scope="package")  # Playwright runs an event loop while alive: end it with the console tests
def browser() -> Iterator[Any]:
    executable = require(find_chromium)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def gate(origin: Registry) -> Iterator[TcpRelay]:
    """The origin registry behind a relay that starts paused: a preheat through it stays pending
    for as long as a test needs to see it pending, then ``resume()`` lets it finish."""
    held = TcpRelay("127.0.0.1", origin.port)
    held.pause()
    try:
        yield held
    finally:
        held.close()


@dataclass
class ConsoleGateway:
    """A gateway whose console can preheat from the test origin (directly or through the gate)."""

    process: GatewayUnderTest
    origin: Registry
    gate: TcpRelay
    paced: TcpRelay | None = None

    @property
    def console(self) -> str:
        return f"{self.process.url}/console"

    def manifest_url(self, repository: str, reference: str, *, gated: bool = False, slow: bool = False) -> str:
        host = self.gate.host if gated else self.paced.host if slow and self.paced else self.origin.host
        return f"http://{host}/v2/{repository}/manifests/{reference}"

    def job_count(self) -> int:
        with self.process.client() as client:
            return int(client.get("/oapi/v1/jobs").headers["X-Total-Count"])


@pytest.fixture
def console_gateway(
    make_gateway_thread: MakeGateway, origin: Registry, gate: TcpRelay, paced: TcpRelay, tmp_path: Path
) -> ConsoleGateway:
    """A gateway with the robot account configured for the origin: the console sends no Harbor token."""
    credentials = [
        {"host": host, "username": ROBOT_USER, "password_env": ROBOT_PASSWORD_ENV}
        for host in (origin.host, gate.host, paced.host)
    ]
    config = gateway_config(
        tmp_path,
        registries={"allow": ["127.0.0.1"], "credentials": credentials},
        auth={"token_cache_seconds": 0.5},
    )
    process = make_gateway_thread(config, env={ROBOT_PASSWORD_ENV: ROBOT_PASSWORD})
    return ConsoleGateway(process=process, origin=origin, gate=gate, paced=paced)


@dataclass
class Person:
    """Someone at the browser: signs in, clicks, reads; every page is photographed for review."""

    page: Any
    console: str
    shots: Path
    errors: list[str] = field(default_factory=list)
    taken: list[Path] = field(default_factory=list)

    def shoot(self, name: str) -> Path:
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path

    def sign_in(self, token: str) -> None:
        self.page.goto(f"{self.console}/")
        self.page.get_by_label("Access token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r".*/console/preheats$"))

    def create_preheat(
        self,
        url: str,
        *,
        kind: str = "image",
        platform: str = "",
        description: str = "",
        clusters: tuple[str, ...] = (),
    ) -> None:
        self.page.get_by_role("link", name="Create preheat", exact=True).first.click()
        self.page.get_by_label("Type").select_option(kind)
        self.page.get_by_label("URL").fill(url)
        for name in clusters:
            self.page.get_by_role("checkbox", name=re.compile(rf"^{re.escape(name)} ")).check()
        self.page.get_by_label("Platform").fill(platform)
        self.page.get_by_label("Description").fill(description)
        self.page.get_by_role("button", name="Create preheat").click()

    def row(self, job_id: int) -> Any:
        return self.page.locator(f"#job-{job_id}")

    def session_cookies(self) -> list[dict[str, Any]]:
        return [c for c in self.page.context.cookies() if c["name"] == "phg_console"]


@pytest.fixture
def person(browser: Any, console_gateway: ConsoleGateway, tmp_path: Path) -> Iterator[Person]:
    """A fresh browser context (no cookies) on the console, collecting console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    someone = Person(page=page, console=console_gateway.console, shots=shots)
    page.on("console", lambda message: message.type == "error" and someone.errors.append(f"{page.url}: {message.text}"))
    page.on("pageerror", lambda error: someone.errors.append(f"{page.url}: uncaught {error}"))
    try:
        yield someone
    finally:
        context.close()


def last_job_id(gateway: ConsoleGateway) -> int:
    with gateway.process.client() as client:
        jobs = client.get("/oapi/v1/jobs", params={"per_page": 1}).json()
    return int(jobs[0]["id"])


def api_error(gateway: ConsoleGateway, args: dict[str, Any]) -> str:
    """The Open API's 422 message for the same request, to compare the console's words with."""
    with gateway.process.client() as client:
        response = client.post("/oapi/v1/jobs", json={"type": "preheat", "args": args})
    assert response.status_code == 422, response.text
    return str(response.json()["errors"])


@pytest.fixture
def paced(origin: Registry) -> Iterator[TcpRelay]:
    """The origin at about 160 KiB/s: the 1.2 MiB test image takes several seconds to warm."""
    relay = TcpRelay("127.0.0.1", origin.port, rate_in_all=160 * 1024)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server for file preheats, serving ``tmp_path/files``; yields its base URL."""
    root = tmp_path / "files"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mixed_gateway(make_gateway_thread: MakeGateway, origin: Registry, gate: TcpRelay, tmp_path: Path) -> ConsoleGateway:
    """A gateway with a local cluster (id 1) and a mirror cluster (id 2) whose only endpoint refuses connections."""
    credentials = [{"host": origin.host, "username": ROBOT_USER, "password_env": ROBOT_PASSWORD_ENV}]
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    config = gateway_config(
        tmp_path,
        clusters=[
            {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
            {
                "id": 2,
                "name": "eu-mirror",
                "adapter": "mirror",
                "endpoints": [{"url": f"http://127.0.0.1:{dead_port}"}],
            },
        ],
        registries={"allow": ["127.0.0.1"], "credentials": credentials},
    )
    process = make_gateway_thread(config, env={ROBOT_PASSWORD_ENV: ROBOT_PASSWORD})
    return ConsoleGateway(process=process, origin=origin, gate=gate)


@pytest.fixture
def make_person(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """``make_person(console_url, width=, height=)``: someone at a browser of that size on another console."""
    contexts: list[Any] = []

    def make(console: str, *, width: int = 1280, height: int = 900) -> Person:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        shots = tmp_path / f"screenshots-{len(contexts)}"
        shots.mkdir()
        someone = Person(page=page, console=console, shots=shots)
        page.on(
            "console", lambda message: message.type == "error" and someone.errors.append(f"{page.url}: {message.text}")
        )
        page.on("pageerror", lambda error: someone.errors.append(f"{page.url}: uncaught {error}"))
        return someone

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
