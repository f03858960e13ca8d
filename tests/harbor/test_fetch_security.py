"""What the gateway may fetch, whichever dialect asks: the allowlist, redirects and DNS answers.

A token holder (or anyone, with ``auth.mode: none``) hands the gateway URLs to fetch. The
gateway fetches only from ``registries.allow``; a redirect from an allowed registry is
followed only to an http(s) host that is not loopback, private, link-local or a metadata
address (unless listed); and with no allowlist a host is judged by what its name resolves to.
Refusals of a caller's URL are a 422 at once, never a job that fails later; Kraken
notifications are refused whole (see docs/harbor.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HarborToken, MakeGateway, OriginImages
from tests.gateway_process import GatewayProcess, gateway_config
from tests.harbor.driver import SUCCESS, DragonflyDriver, HarborError, KrakenDriver, LegacyDragonflyDriver
from tests.registry import Registry, TokenService


def create_through(dialect: str, gateway: GatewayProcess, url: str, headers: dict[str, str] | None = None) -> Any:
    """Create one preheat of ``url`` the way that dialect's Harbor would; raises HarborError on non-2xx."""
    info = {"token": gateway.token}
    if dialect == "legacy":
        return LegacyDragonflyDriver(gateway.url, "OAUTH", info).preheat(url, headers or {})
    if dialect == "openapi":
        return DragonflyDriver(gateway.url, "OAUTH", info).preheat(url, headers or {})
    driver = KrakenDriver(gateway.url, "OAUTH", info)
    driver.preheat(url, image="library/app", tag="1.0")
    return driver


def job_count(gateway: GatewayProcess) -> int:
    with gateway.client() as client:
        return int(client.get("/oapi/v1/jobs").headers["X-Total-Count"])


DIALECTS = ["legacy", "openapi", "kraken"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_host_outside_the_allowlist_is_refused_at_once_through_every_dialect(
    dialect: str, make_gateway: MakeGateway, origin: Registry, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, allow=[origin.host]))

    with pytest.raises(HarborError) as refused:
        create_through(dialect, gateway, "http://registry.evil.example.com/v2/library/app/manifests/1.0")

    assert "error: 422 Unprocessable Entity" in str(refused.value)
    assert "host registry.evil.example.com:80 is not allowed: add it to registries.allow" in str(refused.value)
    assert job_count(gateway) == 0


def test_a_kraken_notification_with_one_refused_event_creates_no_job_at_all(
    make_gateway: MakeGateway, origin: Registry, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, allow=[origin.host]))
    harbor = KrakenDriver(gateway.url, "OAUTH", {"token": gateway.token})
    good = harbor.notification(f"{origin.url}/v2/library/app/manifests/1.0", image="library/app")["Events"][0]
    bad = harbor.notification("http://10.1.2.3/v2/library/app/manifests/1.0", image="library/app")["Events"][0]

    with pytest.raises(
        HarborError, match=r"error: 422 .*no job was created: Events\[1\]: host 10\.1\.2\.3:80 is not allowed"
    ):
        harbor.notify({"Events": [good, bad]})

    assert job_count(gateway) == 0


def test_every_url_of_a_file_preheat_is_checked(make_gateway: MakeGateway, origin: Registry, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path, allow=[origin.host]))
    body = {
        "type": "preheat",
        "args": {"type": "file", "urls": [f"{origin.url}/files/a.bin", "http://169.254.169.254/latest/meta-data/"]},
    }
    with gateway.client() as client:
        response = client.post("/oapi/v1/jobs", json=body)

    assert response.status_code == 422
    assert "host 169.254.169.254:80 is not allowed" in response.json()["errors"]
    assert job_count(gateway) == 0


# --- redirects ---------------------------------------------------------------------------------


