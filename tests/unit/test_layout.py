"""The OCI image layout of the ``local`` cache (adapters.layout): its index, its read API, its bound.

Real files in a temporary directory, no registry: images are written the way the local adapter
writes them (blobs renamed into place, then manifests, then the index entry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from adapters.layout import AmbiguousOrigin, CacheFull, OciLayout, parse_size, ref_name
from adapters.manifest import Descriptor
from adapters.reference import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

HOST, OTHER = "harbor.example.com", "registry.example.com:5000"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(config: bytes, layers: list[bytes], media_type: str = OCI_MANIFEST) -> bytes:
    def desc(data: bytes) -> dict[str, object]:
        return {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest_of(data),
            "size": len(data),
        }

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": desc(config),
            "layers": [desc(layer) for layer in layers],
        }
    ).encode()


def put_blob(layout: OciLayout, data: bytes) -> str:
    digest = digest_of(data)
    layout.path_of(digest).write_bytes(data)
    layout.blob_committed(digest, len(data))
    return digest


async def preheat(
    layout: OciLayout,
    repository: str,
    reference: str,
    layers: list[bytes],
    *,
    host: str = HOST,
    media_type: str = OCI_MANIFEST,
    config: bytes = b'{"architecture":"amd64"}',
) -> str:
    """What the local adapter does for one image: reserve, blobs, manifest, index entry. Returns the manifest's digest."""
    raw = image_manifest(config, layers, media_type)
    blobs = [config, *layers]
    async with layout.reserve(ref_name(host, repository, reference), {digest_of(b): len(b) for b in blobs}) as room:
        for data in blobs:
            put_blob(layout, data)
        await room.put_manifest(digest_of(raw), raw)
        await layout.record(host, repository, reference, Descriptor(digest_of(raw), media_type, len(raw)))
    return digest_of(raw)


def index_json(root: Path) -> dict[str, dict[str, object]]:
    doc = json.loads((root / "index.json").read_text())
    return {entry["annotations"]["org.opencontainers.image.ref.name"]: entry for entry in doc["manifests"]}


def test_a_new_directory_becomes_an_empty_layout(tmp_path: Path) -> None:
    OciLayout(tmp_path, 1 << 30)

    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }


def test_tags_and_digests_resolve_from_memory_and_survive_a_restart(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 1 << 30)
    app = asyncio.run(preheat(layout, "library/app", "1.0", [b"layer-1", b"layer-2"], media_type=DOCKER_MANIFEST))

    for reopened in (layout, OciLayout(tmp_path, 1 << 30)):
        found = reopened.resolve(HOST, "library/app", "1.0")
        assert found is not None and (found.digest, found.mediaType) == (app, DOCKER_MANIFEST), (
            "the origin's type, kept across a restart"
        )
        assert reopened.resolve(None, "library/app", app) == found, "by digest, and the only origin is implied"
        assert reopened.resolve(HOST, "library/app", "2.0") is None
        assert reopened.resolve(HOST, "library/other", "1.0") is None
        assert reopened.resolve(OTHER, "library/app", "1.0") is None
        path = reopened.blob_path(digest_of(b"layer-2"))
        assert path is not None and path.read_bytes() == b"layer-2"
        assert reopened.blob_path(digest_of(b"never stored")) is None
    entry = index_json(tmp_path)[f"{HOST}/library/app:1.0"]
    assert entry["mediaType"] == OCI_MANIFEST, "skopeo finds ref names on OCI types only"


def test_an_index_resolves_and_so_do_the_platform_manifests_preheated(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 1 << 30)
    amd64, arm64 = image_manifest(b"cfg-amd64", [b"amd64"]), image_manifest(b"cfg-arm64", [b"arm64"])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest_of(m),
                    "size": len(m),
                    "platform": {"os": "linux", "architecture": a},
                }
                for m, a in ((amd64, "amd64"), (arm64, "arm64"))
            ],
        }
    ).encode()

    async def go() -> None:
        async with layout.reserve(
            ref_name(HOST, "library/multi", "2.0"), {digest_of(b"cfg-amd64"): 9, digest_of(b"amd64"): 5}
        ) as room:
            put_blob(layout, b"cfg-amd64")
            put_blob(layout, b"amd64")
            await room.put_manifest(digest_of(index), index)
            await room.put_manifest(digest_of(amd64), amd64)
            await layout.record(HOST, "library/multi", "2.0", Descriptor(digest_of(index), OCI_INDEX, len(index)))

    asyncio.run(go())

    assert layout.resolve(HOST, "library/multi", "2.0") == Descriptor(digest_of(index), OCI_INDEX, len(index))
    assert layout.resolve(HOST, "library/multi", digest_of(amd64)) == Descriptor(
        digest_of(amd64), OCI_MANIFEST, len(amd64)
    )
    assert layout.resolve(HOST, "library/multi", digest_of(arm64)) is None, "a platform not preheated is not held"
    assert (tmp_path / "blobs" / "sha256" / digest_of(index)[7:]).read_bytes() == index, "stored byte for byte"


