"""Manifest URLs, references, platform choice and how a blob is checked (adapters/oci.py)."""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import pytest

from adapters.fingerprints import Fingerprints
from adapters.oci import (
    INDEX_TYPES,
    OCI_INDEX,
    Blob,
    DiscardSink,
    ImageRef,
    Manifest,
    OciClient,
    RegistryAuth,
    RegistryError,
    Verify,
    _ManifestDoc,
    parse_manifest_url,
    select_platforms,
)
from adapters.transport import new_client
from adapters.urlpolicy import URLPolicy
from tests.fakes.raw_http import Handler, answering, read_head, serve


def test_manifest_urls_split_into_registry_repository_and_reference() -> None:
    ref = parse_manifest_url("https://harbor.example.com/v2/library/alpine/manifests/3.19")
    assert (ref.scheme, ref.host, ref.repository, ref.reference) == ("https", "harbor.example.com", "library/alpine", "3.19")
    assert ref.blob_url("sha256:" + "a" * 64) == f"https://harbor.example.com/v2/library/alpine/blobs/sha256:{'a' * 64}"
    prefixed = parse_manifest_url(f"http://gw:5000/mirror/v2/proj/app/manifests/sha256:{'b' * 64}")
    assert prefixed.prefix == "/mirror" and prefixed.name == f"proj/app@sha256:{'b' * 64}"


@pytest.mark.parametrize("url", ["https://h/library/alpine:3.19", "https://h/v2/Library/x/manifests/1", "https://h/v2/a/manifests/", "file:///v2/a/manifests/b", "https://h/v2/a/blobs/sha256:aa"])
def test_anything_else_is_not_a_manifest_url(url: str) -> None:
    with pytest.raises(ValueError, match="not a manifest URL"):
        parse_manifest_url(url)


def index(*platforms: dict[str, object]) -> Manifest:
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"digest": f"sha256:{i:064x}", "platform": p, **({"annotations": p.pop("ann")} if "ann" in p else {})} for i, p in enumerate(platforms)]}
    raw = msgspec.json.encode(doc)
    return Manifest(OCI_INDEX, "sha256:x", raw, msgspec.json.decode(raw, type=_ManifestDoc))


REF = ImageRef("https", "h", "app", "1")


def test_a_platform_picks_one_entry_and_all_picks_every_runnable_one() -> None:
    manifest = index({"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"},
                     {"os": "unknown", "architecture": "unknown"}, {"os": "linux", "architecture": "amd64", "ann": {"vnd.docker.reference.type": "attestation-manifest"}})
    assert manifest.media_type in INDEX_TYPES
    assert [e.digest[-1] for e in select_platforms(manifest, "linux/arm64", REF)] == ["1"]
    assert [e.digest[-1] for e in select_platforms(manifest, "linux/arm64/v8", REF)] == ["1"]
    assert [e.digest[-1] for e in select_platforms(manifest, "all", REF)] == ["0", "1"]


def test_a_missing_platform_says_which_ones_exist() -> None:
    with pytest.raises(RegistryError, match=r"no matching manifest for platform linux/s390x in app:1 \(it has linux/amd64\)"):
        select_platforms(index({"os": "linux", "architecture": "amd64"}), "linux/s390x", REF)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BLOB = b"layer bytes " * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def blob_answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def fetch(base_url: str, verify: Verify, fingerprints: Fingerprints | None = None) -> int:
    async with new_client(timeout=5) as http:
        client = OciClient(http, URLPolicy(allow=("127.0.0.1",)), fingerprints=fingerprints)
        ref = parse_manifest_url(f"{base_url}/v2/library/app/manifests/1.0")
        return await client.fetch_blob(ref, Blob(BLOB_DIGEST, len(BLOB), ""), RegistryAuth(), DiscardSink, verify=verify)


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
        while fingerprints.pending(BLOB_DIGEST) is None:
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
        await asyncio.sleep(0.1)
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
