"""Manifest URLs, references, platform choice and how a blob is checked (adapters/reference.py, manifest.py, streaming.py, oci.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import httpx
import msgspec
import pytest

from adapters.base import Credentials
from adapters.fingerprints import Fingerprints
from adapters.manifest import Blob, Manifest, ManifestDoc, select_platforms
from adapters.oci import OciClient, ReadLimits, RegistryAuth, _parse_token
from adapters.redirects import get_following_redirects
from adapters.reference import DIGEST_RE, INDEX_TYPES, OCI_INDEX, OCI_MANIFEST, ImageRef, parse_manifest_url
from adapters.retry import RegistryError
from adapters.streaming import DiscardSink, Verify
from adapters.transport import new_client
from adapters.urlpolicy import URLPolicy, origin
from tests.fakes.raw_http import Handler, answering, read_head, serve


def test_manifest_urls_split_into_registry_repository_and_reference() -> None:
    ref = parse_manifest_url("https://harbor.example.com/v2/library/alpine/manifests/3.19")
    assert (ref.scheme, ref.host, ref.repository, ref.reference) == (
        "https",
        "harbor.example.com",
        "library/alpine",
        "3.19",
    )
    assert ref.blob_url("sha256:" + "a" * 64) == f"https://harbor.example.com/v2/library/alpine/blobs/sha256:{'a' * 64}"
    prefixed = parse_manifest_url(f"http://gw:5000/mirror/v2/proj/app/manifests/sha256:{'b' * 64}")
    assert prefixed.prefix == "/mirror" and prefixed.name == f"proj/app@sha256:{'b' * 64}"


@pytest.mark.parametrize(
    "url",
    [
        "https://h/library/alpine:3.19",
        "https://h/v2/Library/x/manifests/1",
        "https://h/v2/a/manifests/",
        "file:///v2/a/manifests/b",
        "https://h/v2/a/blobs/sha256:aa",
    ],
)
def test_anything_else_is_not_a_manifest_url(url: str) -> None:
    with pytest.raises(ValueError, match="not a manifest URL"):
        parse_manifest_url(url)


def index(*platforms: dict[str, object]) -> Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"digest": f"sha256:{i:064x}", "platform": p, **({"annotations": p.pop("ann")} if "ann" in p else {})}
            for i, p in enumerate(platforms)
        ],
    }
    raw = msgspec.json.encode(doc)
    return Manifest(OCI_INDEX, "sha256:x", raw, msgspec.json.decode(raw, type=ManifestDoc))


REF = ImageRef("https", "h", "app", "1")


def test_a_platform_picks_one_entry_and_all_picks_every_runnable_one() -> None:
    manifest = index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "unknown", "architecture": "unknown"},
        {"os": "linux", "architecture": "amd64", "ann": {"vnd.docker.reference.type": "attestation-manifest"}},
    )
    assert manifest.media_type in INDEX_TYPES
    assert [e.digest[-1] for e in select_platforms(manifest, "linux/arm64", REF)] == ["1"]
    assert [e.digest[-1] for e in select_platforms(manifest, "linux/arm64/v8", REF)] == ["1"]
    assert [e.digest[-1] for e in select_platforms(manifest, "all", REF)] == ["0", "1"]


def test_a_missing_platform_says_which_ones_exist() -> None:
    with pytest.raises(
        RegistryError, match=r"no matching manifest for platform linux/s390x in app:1 \(it has linux/amd64\)"
    ):
        select_platforms(index({"os": "linux", "architecture": "amd64"}), "linux/s390x", REF)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BLOB = b"layer bytes " * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def blob_answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


ORIGIN = parse_manifest_url("http://origin.example/v2/library/app/manifests/1.0")


async def fetch(base_url: str, verify: Verify, fingerprints: Fingerprints | None = None) -> int:
    async with new_client(timeout=5) as http:
        client = OciClient(http, URLPolicy(allow=("127.0.0.1",)), fingerprints=fingerprints)
        # One origin's blob read through the cache at ``base_url``, as the mirror adapter reads it.
        url = f"{base_url}/v2/library/app/blobs/{BLOB_DIGEST}"
        return await client.fetch_blob(
            ORIGIN, Blob(BLOB_DIGEST, len(BLOB), ""), RegistryAuth(), DiscardSink, url=url, verify=verify
        )


@pytest.mark.anyio
async def test_a_digest_check_catches_corrupt_bytes_that_a_size_check_lets_through() -> None:
    corrupt = b"L" + BLOB[1:]
    async with serve(answering(blob_answer(corrupt))) as url:
        with pytest.raises(RegistryError, match="failed its digest check"):
            await fetch(url, "digest")
        assert await fetch(url, "size") == len(BLOB)


@pytest.mark.anyio
async def test_a_size_check_catches_a_blob_of_the_wrong_length() -> None:
    async with serve(answering(blob_answer(BLOB[:-1]))) as url:
        with pytest.raises(RegistryError, match=f"was {len(BLOB) - 1} bytes where the manifest says {len(BLOB)}"):
            await fetch(url, "size")


CORRUPT = b"L" + BLOB[1:]


def cache_serving(body: bytes, requests: list[str], hold: asyncio.Event | None = None) -> Handler:
    """A cache that answers each request with ``body``; with ``hold``, the second half waits for it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append((await read_head(reader))[0])
        half = len(body) // 2
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:half]))
        await writer.drain()
        if hold is not None:
            await hold.wait()
        writer.write(body[half:])
        await writer.drain()
        writer.close()

    return answer


