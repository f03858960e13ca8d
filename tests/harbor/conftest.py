"""Fixtures for the Harbor conformance suite: an identity provider, gateways in every auth mode, Harbor's credentials.

Two long-lived gateways (package scope) serve the whole-task matrix: ``secured`` accepts every auth mode
Harbor has (personal access tokens, IdP JWTs, a custom header, Harbor's BASIC quirk) and
``unsecured`` runs with ``auth.mode: none``. Both know the origin's robot account, which the
Kraken dialect needs (its events carry no credentials). Tests that need a clean job list or
a special config start their own gateway with ``make_gateway_thread``. All of them are served
by threads of the test process (``tests.gateway_thread``): nothing here needs a process boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROBOT_PASSWORD, ROBOT_USER
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.gateway_thread import GatewayThread
from tests.harbor.idp import IdentityProvider
from tests.registry import Registry

ROBOT_ENV = "HARBOR_ROBOT_SECRET"
CUSTOM_HEADER = "X-Api-Key"


def robot_credentials(origin: Registry) -> dict[str, Any]:
    """``registries`` for a gateway that may read ``origin`` as Harbor's preheat robot."""
    return {
        "allow": ["127.0.0.1"],
        "credentials": [{"host": origin.host, "username": ROBOT_USER, "password_env": ROBOT_ENV}],
    }


@dataclass
class HarborInstance:
    """What an administrator types into Harbor's "New instance" form: auth mode and auth info."""

    label: str
    mode: str
    info: dict[str, str] = field(default_factory=dict)

    @property
    def secrets(self) -> list[str]:
        return [value for value in self.info.values() if len(value) > 8]


@dataclass
class SecuredGateway:
    process: GatewayUnderTest
    idp: IdentityProvider
    cache: Path

    @property
    def url(self) -> str:
        return self.process.url

    def instance(self, label: str) -> HarborInstance:
        """A correctly configured Harbor instance for one auth mode."""
        token = self.process.token
        return {
            "OAUTH-PAT": HarborInstance(label, "OAUTH", {"token": token}),
            "OAUTH-JWT": HarborInstance(label, "OAUTH", {"token": self.idp.token()}),
            "CUSTOM": HarborInstance(label, "CUSTOM", {CUSTOM_HEADER: token}),
            # The recommended BASIC setup: the gateway token in both of Harbor's fields.
            "BASIC": HarborInstance(label, "BASIC", {"username": token, "password": token}),
        }[label]


def _start(tmp: Path, config: dict[str, Any]) -> GatewayThread:
    return GatewayThread(tmp, config, env={ROBOT_ENV: ROBOT_PASSWORD}).start()


@pytest.fixture(scope="session")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    try:
        yield provider
    finally:
        provider.close()


# Package scope, not session: a thread of this process serves them, so they end with the Harbor tests. A test
# elsewhere that patches a process-wide name (tests/unit/test_retry.py replaces asyncio.sleep) would otherwise
# run while their event loops call it.
@pytest.fixture(scope="package")
def secured(
    origin: Registry, idp: IdentityProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredGateway]:
    tmp = tmp_path_factory.mktemp("secured-gateway")
    config = gateway_config(
        tmp,
        registries=robot_credentials(origin),
        auth={
            "custom_header": CUSTOM_HEADER,
            "basic": True,
            "jwt": {"jwks_url": idp.jwks_url, "issuer": idp.issuer, "audience": idp.audience},
        },
    )
    gateway = _start(tmp, config)
    try:
        yield SecuredGateway(gateway, idp, tmp / "cache")
    finally:
        gateway.stop()


@pytest.fixture(scope="package")
def unsecured(origin: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("unsecured-gateway")
    gateway = _start(tmp, gateway_config(tmp, registries=robot_credentials(origin), auth={"mode": "none"}))
    try:
        yield gateway
    finally:
        gateway.stop()
