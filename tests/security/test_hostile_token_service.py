"""Credentials go only where they belong, and token services cannot exhaust the gateway (issue 17, sections 1 and 3).

The robot's password configured for registry H (``registries.credentials``, ``password_env``)
and the caller's ``Authorization`` go to H's own origin (scheme, host and port) and to the
token service H's own 401 names, nowhere else: not to a host H redirects to, not to a token
service that host names, not to an origin H shares a host with but not a scheme, and not in
clear to a plain-http token service of an https registry. A token service outside
``registries.allow`` is refused as a token service. A token answer is read within a cap.
Each test checks what every hostile server received.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MakeGateway
from tests.gateway_process import GatewayProcess, gateway_config
from tests.security.hostile import (
    Exchange,
    HostileServer,
    image_manifest,
    sha256,
    survival,
)
from tests.security.registry_attacks import (
    gzip_bomb,
    run_job,
    self_signed,
    send_manifest,
    speak_tls_too,
)

ROBOT, SECRET = "robot$preheat", "robot-secret-do-not-leak"
BASIC = "Basic " + base64.b64encode(f"{ROBOT}:{SECRET}".encode()).decode()
CONFIG = b'{"architecture": "amd64", "os": "linux"}'
LAYER = b"one honest layer"
MIB = 1 << 20


def robot_gateway(
    make_gateway: MakeGateway,
    tmp_path: Path,
    registry_host: str,
    *,
    allow: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """A gateway holding the robot's password for ``registry_host`` (and nothing for any other host)."""
    registries = {
        "allow": allow if allow is not None else ["127.0.0.1"],
        "credentials": [{"host": registry_host, "username": ROBOT, "password_env": "ROBOT_SECRET"}],
    }
    return make_gateway(gateway_config(tmp_path, registries=registries), env={"ROBOT_SECRET": SECRET, **(env or {})})


def assert_never_leaked(gateway: GatewayProcess, *texts: str) -> None:
    for text in (gateway.logs(), *texts):
        assert SECRET not in text and base64.b64encode(f"{ROBOT}:{SECRET}".encode()).decode() not in text


def image_registry(manifest: bytes, blob: Callable[[Exchange], None]) -> Callable[[Exchange], None]:
    """Serves ``manifest`` for any tag, the config by digest, and every other blob through ``blob``."""

    def answer(exchange: Exchange) -> None:
        if "/manifests/" in exchange.path:
            send_manifest(exchange, manifest)
        elif exchange.path.endswith(sha256(CONFIG)):
            exchange.send(200, CONFIG)
        else:
            blob(exchange)

    return answer


# --- 3. credentials go only where they belong --------------------------------------------------


