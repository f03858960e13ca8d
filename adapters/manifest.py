"""Manifests: decoding and checking one, choosing an index's platforms, listing an image's blobs.

No I/O: :class:`adapters.oci.OciClient` fetches the bytes. What a registry sends is not trusted
(docs/security.md): a manifest's digest is checked against the reference that named it, every
digest is checked before it becomes a URL, and every declared size before it is believed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

from adapters.bounded import quote
from adapters.reference import (
    DIGEST_RE,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageRef,
    Platform,
    parse_platform,
)
from adapters.retry import RegistryError


class Descriptor(msgspec.Struct, frozen=True):
    digest: str
    mediaType: str = ""
    size: int = 0
    platform: Platform | None = None
    annotations: dict[str, str] | None = None
    urls: list[str] | None = None


class ManifestDoc(msgspec.Struct):
    """The fields of an image manifest, an OCI index or a Docker list that the gateway reads."""

    schemaVersion: int = 2
    mediaType: str = ""
    config: Descriptor | None = None
    layers: list[Descriptor] | None = None
    manifests: list[Descriptor] | None = None


def decode_manifest(raw: bytes, where: str) -> ManifestDoc:
    """The document of a manifest; a malformed one (too deeply nested included) is a :class:`RegistryError`."""
    try:
        return msgspec.json.decode(raw, type=ManifestDoc)
    except msgspec.DecodeError as error:
        raise RegistryError(f"manifest {where} is not a valid OCI/Docker manifest ({quote(str(error), 200)})") from None
    except RecursionError:
        raise RegistryError(f"manifest {where} is not a valid OCI/Docker manifest (it is nested too deeply)") from None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    raw: bytes
    doc: ManifestDoc = field(repr=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


class Blob(msgspec.Struct, frozen=True):
    """One blob to warm: a manifest's config or a layer."""

    digest: str
    size: int
    media_type: str = ""


def parse_manifest(raw: bytes, content_type: str, reference: str, where: str) -> Manifest:
    """A manifest fetched by ``reference`` (a tag or digest) and served as ``content_type``, checked:
    its digest when the reference is one, its document, and that it is not Docker schema 1."""
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if reference.startswith("sha256:") and digest != reference:
        raise RegistryError(
            f"manifest {where} does not match its digest (got {digest}); the registry or a cache in between is corrupt"
        )
    doc = decode_manifest(raw, where)
    media_type = content_type.split(";")[0].strip() or doc.mediaType
    if media_type not in INDEX_TYPES | {OCI_MANIFEST, DOCKER_MANIFEST}:
        media_type = doc.mediaType or (OCI_INDEX if doc.manifests is not None else OCI_MANIFEST)
    if doc.schemaVersion == 1 or "prettyjws" in media_type:
        raise RegistryError(
            f"manifest {where} uses Docker schema 1, which is deprecated and not supported; rebuild and push the image"
        )
    return Manifest(media_type, digest, raw, doc)


def select_platforms(index: Manifest, platform: str, ref: ImageRef) -> list[Descriptor]:
    """Pick the index entries for ``platform`` (``all``: every runnable entry), each with a sha256 digest."""
    entries = [
        entry
        for entry in index.doc.manifests or []
        if entry.platform is not None
        and str(entry.platform) != "unknown/unknown"
        and (entry.annotations or {}).get("vnd.docker.reference.type") != "attestation-manifest"
    ]
    if platform == "all":
        chosen = entries
    else:
        want = parse_platform(platform)
        chosen = [
            entry
            for entry in entries
            if entry.platform is not None
            and entry.platform.os == want.os
            and entry.platform.architecture == want.architecture
            and (not want.variant or entry.platform.variant == want.variant)
        ][:1]
    if not chosen:
        available = ", ".join(sorted({str(e.platform) for e in entries})) or "none"
        raise RegistryError(
            f"no matching manifest for platform {platform} in {ref.name} (it has {available}): "
            "set platform in the request or on the cluster, or 'all'"
        )
    for entry in chosen:  # each becomes a URL: every one is checked before any is fetched
        if not DIGEST_RE.match(entry.digest):
            raise RegistryError(
                f"index {ref.name} names a manifest with an unsupported digest {quote(entry.digest, 80)!r} "
                f"(not sha256:<64 hex digits>); refusing to fetch it: the index is corrupt or hostile"
            )
    return chosen


def list_blobs(manifest: Manifest, ref: ImageRef, blobs: dict[str, Blob], *, max_blob_bytes: int) -> None:
    """Add an image manifest's config and layers to ``blobs``, refusing bad digests and absurd sizes
    (above ``max_blob_bytes``, ``registries.max_blob_bytes``)."""
    doc = manifest.doc
    where = f"manifest {ref.repository}@{manifest.digest}"
    if doc.config is None:
        raise RegistryError(f"{where} has no config; it is not an image manifest")
    for descriptor in [doc.config, *(doc.layers or [])]:
        if descriptor.urls:  # foreign layers live elsewhere, never in the registry
            continue
        if not DIGEST_RE.match(descriptor.digest):
            raise RegistryError(f"{where} names a blob with an unsupported digest {quote(descriptor.digest, 80)!r}")
        if descriptor.size < 0:
            raise RegistryError(
                f"{where} declares a negative size ({descriptor.size}) for blob {descriptor.digest}; the manifest is corrupt"
            )
        if descriptor.size > max_blob_bytes:
            raise RegistryError(
                f"{where} declares blob {descriptor.digest} as {descriptor.size} bytes, more than registries.max_blob_bytes "
                f"({max_blob_bytes}); refusing it: raise registries.max_blob_bytes if the image really has so large a layer"
            )
        blobs.setdefault(descriptor.digest, Blob(descriptor.digest, descriptor.size, descriptor.mediaType))
