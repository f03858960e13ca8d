"""Harbor's auth modes in detail: what each accepts and refuses, and why, without ever echoing a secret.

Harbor's OAUTH mode sends ``Authorization: Bearer <token>``; the token may be a personal
access token or a JWT from the organisation's identity provider. A JWT is accepted only when
its signature verifies against the provider's published keys (asymmetric algorithms only),
it is within ``exp``/``nbf``, its issuer and audience are the configured ones, and its scope
grants ``job``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.auth import Authenticator, hash_token, new_token
from gateway.config import build_config
from gateway.middleware.auth import AuthMiddleware
from gateway.store import open_store
from tests.conftest import MakeGateway
from tests.gateway_process import GatewayUnderTest, gateway_config, run_cli
from tests.harbor.conftest import SecuredGateway
from tests.harbor.idp import IdentityProvider, SigningKey, TokenMinter
from tests.registry import wait_until


def status_of(gateway_url: str, headers: dict[str, str], path: str = "/healthy") -> httpx.Response:
    return httpx.get(gateway_url + path, headers=headers, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


FORGERIES: dict[str, tuple[Callable[[IdentityProvider], str], str]] = {
    "wrong issuer": (lambda idp: idp.token(iss="https://evil.example.test"), "issuer"),
    "wrong audience": (lambda idp: idp.token(aud="some-other-service"), "audience"),
    "expired": (
        lambda idp: idp.token(exp=int(time.time()) - 120, iat=int(time.time()) - 600, nbf=int(time.time()) - 600),
        "expired",
    ),
    "not yet valid": (lambda idp: idp.token(nbf=int(time.time()) + 3600), "not yet valid"),
    "without exp": (lambda idp: idp.token(exp=None), "exp"),
    "unsigned (alg none)": (lambda idp: idp.unsigned(), "algorithm"),
    "HS256 keyed with the public key": (lambda idp: idp.hs256_with_public_key(), "algorithm"),
    "signed by a key the provider never published": (lambda idp: idp.token(SigningKey("rsa-1")), "signature"),
    "payload changed after signing": (lambda idp: idp.tampered(), "signature"),
    "unknown key id": (lambda idp: idp.token(SigningKey("never-published")), "kid"),
    "three dots of garbage": (lambda idp: "bm90IGpzb24.bm90IGpzb24.c2ln", "malformed"),
    "no key id while the provider publishes several": (lambda idp: "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "kid"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_bad_jwt_gets_401_with_a_short_reason(forgery: str, secured: SecuredGateway) -> None:
    make, reason = FORGERIES[forgery]
    token = make(secured.idp)

    response = status_of(secured.url, bearer(token))

    assert response.status_code == 401
    assert reason in response.json()["errors"]
    assert token not in response.text
    assert token not in secured.process.logs()


@pytest.mark.parametrize("path", ["/healthy", "/_ping", "/health"])
def test_good_jwts_are_accepted_on_every_health_route(path: str, secured: SecuredGateway) -> None:
    idp = secured.idp
    for token in (idp.token(), idp.token(idp.keys[1]), idp.token(scope=None, scp=["job"]), idp.token(aud=idp.audience)):
        assert status_of(secured.url, bearer(token), path).status_code == 200


def test_a_jwt_without_the_job_scope_is_forbidden(secured: SecuredGateway) -> None:
    response = status_of(secured.url, bearer(secured.idp.token(scope="openid profile")))

    assert response.status_code == 403
    assert "'job' (auth.jwt.scope)" in response.json()["errors"]


def test_a_rotated_signing_key_is_picked_up_without_a_restart(secured: SecuredGateway) -> None:
    idp = secured.idp
    assert status_of(secured.url, bearer(idp.token())).status_code == 200
    rotated = SigningKey("rsa-2026-rotated")
    idp.publish(rotated)

    wait_until(
        lambda: status_of(secured.url, bearer(idp.token(rotated))).status_code == 200,
        timeout=15,
        message="a token signed by the newly published key is accepted",
    )


def test_the_jwks_is_fetched_once_not_per_request(secured: SecuredGateway) -> None:
    idp = secured.idp
    assert status_of(secured.url, bearer(idp.token())).status_code == 200
    before = idp.jwks_requests
    for _ in range(20):
        assert status_of(secured.url, bearer(idp.token())).status_code == 200
    assert idp.jwks_requests == before


def test_a_configured_public_key_file_replaces_the_jwks_url(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    idp = IdentityProvider(issuer="https://login.example.test", audience="preheat")
    try:
        key_file = tmp_path / "idp.pem"
        key_file.write_bytes(idp.keys[0].public_pem())
        gateway = make_gateway_thread(
            gateway_config(
                tmp_path,
                auth={
                    "tokens": False,
                    "jwt": {"public_key_file": str(key_file), "issuer": idp.issuer, "audience": idp.audience},
                },
            )
        )

        assert status_of(gateway.url, bearer(idp.token(kid="any-kid-at-all"))).status_code == 200
        assert status_of(gateway.url, bearer(idp.token(idp.keys[1]))).status_code == 401  # not the configured key
        assert status_of(gateway.url, bearer(gateway.token)).status_code == 401  # auth.tokens: false
        assert idp.jwks_requests == 0
    finally:
        idp.close()


def test_an_unreachable_identity_provider_is_a_503_not_a_crash(
    make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(
        gateway_config(
            tmp_path,
            auth={"jwt": {"jwks_url": "http://127.0.0.1:9/jwks.json", "issuer": "https://idp", "audience": "preheat"}},
        )
    )
    minter = TokenMinter("https://idp", "preheat")

    response = status_of(gateway.url, bearer(minter.token()))

    assert response.status_code == 503
    assert "auth.jwt.jwks_url" in response.json()["errors"]
    assert status_of(gateway.url, bearer(gateway.token)).status_code == 200  # tokens still work


def test_custom_mode_reads_only_the_configured_header(secured: SecuredGateway) -> None:
    token = secured.process.token
    assert status_of(secured.url, {"X-Api-Key": token}).status_code == 200
    assert status_of(secured.url, {"x-api-key": token}).status_code == 200  # header names are case-insensitive
    refused = status_of(secured.url, {"X-Api-Key": "not-a-token-at-all"})
    assert refused.status_code == 401 and "unknown token" in refused.json()["errors"]
    assert status_of(secured.url, {"X-Api-Key": ""}).status_code == 401
    assert status_of(secured.url, {"X-Other-Key": token}).status_code == 401


def test_a_malformed_basic_credential_is_a_401_not_a_500(secured: SecuredGateway) -> None:
    for value in (
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ):
        response = status_of(secured.url, {"Authorization": value})
        assert response.status_code == 401 and "Basic" in response.json()["errors"]


def test_basic_can_be_switched_off(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path, auth={"basic": False}))
    header = "Basic " + base64.b64encode(f"password:{gateway.token}".encode()).decode()

    response = status_of(gateway.url, {"Authorization": header})

    assert response.status_code == 401 and "auth.basic" in response.json()["errors"]


def test_without_an_explicit_mode_none_a_request_without_credentials_is_refused(
    make_gateway_thread: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))

    response = status_of(gateway.url, {})

    assert response.status_code == 401 and "missing credentials" in response.json()["errors"]
    assert "authentication is OFF" not in gateway.logs()


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        (
            {"jwt": {"issuer": "https://idp", "audience": "preheat"}},
            "auth.jwt.jwks_url: give exactly one of jwks_url or public_key_file",
        ),
        (
            {
                "jwt": {
                    "jwks_url": "https://idp/jwks",
                    "issuer": "https://idp",
                    "audience": "p",
                    "algorithms": ["HS256"],
                }
            },
            "auth.jwt.algorithms: HS256 not accepted",
        ),
        ({"jwt": {"jwks_url": "https://idp/jwks", "audience": "p"}}, "auth.jwt.issuer: required key is missing"),
        ({"custom_header": "Authorization"}, "auth.custom_header: 'Authorization' is reserved"),
        ({"custom_header": "X Api Key"}, "auth.custom_header: 'X Api Key' is not an HTTP header name"),
        ({"tokens": False}, "say mode: none explicitly"),
        ({"mode": "sometimes"}, "auth.mode: invalid enum value 'sometimes' (allowed: none, required)"),
    ],
)
def test_auth_config_mistakes_are_reported_by_path(auth: dict[str, object], words: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps(gateway_config(tmp_path, auth=auth)))

    result = run_cli("check-config", str(config), check=False)

    assert result.returncode == 2
    assert words in result.stdout


def test_a_public_key_file_that_is_no_key_is_a_config_error(tmp_path: Path) -> None:
    key_file = tmp_path / "idp.pem"
    key_file.write_text("not a key\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        json.dumps(
            gateway_config(tmp_path, auth={"jwt": {"public_key_file": str(key_file), "issuer": "i", "audience": "a"}})
        )
    )

    result = run_cli("check-config", str(config), check=False)

    assert result.returncode == 2
    assert "auth.jwt.public_key_file: " + str(key_file) + " is neither a PEM key" in result.stdout


# --- in-process: failures are counted by kind ---------------------------------------------


def test_failures_are_counted_by_kind_and_the_secret_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = build_config(
        {"server": {"state_dir": str(tmp_path)}, "auth": {"custom_header": "X-Api-Key"}}, source="test"
    )
    store = open_store(config.store_url)
    authenticator = Authenticator(config.auth, store)
    token, wrong = new_token(), "phg_" + "Z" * 43
    caplog.set_level("INFO", logger="gateway.auth")

    async def ok(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("OK")

    app = Starlette(
        routes=[Route("/healthy", ok)], middleware=[Middleware(AuthMiddleware, authenticator=authenticator)]
    )

    async def calls() -> list[int]:
        await store.open()
        try:
            await store.create_token("harbor", hash_token(token), ["job"], None)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
                return [
                    (await client.get("/healthy", headers=headers)).status_code
                    for headers in (
                        bearer(token),
                        bearer(wrong),
                        {"X-Api-Key": wrong},
                        {},
                        {"Authorization": "Digest abc"},
                    )
                ]
        finally:
            await store.close()

    assert asyncio.run(calls()) == [200, 401, 401, 401, 401]
    assert authenticator.failures == {"unknown_token": 2, "missing": 1, "scheme": 1}
    assert "authentication failed" in caplog.text
    assert wrong not in caplog.text and token not in caplog.text


def test_token_checks_never_compare_the_secret_itself(tmp_path: Path) -> None:
    """The store is searched by the token's SHA-256 hash only, so no comparison's timing depends on the secret."""
    config = build_config({"server": {"state_dir": str(tmp_path)}}, source="test")
    store = open_store(config.store_url)
    token = new_token()
    searched: list[str] = []
    real_find = store.find_token

    async def find_token(digest: str) -> Any:
        searched.append(digest)
        return await real_find(digest)

    store.find_token = find_token  # type: ignore[method-assign]

    async def check() -> None:
        await store.open()
        try:
            await store.create_token("harbor", hash_token(token), ["job"], None)
            await Authenticator(config.auth, store).authenticate(
                {"authorization": f"Bearer {token}"}
            )  # as the middleware passes them
        finally:
            await store.close()

    asyncio.run(check())
    assert searched == [hash_token(token)]


def test_the_embedded_gateway_needs_no_jwt_config(make_gateway_thread: MakeGateway, tmp_path: Path) -> None:
    gateway: GatewayUnderTest = make_gateway_thread(gateway_config(tmp_path))
    assert status_of(gateway.url, bearer(gateway.token)).status_code == 200
    assert status_of(gateway.url, bearer("a.b.c")).status_code == 401