def test_a_redirect_targets_401_never_sends_the_robots_password_or_a_token_anywhere(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(CONFIG, [(sha256(LAYER), len(LAYER))])
    with (
        HostileServer(lambda e: e.json(200, {"token": "token-minted-by-the-third-host", "expires_in": 3600})) as third,
        HostileServer(
            lambda e: e.send(401, b"", {"WWW-Authenticate": f'Bearer realm="{third.url}/token",service="evil"'})
        ) as target,
        HostileServer(
            image_registry(manifest, lambda e: e.send(307, b"", {"Location": f"{target.url}{e.path}"}))
        ) as registry,
    ):
        gateway = robot_gateway(make_gateway, tmp_path, registry.host)
        with survival(gateway) as watch:
            first = run_job(gateway, f"{registry.url}/v2/library/app/manifests/1.0")
            second = run_job(
                gateway, f"{registry.url}/v2/library/other/manifests/1.0"
            )  # the 401 must not have been cached for the registry

    assert third.received == [], "the third host was asked for a token (with the robot's password)"
    assert target.authorizations() == []
    assert not [a for a in registry.authorizations() if "token-minted-by-the-third-host" in a], (
        "the registry got the third host's token"
    )
    for outcome in (first, second):
        assert outcome.state == "FAILURE"
        assert (
            f"{registry.host} sent the gateway on to http://{target.host} for blob {sha256(LAYER)}" in outcome.text
        ), outcome.text
        assert (
            f"asks for credentials (401): the gateway sends {registry.host}'s credentials and the caller's token only to http://{registry.host}"
            in outcome.text
        )
        assert outcome.seconds < 10
    assert_never_leaked(gateway, first.text, second.text)
    watch.assert_survived()


def test_the_robots_password_goes_to_the_token_service_the_registry_itself_names(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(CONFIG, [(sha256(LAYER), len(LAYER))])

    def tokens(exchange: Exchange) -> None:
        if exchange.request.header("Authorization") == BASIC:
            exchange.json(200, {"token": "good-token"})
        else:
            exchange.send(401)

    with HostileServer(tokens) as service:

        def registry_answer(exchange: Exchange) -> None:
            if exchange.request.header("Authorization") != "Bearer good-token":
                exchange.send(401, b"", {"WWW-Authenticate": f'Bearer realm="{service.url}/token",service="registry"'})
            else:
                image_registry(manifest, lambda e: e.send(200, LAYER))(exchange)

        with HostileServer(registry_answer) as registry:
            gateway = robot_gateway(make_gateway, tmp_path, registry.host)
            outcome = run_job(gateway, f"{registry.url}/v2/library/app/manifests/1.0")

    assert outcome.state == "SUCCESS", outcome.text
    assert service.authorizations() and set(service.authorizations()) == {BASIC}
    assert set(registry.authorizations()) == {"Bearer good-token"}
    assert_never_leaked(gateway, outcome.text)


def test_with_an_allowlist_a_token_service_off_it_is_refused_as_a_token_service(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    with (
        HostileServer(lambda e: e.json(200, {"token": "t"})) as service,
        HostileServer(
            lambda e: e.send(401, b"", {"WWW-Authenticate": f'Bearer realm="{service.url}/token",service="r"'})
        ) as registry,
    ):
        gateway = robot_gateway(make_gateway, tmp_path, registry.host, allow=[registry.host])
        outcome = run_job(gateway, f"{registry.url}/v2/library/app/manifests/1.0")

    assert outcome.state == "FAILURE"
    assert (
        f"host {service.host}, the token service {registry.host} names, is not allowed: add it to registries.allow"
        in outcome.text
    ), outcome.text
    assert "redirect" not in outcome.text
    assert service.received == []
    assert_never_leaked(gateway, outcome.text)


@pytest.fixture
def dual(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


def test_an_https_registry_redirecting_to_http_on_its_own_host_and_port_sends_no_bearer_in_clear(
    make_gateway: MakeGateway,
    tmp_path: Path,
    dual: tuple[Path, Path],
) -> None:
    manifest = image_manifest(CONFIG, [(sha256(LAYER), len(LAYER))])

    def answer(exchange: Exchange) -> None:
        if exchange.path.startswith("/plain/"):  # only ever reached over http: the redirect says so
            exchange.send(200, LAYER)
        else:
            image_registry(manifest, lambda e: e.send(307, b"", {"Location": f"http://{registry.host}/plain{e.path}"}))(
                exchange
            )

    with HostileServer(answer) as registry:
        speak_tls_too(registry, *dual)
        gateway = make_gateway(gateway_config(tmp_path), env={"SSL_CERT_FILE": str(dual[0])})
        outcome = run_job(
            gateway,
            f"https://{registry.host}/v2/library/app/manifests/1.0",
            headers={"Authorization": "Bearer harbor-minted"},
        )

    assert outcome.state == "SUCCESS", outcome.text
    over_https = [r for r in registry.received if not r.path.startswith("/plain/")]
    over_http = [r for r in registry.received if r.path.startswith("/plain/")]
    assert over_http and all(r.header("Authorization") is None for r in over_http), "the bearer crossed in clear"
    assert all(r.header("Authorization") == "Bearer harbor-minted" for r in over_https)


def test_an_https_registry_credentials_never_go_in_clear_to_a_plain_http_token_service(
    make_gateway: MakeGateway,
    tmp_path: Path,
    dual: tuple[Path, Path],
) -> None:
    def answer(exchange: Exchange) -> None:
        if exchange.path.startswith("/token"):
            exchange.json(200, {"token": "t"})
        else:
            exchange.send(401, b"", {"WWW-Authenticate": f'Bearer realm="http://{registry.host}/token",service="r"'})

    with HostileServer(answer) as registry:
        speak_tls_too(registry, *dual)
        gateway = robot_gateway(make_gateway, tmp_path, registry.host, env={"SSL_CERT_FILE": str(dual[0])})
        outcome = run_job(gateway, f"https://{registry.host}/v2/library/app/manifests/1.0")

    assert outcome.state == "FAILURE"
    assert (
        f"token service http://{registry.host}/token is plain http: the gateway does not send {registry.host}'s credentials there in clear"
        in outcome.text
    ), outcome.text
    assert not [r for r in registry.received if r.path.startswith("/token")]
    assert BASIC not in registry.authorizations()
    assert_never_leaked(gateway, outcome.text)


# --- 1. a token service's answer is read within a cap ------------------------------------------


@pytest.mark.parametrize("body", ["a 1 MiB gzip that inflates to 1 GiB", "512 MiB of JSON"])
def test_a_huge_token_answer_is_refused_at_its_cap(body: str, make_gateway: MakeGateway, tmp_path: Path) -> None:
    sent: list[int] = []
    bomb = gzip_bomb(1024)  # built before the job is timed

    def tokens(exchange: Exchange) -> None:
        if body.startswith("a 1 MiB gzip"):
            exchange.send(200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        else:
            exchange.head(200, {"Content-Type": "application/json", "Content-Length": str(512 * MIB)})
            sent.append(exchange.stream(b'{"token": "' + b"t" * 65536, 512 * MIB))

    with (
        HostileServer(tokens) as service,
        HostileServer(
            lambda e: e.send(401, b"", {"WWW-Authenticate": f'Bearer realm="{service.url}/token",service="r"'})
        ) as registry,
    ):
        gateway = robot_gateway(make_gateway, tmp_path, registry.host)
        with survival(gateway) as watch:
            outcome = run_job(gateway, f"{registry.url}/v2/library/app/manifests/1.0")

    assert outcome.state == "FAILURE"
    assert (
        f"the answer of the token service of {registry.host} is larger than 65536 bytes (registries.max_token_bytes); refusing it"
        in outcome.text
    ), outcome.text
    assert outcome.seconds < 10
    assert sum(sent) < 64 * MIB
    watch.assert_survived()
    assert watch.peak_rss_mib() < 200
