"""Every Harbor generation in every auth mode runs a whole preheat task against a real registry.

Each case replays what Harbor sends, byte for byte, and decodes the answers as strictly as
Harbor's Go code: health check ("Test connection", and the start of every task), create,
then poll until done (Kraken: Harbor stops at the 2xx). The image really lands in the
gateway's cache, and no secret shows up in any answer or in the gateway's log.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from tests.conftest import HarborToken
from tests.gateway_process import GatewayUnderTest
from tests.harbor.conftest import CUSTOM_HEADER, HarborInstance, SecuredGateway
from tests.harbor.driver import (
    FAIL,
    SUCCESS,
    DragonflyDriver,
    KrakenDriver,
    LegacyDragonflyDriver,
    PreheatingStatus,
    basic_forms,
)
from tests.harbor.idp import SigningKey
from tests.registry import PushedImage, Registry, push_image, unique_repository

GENERATIONS: dict[str, type[DragonflyDriver]] = {
    "harbor-2.1-2.11-legacy": LegacyDragonflyDriver,
    "harbor-2.12+-openapi": DragonflyDriver,
    "any-harbor-kraken": KrakenDriver,
}
SECURED_MODES = ["OAUTH-PAT", "OAUTH-JWT", "CUSTOM", "BASIC"]


@pytest.fixture
def image(origin: Registry) -> PushedImage:
    """A fresh two-layer image per test, so every task really fetches something."""
    return push_image(
        origin, unique_repository("harbor/conformance"), "v1", [40 * 1024, 60 * 1024], seed=random.randrange(1 << 30)
    )


def manifest_url(origin: Registry, image: PushedImage) -> str:
    return f"{origin.url}/v2/{image.repository}/manifests/{image.tag}"


def run_task(driver: DragonflyDriver, origin: Registry, image: PushedImage, pull_token: str) -> PreheatingStatus:
    """One Harbor preheat task for ``image``, with the pull token Harbor minted for it."""
    url, headers = manifest_url(origin, image), {"Authorization": pull_token}
    if isinstance(driver, (LegacyDragonflyDriver, KrakenDriver)):
        return driver.run_task(url, headers, image=image.repository, tag=image.tag or "", digest=image.manifest_digest)
    return driver.run_task(url, headers)


def gateway_job_id(driver: DragonflyDriver, status: PreheatingStatus) -> int:
    """The gateway's job id behind a Harbor task (Kraken: from the answer Harbor ignores)."""
    if isinstance(driver, KrakenDriver):
        (job_id,) = driver.job_ids()
        return job_id
    return int(status.task_id)


