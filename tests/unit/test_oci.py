"""Manifest URLs, references and platform choice (adapters/oci.py)."""

from __future__ import annotations

import msgspec
import pytest

from adapters.oci import INDEX_TYPES, OCI_INDEX, ImageRef, Manifest, RegistryError, _ManifestDoc, parse_manifest_url, select_platforms


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