def test_a_repository_held_from_two_origins_needs_the_origin_named(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 1 << 30)
    asyncio.run(preheat(layout, "library/app", "1.0", [b"a"]))
    other = asyncio.run(preheat(layout, "library/app", "1.0", [b"b"], host=OTHER))

    with pytest.raises(AmbiguousOrigin) as ambiguous:
        layout.resolve(None, "library/app", "1.0")

    assert ambiguous.value.hosts == sorted([HOST, OTHER])
    found = layout.resolve(OTHER, "library/app", "1.0")
    assert found is not None and found.digest == other


def test_many_jobs_recording_at_once_lose_nothing(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 1 << 30)

    async def all_at_once() -> list[str]:
        return await asyncio.gather(
            *(preheat(layout, "library/app", f"v{i}", [f"layer-{i}".encode(), b"shared"]) for i in range(30))
        )

    digests = asyncio.run(all_at_once())

    recorded = index_json(tmp_path)
    assert {name: entry["digest"] for name, entry in recorded.items()} == {
        f"{HOST}/library/app:v{i}": d for i, d in enumerate(digests)
    }
    assert OciLayout(tmp_path, 1 << 30).images().keys() == recorded.keys()


def test_a_crash_while_writing_the_index_leaves_a_valid_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = OciLayout(tmp_path, 1 << 30)
    asyncio.run(preheat(layout, "library/app", "1.0", [b"a"]))
    before = (tmp_path / "index.json").read_bytes()

    def crash(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        asyncio.run(preheat(layout, "library/app", "2.0", [b"b"]))
    monkeypatch.undo()
    (tmp_path / ".index.json.left-by-a-kill").write_bytes(b'{"schemaVersion": 2, "manif')  # a process killed mid-write

    assert (tmp_path / "index.json").read_bytes() == before
    reopened = OciLayout(tmp_path, 1 << 30)
    assert set(reopened.images()) == {f"{HOST}/library/app:1.0"}
    assert not list(tmp_path.glob(".index.json.*")), "a temporary index is cleaned at start"


def test_a_blob_cut_short_by_a_crash_is_dropped_at_start_to_be_fetched_again(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 1 << 30)
    asyncio.run(preheat(layout, "library/app", "1.0", [b"a complete layer"]))
    layout.path_of(digest_of(b"a complete layer")).write_bytes(b"a comp")

    reopened = OciLayout(tmp_path, 1 << 30)

    assert reopened.blob_path(digest_of(b"a complete layer")) is None
    assert not layout.path_of(digest_of(b"a complete layer")).exists()


def test_a_cache_of_bare_blobs_is_migrated_with_its_blobs_kept(tmp_path: Path) -> None:
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    old = tmp_path / "blobs" / "sha256" / digest_of(b"old layer")[7:]
    old.write_bytes(b"old layer")

    layout = OciLayout(tmp_path, 1 << 30)

    assert (tmp_path / "oci-layout").is_file() and layout.images() == {}
    assert layout.blob_path(digest_of(b"old layer")) == old and layout.held_bytes == len(b"old layer")


def test_an_unreadable_index_is_set_aside_and_the_blobs_kept(tmp_path: Path) -> None:
    OciLayout(tmp_path, 1 << 30)
    put_blob(OciLayout(tmp_path, 1 << 30), b"kept")
    (tmp_path / "index.json").write_text("{not json")

    layout = OciLayout(tmp_path, 1 << 30)

    assert "set aside" in layout.problem
    assert layout.images() == {} and layout.blob_path(digest_of(b"kept")) is not None
    assert [p.read_text() for p in tmp_path.glob("index.json.unreadable-*")] == ["{not json"]


def test_the_least_recently_used_image_is_evicted_whole_and_shared_blobs_stay(tmp_path: Path) -> None:
    shared = b"s" * 1000
    layout = OciLayout(tmp_path, 10_000)
    a = asyncio.run(preheat(layout, "a", "1", [shared, b"a" * 3000]))
    b = asyncio.run(preheat(layout, "b", "1", [shared, b"b" * 3000]))
    layout.touch(a)  # pulled: a is now the most recently used
    assert layout.held_bytes > 7000

    asyncio.run(preheat(layout, "c", "1", [b"c" * 3000]))

    assert set(layout.images()) == {f"{HOST}/a:1", f"{HOST}/c:1"}
    assert layout.resolve(HOST, "b", "1") is None and layout.blob_path(b) is None
    assert layout.blob_path(digest_of(b"b" * 3000)) is None, "b's own layer went with it"
    assert layout.blob_path(digest_of(shared)) is not None, "the layer a shares stays"
    assert (layout.evictions, layout.held_bytes <= layout.max_bytes) == (1, True)
    assert layout.evicted_bytes >= 3000
    assert set(index_json(tmp_path)) == {f"{HOST}/a:1", f"{HOST}/c:1"}
    assert set(OciLayout(tmp_path, 10_000).images()) == set(layout.images()), "the eviction is on disk"


def test_the_pull_order_survives_a_restart(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 10_000)
    a = asyncio.run(preheat(layout, "a", "1", [b"a" * 3000]))
    asyncio.run(preheat(layout, "b", "1", [b"b" * 3000]))
    layout.touch(a)
    asyncio.run(layout.flush())

    reopened = OciLayout(tmp_path, 10_000)
    asyncio.run(preheat(reopened, "c", "1", [b"c" * 5000]))

    assert set(reopened.images()) == {f"{HOST}/a:1", f"{HOST}/c:1"}


def test_unreferenced_blobs_go_before_any_image(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 10_000)
    put_blob(layout, b"o" * 4000)  # a migrated blob, or one a failed preheat left
    asyncio.run(preheat(layout, "a", "1", [b"a" * 3000]))

    asyncio.run(preheat(layout, "b", "1", [b"b" * 3000]))

    assert set(layout.images()) == {f"{HOST}/a:1", f"{HOST}/b:1"}
    assert layout.blob_path(digest_of(b"o" * 4000)) is None
    assert layout.evictions == 0, "an orphan is not an image"


def test_an_image_larger_than_max_bytes_fails_before_anything_is_evicted(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 10_000)
    asyncio.run(preheat(layout, "a", "1", [b"a" * 3000]))

    with pytest.raises(CacheFull, match=r"is 11\d\d\d bytes, more than this cache's max_bytes \(10000\)"):
        asyncio.run(preheat(layout, "huge", "1", [b"h" * 11_000]))

    assert set(layout.images()) == {f"{HOST}/a:1"}


def test_blobs_of_a_preheat_in_progress_are_never_evicted(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 10_000)

    async def go() -> None:
        first = b"f" * 6000
        async with layout.reserve(ref_name(HOST, "first", "1"), {digest_of(first): len(first)}):
            put_blob(layout, first)
            with pytest.raises(CacheFull, match="preheats in progress hold"):
                await preheat(layout, "second", "1", [b"s" * 6000])
            assert layout.blob_path(digest_of(first)) is not None

    asyncio.run(go())


def test_files_count_towards_max_bytes_and_are_evicted_like_images(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path, 10_000)
    (tmp_path / "files" / "sha256" / "k1").write_bytes(b"1" * 4000)
    layout.file_committed("k1", 4000)
    asyncio.run(layout.admit_file("k1", "file one"))
    asyncio.run(preheat(layout, "a", "1", [b"a" * 4000]))
    assert layout.held_bytes > 8000

    asyncio.run(preheat(layout, "b", "1", [b"b" * 4000]))

    assert not (tmp_path / "files" / "sha256" / "k1").exists(), "the oldest unit, a file, went first"
    assert set(layout.images()) == {f"{HOST}/a:1", f"{HOST}/b:1"}
    (tmp_path / "files" / "sha256" / "big").write_bytes(b"x" * 20_000)
    layout.file_committed("big", 20_000)
    with pytest.raises(CacheFull, match="file big"):
        asyncio.run(layout.admit_file("big", "file big"))
    assert not (tmp_path / "files" / "sha256" / "big").exists()


@pytest.mark.parametrize(
    ("text", "size"),
    [("10GiB", 10 << 30), ("500MB", 500_000_000), ("1.5 TiB", 3 << 39), ("4096", 4096), (123, 123), ("2k", 2000)],
)
def test_sizes_read_like_people_write_them(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "-1", "0", "5XB", 0, True])
def test_a_size_that_is_no_size_is_refused(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
