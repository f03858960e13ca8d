"""``local``: a content-addressed cache directory on the gateway's own host (the embedded default).

Blobs land in ``<path>/blobs/sha256/<hex>``: streamed to a temporary file, digest-checked,
and renamed into place only then, so a file at its final name is always complete and valid.
A blob already present is not fetched again.

Files (``type: file``) land in ``<path>/files/sha256/<sha256 of the URL's identity>``
(see :mod:`adapters.files`): two signed URLs of one object are one cached file, fetched once.
A file has no digest to check, so it is renamed into place once read to the end; a file
already present is not fetched again (delete it to refresh it).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
import tempfile
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
    bounded_gather,
)
from adapters.files import FileRef, file_ref, stream_url
from adapters.oci import Blob, ImageRef, RegistryAuth, parse_manifest_url


class LocalOptions(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    """Cache directory; created if missing."""
    concurrency: int = 8
    """Blobs fetched at once for one task."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path is empty: give a directory for the cache")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


class _TempFileSink:
    """A temporary file next to the final path, renamed into place on commit."""

    def __init__(self, final: Path, temp_dir: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=temp_dir, prefix=final.name[:16] + ".")
        self.temp = Path(name)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.temp, self.final)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.temp.unlink(missing_ok=True)


class LocalAdapter(Adapter):
    name = "local"
    Options = LocalOptions
    supports = frozenset({"image", "file"})

    def __init__(self, cluster: ClusterInfo, options: LocalOptions, context: AdapterContext) -> None:
        super().__init__(cluster, options, context)
        self.root = Path(options.path).expanduser().resolve()

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
        return Health(reachable=True)

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        health = await self.check()
        if not health.reachable:
            raise PreheatError(f"local cache of cluster {self.cluster.name}: {health.error}; fix {self.cluster.config_path}.path")
        if request.type == "file":
            await self._preheat_files(request, progress)
            return
        try:
            ref = parse_manifest_url(request.urls[0])
        except ValueError as error:
            raise PreheatError(str(error)) from None
        auth = RegistryAuth(header=request.headers.get("Authorization"), credentials=request.credentials)
        _, blobs = await self.context.oci.resolve_blobs(ref, auth, request.platform)
        progress.planned(len(blobs), sum(blob.size for blob in blobs))
        outcomes = await bounded_gather(
            min(request.concurrency, self.options.concurrency),
            [lambda blob=blob: self._warm(ref, blob, auth, progress) for blob in blobs],
        )
        failures = [error for error in outcomes if error]
        if failures:
            raise PreheatError(
                f"{len(failures)} of {len(blobs)} blobs could not be cached in {self.root} on {self.context.hostname}: {failures[0]}"
            )

    async def _warm(self, ref: ImageRef, blob: Blob, auth: RegistryAuth, progress: Progress) -> str:
        """Warm one blob; returns an error message, or "" when it is in the cache."""
        final = self.blob_path(blob.digest)

        async def fetch() -> int:
            return await self.context.oci.fetch_blob(
                ref, blob, auth, lambda: _TempFileSink(final, self.root / "tmp"), on_bytes=progress.transferred
            )

        row = TaskRow(url=ref.blob_url(blob.digest), hostname=self.context.hostname, ip=self.context.ip)
        key = ("local", str(self.root), ref.base, ref.repository, blob.digest)  # one fetch per source, never across registries
        authority = self.context.dedupe.authority_of(auth.header, auth.credentials)
        return await self._into_cache(final, key, authority, lambda: _present(final, blob.size), fetch, row, progress)

    async def _preheat_files(self, request: PreheatRequest, progress: Progress) -> None:
        refs = [file_ref(url, request.filtered_query_params, request.tag, request.application) for url in request.urls]
        progress.planned(len(refs), 0)
        outcomes = await bounded_gather(
            min(request.concurrency, self.options.concurrency),
            [lambda ref=ref: self._warm_file(ref, request, progress) for ref in refs],
        )
        failures = [error for error in outcomes if error]
        if failures:
            raise PreheatError(
                f"{len(failures)} of {len(refs)} files could not be cached in {self.root} on {self.context.hostname}: {failures[0]}"
            )

    async def _warm_file(self, ref: FileRef, request: PreheatRequest, progress: Progress) -> str:
        """Warm one file; returns an error message, or "" when it is in the cache."""
        final = self.file_path(ref)

        async def fetch() -> int:
            size, _ = await stream_url(
                self.context.http, self.context.policy, ref, lambda: _TempFileSink(final, self.root / "tmp"),
                headers=request.headers, on_bytes=progress.transferred,
            )
            return size

        row = TaskRow(url=ref.display_url, hostname=self.context.hostname, ip=self.context.ip)
        authority = self.context.dedupe.authority_of_headers(request.headers)
        return await self._into_cache(final, ("local-file", str(self.root), ref.key), authority, final.is_file, fetch, row, progress)

    async def _into_cache(
        self, final: Path, key: tuple[str, ...], authority: str, present: Callable[[], bool], fetch: Callable[[], Awaitable[int]],
        row: TaskRow, progress: Progress,
    ) -> str:
        """Fetch into ``final`` once across jobs of one source unless it is already there; report the row.

        A file at its final name passed its check (a blob its digest), so one that is present is
        used whoever fetched it; a fetch in flight is shared only as :class:`adapters.base.Deduper` says.
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
