"""The words of the distribution protocol: image references, platforms, digests and media types.

Parsing only, no I/O: the gateway's dialects translate with these, and every adapter that
turns a manifest URL into requests starts here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
# \Z, not $: "$" also matches before a trailing newline, which then reached the HTTP client.
_MANIFEST_PATH = re.compile(
    rf"(?P<prefix>(?:/[^/]+)*?)/v2/(?P<repo>{_REPOSITORY})/manifests/(?P<ref>{_TAG}|{_DIGEST})\Z"
)
DIGEST_RE = re.compile(rf"{_DIGEST}\Z")
"""A digest the gateway puts in a URL (``.match`` it: the pattern is anchored at both ends)."""


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives: ``{scheme}://{host}{prefix}/v2/{repository}/manifests/{reference}``."""

    scheme: str
    host: str
    repository: str
    reference: str
    prefix: str = ""

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}{self.prefix}"

    @property
    def name(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.repository}{sep}{self.reference}"

    def manifest_url(self, reference: str | None = None) -> str:
        return f"{self.base}/v2/{self.repository}/manifests/{reference or self.reference}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.repository}/blobs/{digest}"


def parse_manifest_url(url: str) -> ImageRef:
    """Split a manifest URL as Harbor sends it; raises ``ValueError`` with a helpful message."""
    parts = urlsplit(url)
    match = _MANIFEST_PATH.fullmatch(parts.path)
    if parts.scheme not in ("http", "https") or not parts.netloc or not match:
        raise ValueError(
            f"url {url[:200]!r} is not a manifest URL: expected http(s)://HOST/v2/REPOSITORY/manifests/TAG_OR_DIGEST"
        )
    return ImageRef(parts.scheme, parts.netloc, match["repo"], match["ref"], match["prefix"] or "")


class Platform(msgspec.Struct, frozen=True):
    architecture: str = ""
    os: str = ""
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` into a :class:`Platform`; raises ``ValueError`` otherwise."""
    pieces = text.strip().split("/")
    if len(pieces) not in (2, 3) or not all(pieces):
        raise ValueError(f"platform {text!r} is not os/arch[/variant], e.g. linux/amd64, or 'all'")
    return Platform(os=pieces[0], architecture=pieces[1], variant=pieces[2] if len(pieces) == 3 else "")
