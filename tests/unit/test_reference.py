"""adapters/reference.py: what is and is not a manifest URL, and what is a digest."""

from __future__ import annotations

import pytest

from adapters.reference import DIGEST_RE, parse_manifest_url


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
