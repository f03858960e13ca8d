"""``local``: a cache directory on the gateway's own host (the embedded default), an OCI image layout.

The directory is an OCI image layout (:mod:`adapters.layout`): blobs land in
``<path>/blobs/sha256/<hex>``, streamed to a temporary file, checked (its sha256, or its fingerprint against a copy that passed sha256: docs/design.md), and renamed into
place only then, so a file at its final name is always complete and valid. A blob already
present is not fetched again. Once an image's blobs are in, its manifests (the index, when
the reference names one, and the manifests of the platforms preheated) are stored as blobs
byte for byte and the reference is recorded in ``index.json``; the layout stays within
``max_bytes`` by evicting least recently used images whole.

Files (``type: file``) land in ``<path>/files/sha256/<sha256 of the URL's identity>``
(see :mod:`adapters.files`): two signed URLs of one object are one cached file, fetched once.
A file has no digest to check, so it is renamed into place once read to the end; a file
already present is not fetched again (delete it to refresh it). Files are outside
``index.json`` but count towards ``max_bytes`` and are evicted like images.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import msgspec

from adapters.base import (
    Adapter,
    AdapterContext,
    ClusterInfo,
    Health,
    PreheatError,
    PreheatRequest,
    Progress,
    TaskRow,
)
from adapters.files import FileRef, file_ref, stream_url
from adapters.gather import bounded_gather
from adapters.layout import CacheFull, OciLayout, Reservation, parse_size, ref_name
from adapters.manifest import Blob, Descriptor, select_platforms
from adapters.oci import RegistryAuth
from adapters.origintls import job_context
from adapters.reference import ImageRef, parse_manifest_url


class LocalOptions(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    """Cache directory; created if missing."""
    concurrency: int = 8
    """Blobs fetched at once for one task."""
    max_bytes: int | str | None = None
    """Most bytes the cache holds (images, files, unreferenced blobs): bytes or a size like ``10GiB``, ``500MB``.
    Default: half the size of the filesystem holding ``path``, measured at start. Least recently pulled or
    preheated images are evicted whole to make room; an image larger than this fails its task."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path is empty: give a directory for the cache")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_bytes is not None:
            try:
                self.max_bytes = parse_size(self.max_bytes)
            except ValueError as error:
                raise ValueError(f"max_bytes: {error}") from None


class _TempFileSink:
    """A temporary file next to the final path, renamed into place on commit."""

    def __init__(self, final: Path, temp_dir: Path, on_commit: Callable[[int], None] | None = None) -> None:
        self.final = final
        self.on_commit = on_commit
        self.size = 0
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=temp_dir, prefix=final.name[:16] + ".")
        self.temp = Path(name)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.temp, self.final)
        if self.on_commit is not None:
            self.on_commit(self.size)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.temp.unlink(missing_ok=True)