async def under_check(fingerprints: Fingerprints) -> None:
    async with asyncio.timeout(5):
        while fingerprints.pending(BLOB_DIGEST, ORIGIN.base) is None:
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_copy_of_a_blob_already_checked_is_compared_by_fingerprint_instead_of_rehashed() -> None:
    fingerprints, good_requests, bad_requests = Fingerprints(), list[str](), list[str]()
    async with serve(cache_serving(BLOB, good_requests)) as good, serve(cache_serving(CORRUPT, bad_requests)) as bad:
        assert await fetch(good, "digest", fingerprints) == len(BLOB)
        assert fingerprints.known(BLOB_DIGEST) is not None
        assert await fetch(good, "digest", fingerprints) == len(BLOB)
        with pytest.raises(RegistryError, match=f"differs from a copy of {BLOB_DIGEST} that passed its digest check"):
            await fetch(bad, "digest", fingerprints)
    assert len(good_requests) == 2 and len(bad_requests) == 1


@pytest.mark.anyio
async def test_copies_read_at_once_wait_for_the_one_whose_digest_is_being_checked() -> None:
    fingerprints, hold, first, second = Fingerprints(), asyncio.Event(), list[str](), list[str]()
    async with serve(cache_serving(BLOB, first, hold)) as slow, serve(cache_serving(BLOB, second)) as fast:
        checking = asyncio.create_task(fetch(slow, "digest", fingerprints))
        await under_check(fingerprints)
        compared = asyncio.create_task(fetch(fast, "digest", fingerprints))
        await asyncio.sleep(0.3)
        assert not compared.done(), "a copy read for comparison waits for the checked copy"
        hold.set()
        assert await asyncio.gather(checking, compared) == [len(BLOB), len(BLOB)]
    assert len(first) == len(second) == 1


@pytest.mark.anyio
async def test_a_corrupt_copy_read_at_once_with_the_checked_one_fails_once_that_one_passes() -> None:
    fingerprints, hold = Fingerprints(), asyncio.Event()
    async with serve(cache_serving(BLOB, [], hold)) as slow, serve(cache_serving(CORRUPT, [])) as bad:
        checking = asyncio.create_task(fetch(slow, "digest", fingerprints))
        await under_check(fingerprints)
        compared = asyncio.create_task(fetch(bad, "digest", fingerprints))
        await asyncio.sleep(0.1)
        hold.set()
        assert await checking == len(BLOB)
        with pytest.raises(RegistryError, match="differs from a copy of"):
            await compared


