"""adapters/manifest.py: which entries of an index a platform selects, and what a missing one says."""

from __future__ import annotations

import msgspec
import pytest

from adapters.manifest import Manifest, ManifestDoc, select_platforms
from adapters.reference import INDEX_TYPES, OCI_INDEX
from adapters.retry import RegistryError
from tests.unit.registry_stubs import REF


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
