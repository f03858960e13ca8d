"""Manifest URLs, references, platform choice and how a blob is checked (adapters/oci.py)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

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
from tests.fakes.raw_http import answering, serve


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


async def fetch(base_url: str, verify: Verify) -> int:
    async with new_client(timeout=5) as http:
        client = OciClient(http, URLPolicy(allow=("127.0.0.1",)))
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