def cached(cache_dir: Path) -> set[str]:
    found = set()
    for path in (cache_dir / "blobs" / "sha256").glob("*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        found.add(f"sha256:{path.name}")
    return found


def assert_no_secret_leaked(gateway: GatewayUnderTest, driver: DragonflyDriver, secrets: list[str]) -> None:
    logs = gateway.logs()
    for secret in secrets:
        assert not any(secret in answer for answer in driver.answers), "a secret appeared in an answer"
        assert secret not in logs, "a secret appeared in the gateway log"


def assert_whole_task_succeeded(
    gateway: GatewayUnderTest,
    cache: Path,
    driver: DragonflyDriver,
    status: PreheatingStatus,
    image: PushedImage,
    source: str,
) -> None:
    assert status.status == SUCCESS, status.error
    job = gateway.wait_job(gateway_job_id(driver, status))  # the same job, read through the Open API
    assert job["state"] == "SUCCESS", job
    assert job["source"] == source
    assert set(image.blob_digests) <= cached(cache)
    if isinstance(driver, LegacyDragonflyDriver):
        assert 208 not in driver.http_statuses


SOURCES = {LegacyDragonflyDriver: "legacy", DragonflyDriver: "openapi", KrakenDriver: "kraken"}


@pytest.mark.parametrize("mode", SECURED_MODES)
@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_whole_task_succeeds_in_each_auth_mode(
    generation: str, mode: str, secured: SecuredGateway, origin: Registry, image: PushedImage, harbor_token: HarborToken
) -> None:
    instance = secured.instance(mode)
    driver = GENERATIONS[generation](secured.url, instance.mode, instance.info)
    pull_token = harbor_token(image.repository)

    status = run_task(driver, origin, image, pull_token)

    assert_whole_task_succeeded(secured.process, secured.cache, driver, status, image, SOURCES[type(driver)])
    assert_no_secret_leaked(secured.process, driver, [*instance.secrets, pull_token.removeprefix("Bearer ")])


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_whole_task_succeeds_with_auth_mode_none_when_the_gateway_says_so(
    generation: str, unsecured: GatewayUnderTest, origin: Registry, image: PushedImage, harbor_token: HarborToken
) -> None:
    driver = GENERATIONS[generation](unsecured.url, "NONE")
    pull_token = harbor_token(image.repository)

    status = run_task(driver, origin, image, pull_token)

    assert_whole_task_succeeded(unsecured, unsecured.workdir / "cache", driver, status, image, SOURCES[type(driver)])
    assert_no_secret_leaked(unsecured, driver, [pull_token.removeprefix("Bearer ")])
    assert "authentication is OFF (auth.mode: none)" in unsecured.logs()


def wrong_instances(secured: SecuredGateway) -> dict[str, HarborInstance]:
    """Plausible misconfigurations an administrator makes; each must fail "Test connection"."""
    return {
        "NONE": HarborInstance("NONE", "NONE"),
        "OAUTH-PAT": HarborInstance("OAUTH-PAT", "OAUTH", {"token": "phg_" + "A" * 43}),
        "OAUTH-JWT": HarborInstance("OAUTH-JWT", "OAUTH", {"token": secured.idp.token(SigningKey("rsa-1"))}),
        "CUSTOM": HarborInstance("CUSTOM", "CUSTOM", {CUSTOM_HEADER: "phg_" + "B" * 43}),
        "CUSTOM-wrong-header": HarborInstance("CUSTOM", "CUSTOM", {"X-Auth-Token": secured.process.token}),
        "BASIC": HarborInstance("BASIC", "BASIC", {"username": "admin", "password": "Harbor12345-not-a-token"}),
    }


@pytest.mark.parametrize("mistake", ["NONE", "OAUTH-PAT", "OAUTH-JWT", "CUSTOM", "CUSTOM-wrong-header", "BASIC"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_wrong_credential_is_unhealthy_at_test_connection(
    generation: str, mistake: str, secured: SecuredGateway
) -> None:
    instance = wrong_instances(secured)[mistake]
    driver = GENERATIONS[generation](secured.url, instance.mode, instance.info)

    assert driver.health() is False
    assert all('"errors"' in answer and "unauthorized" in answer for answer in driver.answers), driver.answers
    assert_no_secret_leaked(secured.process, driver, instance.secrets)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_basic_accepts_either_form_harbor_sends_when_both_fields_hold_the_token(
    generation: str, secured: SecuredGateway
) -> None:
    token = secured.process.token
    for header in basic_forms({"username": token, "password": token}):
        driver = GENERATIONS[generation](secured.url)
        driver.http.headers.update(header)
        assert driver.health() is True


@pytest.mark.parametrize("generation", GENERATIONS)
def test_basic_never_takes_the_non_secret_half_as_proof(generation: str, secured: SecuredGateway) -> None:
    """With a normal username in Harbor's form, its ``username:U`` header carries no secret and must fail."""
    (password_form,) = basic_forms({"password": secured.process.token})
    (username_form,) = basic_forms({"username": "robot-harbor"})
    accepted, refused = GENERATIONS[generation](secured.url), GENERATIONS[generation](secured.url)
    accepted.http.headers.update(password_form)
    refused.http.headers.update(username_form)

    assert accepted.health() is True
    assert refused.health() is False
    assert "both of Harbor's username and password fields" in refused.answers[-1]


def test_harbors_basic_mode_with_a_normal_username_fails_one_request_in_eight(secured: SecuredGateway) -> None:
    """Why docs/harbor.md says: token in both fields, or better, OAUTH. Harbor sends ``username:U`` in 12.5% of
    requests, so a task of a health check, a create and three polls fails in 1 - 0.875**5 = 49% of runs."""
    driver = DragonflyDriver(secured.url, "BASIC", {"username": "robot-harbor", "password": secured.process.token})
    random.seed(7)
    outcomes = [driver.health() for _ in range(400)]
    refused = outcomes.count(False) / len(outcomes)
    assert 0.07 < refused < 0.18, refused


def test_a_missing_tag_fails_with_an_actionable_error_that_every_generation_shows(
    secured: SecuredGateway, origin: Registry, harbor_token: HarborToken
) -> None:
    """2.1-2.11 show only HTTP errors, so the legacy create answers it; 2.12+ show the job's error list."""
    instance = secured.instance("OAUTH-PAT")
    url = f"{origin.url}/v2/library/app/manifests/no-such-tag"
    legacy = LegacyDragonflyDriver(secured.url, instance.mode, instance.info)
    openapi = DragonflyDriver(secured.url, instance.mode, instance.info)

    old = legacy.run_task(url, {"Authorization": harbor_token("library/app")}, image="library/app", tag="no-such-tag")
    new = openapi.run_task(url, {"Authorization": harbor_token("library/app")})

    assert old.status == new.status == FAIL
    assert old.error.startswith(f'POST "{secured.url}/preheats" error: 404 Not Found ')
    for shown in (old.error, new.error):
        assert "library/app:no-such-tag" in shown and "not found" in shown, shown
