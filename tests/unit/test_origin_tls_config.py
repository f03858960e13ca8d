"""``registries.tls`` in the config file, and the create-time manifest check's TLS and credentials.

Every mistake in a ``registries.tls`` entry is an error naming its key path, found when the
config is loaded (``check-config`` shows them all), not when a job first reaches the host.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from adapters.manifest import Manifest
from adapters.oci import RegistryAuth
from adapters.reference import ImageRef
from gateway.config import ConfigError, build_config
from gateway.jobs import JobSpec
from gateway.precheck import check_manifest
from tests.pki import PrivateCA

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def ca() -> PrivateCA:
    return PrivateCA()


def config_errors(tmp_path: Path, tls: list[dict[str, Any]]) -> list[str]:
    try:
        build_config({"server": {"state_dir": str(tmp_path)}, "registries": {"tls": tls}}, source="test")
    except ConfigError as error:
        return error.errors
    return []


def test_a_ca_file_and_a_skip_verify_entry_become_contexts_for_their_hosts(tmp_path: Path, ca: PrivateCA) -> None:
    (tmp_path / "ca.pem").write_text(ca.pem)
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path)},
            "registries": {
                "tls": [
                    {"host": "harbor.internal", "ca_file": str(tmp_path / "ca.pem")},
                    {"host": "test-registry:5000", "insecure_skip_verify": True},
                ]
            },
        },
        source="test",
    )
    contexts = config.registries.tls_contexts()
    assert set(contexts) == {"harbor.internal", "test-registry:5000"}
    assert contexts["harbor.internal"].verify_mode == ssl.CERT_REQUIRED
    assert contexts["harbor.internal"].get_ca_certs()[0]["subject"] == ((("commonName", ca.name),),)
    assert contexts["test-registry:5000"].verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"host": "harbor.internal"}, "registries.tls[0].ca_file: give ca_file"),
        ({"host": "harbor.internal", "insecure_skip_verify": False}, "registries.tls[0].ca_file: give ca_file"),
        ({"host": "harbor.internal", "ca_file": "/nonexistent/ca.pem"}, "registries.tls[0].ca_file: cannot read"),
        (
            {"host": "harbor.internal", "ca_file": "{tmp}/notes.txt"},
            "registries.tls[0].ca_file: {tmp}/notes.txt holds no PEM",
        ),
        (
            {"host": "harbor.internal", "ca_file": "{tmp}/broken.pem"},
            "registries.tls[0].ca_file: {tmp}/broken.pem is not a valid",
        ),
        (
            {"host": "https://harbor.internal", "insecure_skip_verify": True},
            "registries.tls[0].host: 'https://harbor.internal'",
        ),
        ({"host": "harbor.internal", "cafile": "/x"}, "registries.tls[0].cafile: unknown key"),
        (
            {"host": "harbor.internal", "ca_file": "{tmp}/ca.pem", "insecure_skip_verify": True},
            "registries.tls[0].insecure_skip_verify: it makes ca_file pointless",
        ),
    ],
)
def test_a_broken_entry_is_an_error_naming_its_key(
    tmp_path: Path, ca: PrivateCA, entry: dict[str, Any], error: str
) -> None:
    (tmp_path / "ca.pem").write_text(ca.pem)
    (tmp_path / "notes.txt").write_text("not a certificate")
    (tmp_path / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    entry = {
        key: value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value for key, value in entry.items()
    }

    errors = config_errors(tmp_path, [entry])

    assert errors and errors[0].startswith(error.replace("{tmp}", str(tmp_path))), errors


def test_one_host_is_configured_once_whether_or_not_its_default_port_is_written(tmp_path: Path) -> None:
    errors = config_errors(
        tmp_path,
        [
            {"host": "harbor.internal", "insecure_skip_verify": True},
            {"host": "Harbor.Internal:443", "insecure_skip_verify": True},
        ],
    )
    assert errors == ["registries.tls[1].host: Harbor.Internal:443 is already configured by tls[0]"]
    assert (
        config_errors(
            tmp_path,
            [
                {"host": "harbor.internal", "insecure_skip_verify": True},
                {"host": "harbor.internal:8443", "insecure_skip_verify": True},
            ],
        )
        == []
    ), "another port is another authority"


class RecordingOci:
    """Stands in for the registry client: records the auth the check would read the manifest with."""

    def __init__(self) -> None:
        self.auths: list[RegistryAuth] = []

    async def get_manifest(self, _ref: ImageRef, auth: RegistryAuth) -> Manifest:
        self.auths.append(auth)
        raise AssertionError("unused")  # the check logs and accepts an unexpected failure


async def test_the_create_time_check_uses_the_jobs_tls_and_then_not_the_configured_credentials(
    tmp_path: Path, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBOT_SECRET", "s3cret")
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path)},
            "registries": {
                "credentials": [
                    {"host": "harbor.internal", "username": "robot$preheat", "password_env": "ROBOT_SECRET"}
                ]
            },
        },
        source="test",
    )
    oci = RecordingOci()
    url = "https://harbor.internal/v2/library/app/manifests/1.0"

    await check_manifest(oci, config, JobSpec(type="image", urls=[url]))  # type: ignore[arg-type]
    await check_manifest(oci, config, JobSpec(type="image", urls=[url], certificate_chain=[ca.pem]))  # type: ignore[arg-type]
    await check_manifest(oci, config, JobSpec(type="image", urls=[url], insecure_skip_verify=True))  # type: ignore[arg-type]

    plain, own_ca, skip = oci.auths
    assert plain.credentials is not None and plain.credentials.username == "robot$preheat" and plain.ssl is None
    assert own_ca.credentials is None and own_ca.ssl is not None
    assert own_ca.ssl.get_ca_certs()[0]["subject"] == ((("commonName", ca.name),),)
    assert skip.credentials is None and skip.ssl is not None and skip.ssl.verify_mode == ssl.CERT_NONE