@pytest.mark.anyio
async def test_when_the_checked_copy_fails_a_copy_waiting_on_it_is_read_again_and_checks_its_own_digest() -> None:
    fingerprints, hold, good_requests = Fingerprints(), asyncio.Event(), list[str]()
    async with serve(cache_serving(CORRUPT, [], hold)) as bad, serve(cache_serving(BLOB, good_requests)) as good:
        checking = asyncio.create_task(fetch(bad, "digest", fingerprints))
        await under_check(fingerprints)
        compared = asyncio.create_task(fetch(good, "digest", fingerprints))
        async with asyncio.timeout(5):  # until the copy has chosen to wait for the checked one
            while fingerprints.checks["fingerprint"] < 1:
                await asyncio.sleep(0.01)
        hold.set()
        with pytest.raises(RegistryError, match="failed its digest check"):
            await checking
        assert await compared == len(BLOB)
    assert len(good_requests) == 2, "read once for comparison, once more through sha256"
    assert fingerprints.known(BLOB_DIGEST) is not None


@pytest.mark.anyio
async def test_a_cache_failing_before_its_first_byte_never_makes_another_copy_wait() -> None:
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
    fingerprints, good_requests = Fingerprints(), list[str]()
    async with serve(answering(unavailable)) as down, serve(cache_serving(BLOB, good_requests)) as good:
        retrying = asyncio.create_task(fetch(down, "digest", fingerprints))
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(fetch(good, "digest", fingerprints), 0.8) == len(BLOB)
        assert not retrying.done()
        retrying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await retrying
    assert len(good_requests) == 1


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


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{'a' * 64}\n",
        f"sha256:{'a' * 64}\r\n",
        f" sha256:{'a' * 64}",
        "sha256:" + "A" * 64,
        "../../../../api/v2.0/users?x=",
        "latest",
    ],
)
def test_only_a_whole_sha256_digest_is_a_digest(text: str) -> None:
    assert not DIGEST_RE.match(text)
    assert DIGEST_RE.match(f"sha256:{'a' * 64}")


def test_an_origin_is_scheme_host_and_port() -> None:
    assert origin("https://Registry.Example/v2/") == "https://registry.example:443"
    assert origin("http://registry.example:443/v2/") == "http://registry.example:443"
    assert origin("https://registry.example/v2/") != origin("http://registry.example:443/v2/")
    assert origin("http://[::1]:5000/v2/") == "http://[::1]:5000"


Seen = list[tuple[str, str | None]]


class _Streamed(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


def mock_client(answer: Callable[[httpx.Request], httpx.Response], seen: Seen) -> httpx.AsyncClient:
    """A client whose every answer comes from ``answer``, streamed as the real transport's are."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        answered = answer(request)
        return httpx.Response(answered.status_code, headers=answered.headers, stream=_Streamed(answered.content))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=False)


@pytest.mark.anyio
async def test_an_https_registry_redirecting_to_http_on_its_own_host_and_port_gets_no_credentials_in_clear() -> None:
    seen: Seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return httpx.Response(307, headers={"Location": "http://registry.example:8443/blob"})
        return httpx.Response(200, content=b"blob")

    async with mock_client(answer, seen) as http:
        policy = URLPolicy(allow=("registry.example",))
        response = await get_following_redirects(
            http, policy, "https://registry.example:8443/v2/a/blobs/x", {}, {"Authorization": "Bearer harbor-token"}
        )
        await response.aclose()
    assert seen == [
        ("https://registry.example:8443/v2/a/blobs/x", "Bearer harbor-token"),
        ("http://registry.example:8443/blob", None),
    ]


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
