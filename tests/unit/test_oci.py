"""adapters/oci.py: the registry client: read caps, token services and tokens, challenges, manifests, quoted errors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx
import msgspec
import pytest

from adapters.base import Credentials
from adapters.oci import OciClient, ReadLimits, RegistryAuth, _parse_token
from adapters.reference import OCI_MANIFEST, parse_manifest_url
from adapters.retry import RegistryError
from adapters.urlpolicy import URLPolicy
from tests.unit.registry_stubs import REF, Seen, mock_client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- what is read from a registry, and where credentials go (issue 17) ------------------------


def test_the_caps_default_to_what_the_docs_say_and_the_config_keys_carry_them() -> None:
    from gateway.config import RegistriesConfig

    assert ReadLimits() == ReadLimits(
        manifest_bytes=4 << 20,
        error_body_bytes=64 << 10,
        token_bytes=64 << 10,
        blob_bytes=64 << 30,
        manifest_cache_bytes=32 << 20,
    )
    assert RegistriesConfig().limits() == ReadLimits()
    tuned = RegistriesConfig(
        max_manifest_bytes=8192,
        max_blob_bytes=1 << 20,
        max_error_body_bytes=2048,
        max_token_bytes=4096,
        manifest_cache_bytes=0,
    )
    assert tuned.limits() == ReadLimits(
        manifest_bytes=8192, error_body_bytes=2048, token_bytes=4096, blob_bytes=1 << 20, manifest_cache_bytes=0
    )
    with pytest.raises(ValueError, match="max_token_bytes: must be at least 1024"):
        RegistriesConfig(max_token_bytes=10)


def challenging(realm: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if "/token" in request.url.path:
            return httpx.Response(200, json={"token": "T"})
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="registry"'})

    return answer


ROBOT = Credentials("robot$preheat", "robot-secret")


@pytest.mark.anyio
async def test_an_https_registry_credentials_never_go_to_a_plain_http_token_service() -> None:
    seen: Seen = []
    async with mock_client(challenging("http://auth.example/token"), seen) as http:
        client = OciClient(http, URLPolicy(allow=("registry.example", "auth.example")))
        ref = parse_manifest_url("https://registry.example/v2/library/app/manifests/1.0")
        with pytest.raises(
            RegistryError,
            match=r"token service http://auth.example/token is plain http: the gateway does not send registry.example's credentials there in clear",
        ):
            await client.get_manifest(ref, RegistryAuth(credentials=ROBOT))
    assert [url for url, _ in seen] == ["https://registry.example/v2/library/app/manifests/1.0"]


@pytest.mark.anyio
async def test_with_an_allowlist_a_token_service_must_be_on_it_and_the_error_says_so() -> None:
    seen: Seen = []
    async with mock_client(challenging("https://auth.elsewhere.example/token"), seen) as http:
        client = OciClient(http, URLPolicy(allow=("registry.example",)))
        ref = parse_manifest_url("https://registry.example/v2/library/app/manifests/1.0")
        with pytest.raises(RegistryError) as refused:
            await client.get_manifest(ref, RegistryAuth(credentials=ROBOT))
    message = str(refused.value)
    assert (
        "host auth.elsewhere.example:443, the token service registry.example names, is not allowed: add it to registries.allow"
        in message
    )
    assert "redirect" not in message
    assert len(seen) == 1


@pytest.mark.anyio
async def test_challenges_are_kept_per_origin_that_issued_them() -> None:
    seen: Seen = []
    async with mock_client(challenging("https://registry.example/token"), seen) as http:
        client = OciClient(http, URLPolicy(allow=("registry.example",)))
        ref = parse_manifest_url("https://registry.example/mirror/v2/library/app/manifests/1.0")
        with pytest.raises(RegistryError):
            await client.get_manifest(ref, RegistryAuth(credentials=ROBOT))
    assert list(client._challenges) == [("https://registry.example:443", None)]  # (origin, the job's own TLS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"token": "a b"}', "not a single word of printable ASCII"),
        (b'{"token": "abc\\r\\nX-Injected: 1"}', "not a single word of printable ASCII"),
        (b'{"token": {"nested": 1}}', "not a single word of printable ASCII"),
        (b'{"access_token": ""}', "answered without a token"),
        (b"[" * 100_000, "answered without a token"),
    ],
)
def test_a_token_answer_must_hold_one_header_safe_token(body: bytes, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        _parse_token(body, REF)


def test_a_token_is_reused_no_longer_than_an_hour_whatever_it_claims() -> None:
    assert _parse_token(b'{"token": "t", "expires_in": 1e300}', REF) == ("t", 3600.0)
    assert _parse_token(b'{"token": "t", "expires_in": "nan"}', REF) == ("t", 60.0)
    assert _parse_token(b'{"token": "t", "expires_in": -5}', REF) == ("t", 60.0)


def manifest_bytes(pad: int) -> bytes:
    config = b"{}"
    return msgspec.json.encode(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": 2,
            },
            "layers": [],
            "annotations": {"pad": "p" * pad},
        }
    )


@pytest.mark.anyio
async def test_the_by_digest_manifest_cache_is_bounded_by_bytes_not_entries() -> None:
    bodies = {
        ("sha256:" + hashlib.sha256(raw).hexdigest()): raw for raw in (manifest_bytes(100_000 + i) for i in range(40))
    }
    seen: Seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=bodies[request.url.path.rsplit("/", 1)[1]], headers={"Content-Type": OCI_MANIFEST}
        )

    async with mock_client(answer, seen) as http:
        client = OciClient(
            http, URLPolicy(allow=("registry.example",)), limits=ReadLimits(manifest_cache_bytes=1 << 20)
        )
        ref = parse_manifest_url("https://registry.example/v2/library/app/manifests/1.0")
        for digest in bodies:
            assert (await client.get_manifest(ref, RegistryAuth(), digest)).digest == digest
        assert client._manifests.currsize <= 1 << 20
        assert 5 <= len(client._manifests) <= 10
        last = list(bodies)[-1]
        cached = await client.get_manifest(ref, RegistryAuth(), last)
        assert cached.raw == bodies[last] and cached.doc.config is not None and len(seen) == 40, (
            "a hit is served from memory"
        )


@pytest.mark.anyio
async def test_a_deeply_nested_manifest_is_a_clean_registry_error() -> None:
    deep = b'{"schemaVersion": 2, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    async with mock_client(lambda request: httpx.Response(200, content=deep), []) as http:
        client = OciClient(http, URLPolicy(allow=("registry.example",)))
        with pytest.raises(RegistryError, match="is not a valid OCI/Docker manifest \\(it is nested too deeply\\)"):
            await client.get_manifest(parse_manifest_url("https://registry.example/v2/a/manifests/1"), RegistryAuth())


@pytest.mark.anyio
async def test_an_error_message_from_a_registry_is_quoted_cut_and_clean() -> None:
    body = msgspec.json.encode({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "\x1b]0;pwned\x07" + "m" * 20_000}]})
    async with mock_client(lambda request: httpx.Response(404, content=body), []) as http:
        client = OciClient(http, URLPolicy(allow=("registry.example",)))
        with pytest.raises(RegistryError) as failed:
            await client.get_manifest(parse_manifest_url("https://registry.example/v2/a/manifests/1"), RegistryAuth())
    message = str(failed.value)
    assert "not found (404 MANIFEST_UNKNOWN: ]0;pwned" in message and "…[cut]" in message
    assert len(message) < 500 and "\x1b" not in message and "\x07" not in message