@pytest.fixture
def redirector() -> Iterator[Callable[[str], str]]:
    """An 'allowed registry' on 127.0.0.1 that answers every GET with a 307 to ``target`` + path."""
    target: dict[str, str] = {"base": ""}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            hits.append(self.path)
            location = (
                target["base"]
                if "://" in target["base"] and not target["base"].startswith("http")
                else target["base"] + self.path
            )
            self.send_response(307)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def redirect_to(base: str) -> str:
        target["base"] = base
        return f"127.0.0.1:{server.server_address[1]}"

    try:
        yield redirect_to
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("loopback, another port", "resolves to a non-public address (127.0.0.1)"),
        ("localhost by name", "resolves to a non-public address (127.0.0.1)"),
        ("cloud metadata", "resolves to a non-public address (169.254.169.254)"),
        ("a private network", "resolves to a non-public address (10.0.0.7)"),
        ("a file URL", "is not an http(s) URL"),
    ],
)
def test_a_redirect_from_an_allowed_registry_to_an_internal_address_is_refused(
    target: str,
    why: str,
    redirector: Callable[[str], str],
    make_gateway: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    base = {
        "loopback, another port": origin.url,
        "localhost by name": f"http://localhost:{origin.port}",
        "cloud metadata": "http://169.254.169.254",
        "a private network": "http://10.0.0.7:5000",
        "a file URL": "file:///etc/passwd",
    }[target]
    allowed = redirector(base)
    gateway = make_gateway(gateway_config(tmp_path, allow=[allowed]))  # only the redirecting registry itself
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(
        f"http://{allowed}/v2/library/app/manifests/1.0", {"Authorization": harbor_token("library/app")}
    )

    assert status.status != SUCCESS
    assert "redirect" in status.error and "refused" in status.error and why in status.error, status.error
    assert "registries.allow" in status.error or "http(s)" in status.error


def test_a_redirect_to_an_explicitly_allowed_internal_host_is_followed_without_the_callers_token(
    redirector: Callable[[str], str],
    make_gateway: MakeGateway,
    origin: Registry,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    allowed = redirector(origin.url)
    gateway = make_gateway(gateway_config(tmp_path, allow=[allowed, origin.host]))
    harbor = DragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})
    path = "/v2/library/app/manifests/1.0"
    seen_before = sum(1 for entry in origin.access_log() if entry.path == path and entry.status == 401)

    status = harbor.run_task(f"http://{allowed}{path}", {"Authorization": harbor_token("library/app")})

    assert "redirect" not in status.error, status.error  # followed: the origin itself answered
    reached = sum(1 for entry in origin.access_log() if entry.path == path and entry.status == 401)
    assert reached > seen_before, "the redirect target was contacted, and without the caller's Authorization"


# --- DNS answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_with_no_allowlist_a_name_resolving_to_loopback_is_refused_through_every_dialect(
    dialect: str, make_gateway: MakeGateway, origin: Registry, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, allow=[]))

    with pytest.raises(HarborError) as refused:
        create_through(dialect, gateway, f"http://localhost:{origin.port}/v2/library/app/manifests/1.0")

    assert "error: 422 Unprocessable Entity" in str(refused.value)
    assert f"host localhost:{origin.port} resolves to a non-public address (127.0.0.1)" in str(refused.value)
    assert "registries.allow" in str(refused.value)
    assert job_count(gateway) == 0


def test_a_name_resolving_to_loopback_works_once_explicitly_allowed(
    make_gateway: MakeGateway,
    origin: Registry,
    token_service: TokenService,
    images: OriginImages,
    harbor_token: HarborToken,
    tmp_path: Path,
) -> None:
    gateway = make_gateway(
        gateway_config(tmp_path, allow=[f"localhost:{origin.port}", token_service.url.removeprefix("http://")])
    )
    harbor = LegacyDragonflyDriver(gateway.url, "OAUTH", {"token": gateway.token})

    status = harbor.run_task(
        f"http://localhost:{origin.port}/v2/library/app/manifests/1.0",
        {"Authorization": harbor_token("library/app")},
        image="library/app",
        tag="1.0",
    )

    assert status.status == SUCCESS, status.error


def test_refusals_never_echo_the_callers_token(
    make_gateway: MakeGateway, origin: Registry, harbor_token: HarborToken, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, allow=[origin.host]))
    token = harbor_token("library/app")
    with gateway.client() as client:
        response = client.post(
            "/preheats",
            content=json.dumps(
                {"type": "image", "url": "http://10.0.0.1/v2/a/manifests/b", "headers": {"Authorization": token}}
            ),
        )

    assert response.status_code == 422
    assert token.split()[1] not in response.text and token.split()[1] not in gateway.logs()