class LocalAdapter(Adapter):
    name = "local"
    Options = LocalOptions
    supports = frozenset({"image", "file"})
    understands = frozenset({"certificate_chain", "insecure_skip_verify"})

    def __init__(self, cluster: ClusterInfo, options: LocalOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        self.root = Path(options.path).expanduser().resolve()
        self.layout: OciLayout | None = None
        """The cache as an OCI layout (the mirror reads it); None while the directory cannot be used (see :meth:`check`)."""
        self._layout_error = ""
        self._open_layout()

    def _open_layout(self) -> OciLayout | None:
        if self.layout is None:
            try:
                self.layout = OciLayout.open(self.root, self.options.max_bytes)
            except OSError as error:
                self._layout_error = f"cannot use {self.root}: {error.strerror or error}"
        return self.layout

    def _layout(self) -> OciLayout:
        """The layout, once :meth:`check` (which every preheat runs first) found the directory usable."""
        if self.layout is None:
            raise PreheatError(
                f"local cache of cluster {self.cluster.name}: {self._layout_error}; fix {self.cluster.config_path}.path"
            )
        return self.layout

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def file_path(self, ref: FileRef) -> Path:
        return self.root / "files" / "sha256" / ref.key

    async def check(self) -> Health:
        try:
            for sub in ("blobs/sha256", "files/sha256", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                return Health(reachable=False, error=f"{self.root} is not writable")
        except OSError as error:
            return Health(reachable=False, error=f"cannot use {self.root}: {error.strerror}")
        if self._open_layout() is None:
            return Health(reachable=False, error=self._layout_error)
        return Health(reachable=True)

    async def aclose(self) -> None:
        if self.layout is not None:
            await self.layout.flush()

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        health = await self.check()
        if not health.reachable:
            raise PreheatError(
                f"local cache of cluster {self.cluster.name}: {health.error}; fix {self.cluster.config_path}.path"
            )
        if request.type == "file":
            await self._preheat_files(request, progress)
            return
        try:
            ref = parse_manifest_url(request.urls[0])
        except ValueError as error:
            raise PreheatError(str(error)) from None
        auth = RegistryAuth(
            header=request.headers.get("Authorization"),
            credentials=request.credentials,
            ssl=job_context(request.origin_tls),
        )
        layout = self._layout()
        try:
            async with layout.reserve(ref_name(ref.host, ref.repository, ref.reference)) as room:
                top, blobs = await self._resolve(ref, auth, request.platform, room)
                progress.planned(len(blobs), sum(blob.size for blob in blobs))
                await room.plan({b.digest: b.size for b in blobs})
                outcomes = await bounded_gather(
                    min(request.concurrency, self.options.concurrency),
                    [partial(self._warm, ref, blob, auth, progress, layout) for blob in blobs],
                )
                failures = [error for error in outcomes if error]
                if failures:
                    raise PreheatError(
                        f"{len(failures)} of {len(blobs)} blobs could not be cached in {self.root} on {self.context.hostname}: {failures[0]}"
                    )
                await layout.record(ref.host, ref.repository, ref.reference, top)
        except CacheFull as full:
            raise PreheatError(f"{full} ({self.cluster.config_path}.max_bytes)") from None
        except OSError as error:
            raise PreheatError(
                f"cannot write to {self.root} on {self.context.hostname}: {error.strerror or error}"
            ) from None

    async def _resolve(
        self, ref: ImageRef, auth: RegistryAuth, platform: str, room: Reservation
    ) -> tuple[Descriptor, list[Blob]]:
        """The blobs to warm, as ``OciClient.resolve_blobs`` finds them, storing each manifest fetched
        byte for byte on the way (the top one as the reference served it: it is fetched once)."""
        oci = self.context.oci
        top = await oci.get_manifest(ref, auth)
        await room.put_manifest(top.digest, top.raw)
        descriptor = Descriptor(top.digest, top.media_type, len(top.raw))
        found: dict[str, Blob] = {}
        if not top.is_index:
            oci.list_blobs(top, ref, found)  # its checks of digests and declared sizes
        else:
            entries = select_platforms(top, platform, ref)
            del top
            for entry in entries:  # each platform's manifest is on disk, not in memory, once listed
                child = await oci.get_manifest(ref, auth, entry.digest)
                await room.put_manifest(child.digest, child.raw)
                if not child.is_index:
                    oci.list_blobs(child, ref, found)
        return descriptor, list(found.values())

    async def _warm(self, ref: ImageRef, blob: Blob, auth: RegistryAuth, progress: Progress, layout: OciLayout) -> str:
        """Warm one blob; returns an error message, or "" when it is in the cache."""
        final = self.blob_path(blob.digest)

        def committed(size: int) -> None:
            layout.blob_committed(blob.digest, size)

        async def fetch() -> int:
            return await self.context.oci.fetch_blob(
                ref,
                blob,
                auth,
                lambda: _TempFileSink(final, self.root / "tmp", committed),
                on_bytes=progress.transferred,
            )

        row = TaskRow(url=ref.blob_url(blob.digest), hostname=self.context.hostname, ip=self.context.ip)
        key = (
            "local",
            str(self.root),
            ref.base,
            ref.repository,
            blob.digest,
        )  # one fetch per source, never across registries
        authority = self.context.dedupe.authority_of(auth.header, auth.credentials)
        return await self._into_cache(final, key, authority, lambda: _present(final, blob.size), fetch, row, progress)

    async def _preheat_files(self, request: PreheatRequest, progress: Progress) -> None:
        refs = [
            file_ref(url, request.filtered_query_params, request.tag, request.application, request.origin_tls)
            for url in request.urls
        ]
        progress.planned(len(refs), 0)
        outcomes = await bounded_gather(
            min(request.concurrency, self.options.concurrency),
            [partial(self._warm_file, ref, request, progress) for ref in refs],
        )
        failures = [error for error in outcomes if error]
        if failures:
            raise PreheatError(
                f"{len(failures)} of {len(refs)} files could not be cached in {self.root} on {self.context.hostname}: {failures[0]}"
            )

    async def _warm_file(self, ref: FileRef, request: PreheatRequest, progress: Progress) -> str:
        """Warm one file; returns an error message, or "" when it is in the cache."""
        final = self.file_path(ref)
        layout = self._layout()

        async def fetch() -> int:
            size = await stream_url(
                self.context.http,
                self.context.policy,
                ref,
                lambda: _TempFileSink(final, self.root / "tmp", lambda size: layout.file_committed(ref.key, size)),
                headers=request.headers,
                on_bytes=progress.transferred,
                ssl_context=job_context(request.origin_tls),
            )
            await layout.admit_file(ref.key, f"file {ref.display_url}")  # its size is known only now
            return size

        row = TaskRow(url=ref.display_url, hostname=self.context.hostname, ip=self.context.ip)
        authority = self.context.dedupe.authority_of_headers(request.headers)
        layout.pin_file(ref.key)
        try:
            message = await self._into_cache(
                final, ("local-file", str(self.root), ref.key), authority, final.is_file, fetch, row, progress
            )
        finally:
            layout.unpin_file(ref.key)
        if not message:
            layout.file_used(ref.key)
        return message

    async def _into_cache(
        self,
        final: Path,
        key: tuple[str, ...],
        authority: str,
        present: Callable[[], bool],
        fetch: Callable[[], Awaitable[int]],
        row: TaskRow,
        progress: Progress,
    ) -> str:
        """Fetch into ``final`` once across jobs of one source unless it is already there; report the row.

        A file at its final name passed its check (a blob its digest), so one that is present is
        used whoever fetched it; a fetch in flight is shared only as :class:`adapters.dedupe.Deduper` says.
        """

        async def fetch_if_absent() -> int:
            return 0 if present() else await fetch()

        message = ""
        try:
            await self.context.dedupe.run(key, fetch_if_absent, authority=authority)
            if not present():  # removed since it was last warmed: fetch again
                self.context.dedupe.forget(key)
                await self.context.dedupe.run(key, fetch_if_absent, authority=authority)
        except PreheatError as error:
            message = str(error)
        except OSError as error:
            message = f"cannot write {final}: {error.strerror}"
        if message:
            progress.failed(TaskRow(row.url, row.hostname, row.ip, message))
        else:
            progress.succeeded(row)
        return message


def _present(path: Path, size: int) -> bool:
    """A file at its final name was renamed there after its digest check: present means valid."""
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False
