"""Shared fixtures: a Harbor-like origin (token service + CNCF distribution) and pull-through caches.

Real processes on 127.0.0.1, built on ``tests.registry``.  Missing tools skip
the tests locally and fail them in CI (``PREHEAT_GATEWAY_REQUIRE_PREREQS=1``),
via ``require``, which other fixture modules (PostgreSQL, Chromium, the gateway
process) should reuse.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest

from tests.gateway_process import GatewayProcess, GatewayUnderTest, gateway_config
from tests.gateway_thread import GatewayThread
from tests.registry import (
    MissingPrerequisite,
    PushedImage,
    PushedIndex,
    Registry,
    TokenService,
    find_registry_binary,
    push_image,
    push_index,
    start_registry,
)

T = TypeVar("T")

REQUIRE_PREREQS_ENV = "PREHEAT_GATEWAY_REQUIRE_PREREQS"

# Harbor-side accounts: the robot Harbor would configure for preheat, and the
# account a pull-through cache uses to read the origin.
ROBOT_USER, ROBOT_PASSWORD = "robot$preheat", "robot-secret"
CACHE_USER, CACHE_PASSWORD = "cache-user", "cache-secret"
USERS = {ROBOT_USER: ROBOT_PASSWORD, CACHE_USER: CACHE_PASSWORD}


def require(prerequisite: Callable[[], T]) -> T:
    """Run a prerequisite check; on ``MissingPrerequisite`` skip, or fail when CI demands everything.

    Usage: ``binary = require(find_registry_binary)``; any callable raising
    ``MissingPrerequisite`` (e.g. a PostgreSQL or Chromium finder) works.
    """
    try:
        return prerequisite()
    except MissingPrerequisite as missing:
        if os.environ.get(REQUIRE_PREREQS_ENV) == "1":
            pytest.fail(f"missing prerequisite ({REQUIRE_PREREQS_ENV}=1): {missing}", pytrace=False)
        pytest.skip(f"missing prerequisite: {missing}")


@dataclass(frozen=True)
class OriginImages:
    """The images every test can rely on finding in ``origin``."""

    single: PushedImage  # library/app:1.0, Docker schema-2, 3 layers
    multiarch: PushedIndex  # library/multi:2.0, OCI index, linux/amd64 + linux/arm64


class MakeCache(Protocol):
    def __call__(
        self,
        *,
        token: TokenService | None = None,
        proxy_remote: str | None = None,
        proxy_username: str | None = CACHE_USER,
        proxy_password: str | None = CACHE_PASSWORD,
    ) -> Registry: ...


class HarborToken(Protocol):
    def __call__(self, repository: str, actions: Sequence[str] = ("pull",), expires_in: int = 300) -> str: ...


@pytest.fixture(scope="session")
def registry_binary() -> str:
    """Path of CNCF distribution's binary; skips (or fails in CI) when not installed."""
    return require(find_registry_binary)


@pytest.fixture(scope="session")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    """Harbor core's token service: robot and cache accounts, both limited to pull."""
    service = TokenService(
        USERS,
        tmp_path_factory.mktemp("token-service"),
        grants={ROBOT_USER: {"pull"}, CACHE_USER: {"pull"}},
    )
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="session")
def origin(
    registry_binary: str, token_service: TokenService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A token-protected registry, like the one behind Harbor; anonymous reads get 401."""
    with start_registry(tmp_path_factory.mktemp("origin"), token=token_service) as registry:
        yield registry


@pytest.fixture(scope="session")
def images(origin: Registry) -> OriginImages:
    """Push the reference images once per session (push tokens are minted, not requested)."""
    single = push_image(origin, "library/app", "1.0", [300 * 1024, 400 * 1024, 500 * 1024], seed=1)
    multiarch = push_index(
        origin,
        "library/multi",
        "2.0",
        {"linux/amd64": [200 * 1024, 300 * 1024], "linux/arm64": [200 * 1024, 300 * 1024]},
        seed=2,
    )
    return OriginImages(single=single, multiarch=multiarch)


@pytest.fixture
def make_cache(registry_binary: str, origin: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeCache]:
    """Factory for fresh pull-through caches in front of ``origin`` (as ``cache-user``), stopped at test end.

    ``token=`` protects the cache itself; other ``proxy_*`` values point it
    elsewhere or give it wrong credentials.
    """
    with ExitStack() as running:

        def make(
            *,
            token: TokenService | None = None,
            proxy_remote: str | None = None,
            proxy_username: str | None = CACHE_USER,
            proxy_password: str | None = CACHE_PASSWORD,
        ) -> Registry:
            cache = start_registry(
                tmp_path_factory.mktemp("cache"),
                token=token,
                proxy_remote=proxy_remote or origin.url,
                proxy_username=proxy_username,
                proxy_password=proxy_password,
            )
            return running.enter_context(cache)

        yield make


@pytest.fixture
def harbor_token(token_service: TokenService) -> HarborToken:
    """``harbor_token("library/app")`` -> ``"Bearer <jwt>"``, as Harbor puts it in ``headers.Authorization``."""

    def make(repository: str, actions: Sequence[str] = ("pull",), expires_in: int = 300) -> str:
        return f"Bearer {token_service.mint(repository, actions, expires_in)}"

    return make


G = TypeVar("G", bound=GatewayUnderTest, covariant=True)


class MakeGateway(Protocol[G]):
    def __call__(
        self, config: dict[str, Any] | None = None, *, env: Mapping[str, str] | None = None, start: bool = True
    ) -> G: ...


def _gateways(kind: type[GatewayProcess] | type[GatewayThread], tmp: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[GatewayUnderTest] = []

    def make(
        config: dict[str, Any] | None = None, *, env: Mapping[str, str] | None = None, start: bool = True
    ) -> GatewayUnderTest:
        workdir = tmp.mktemp("gateway")
        gateway = kind(workdir, config if config is not None else gateway_config(workdir), env)
        started.append(gateway)
        return gateway.start() if start else gateway

    try:
        yield make
    finally:
        for gateway in started:
            gateway.kill()


@pytest.fixture
def make_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeGateway[GatewayProcess]]:
    """Factory for gateway processes (``python -m gateway serve``), killed at test end.

    ``config`` is a whole config dict (see ``tests.gateway_process.gateway_config``); its
    ``server.listen`` and ``server.state_dir`` default to a free port and a fresh directory.
    """
    yield from _gateways(GatewayProcess, tmp_path_factory)


@pytest.fixture
def make_gateway_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeGateway[GatewayThread]]:
    """As ``make_gateway``, served by a thread of the test process (``tests.gateway_thread``), stopped at test end.

    For tests that need no process boundary: no SIGKILL, no peak memory, no attack on the server itself.
    """
    yield from _gateways(GatewayThread, tmp_path_factory)
