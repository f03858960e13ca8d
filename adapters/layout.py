"""The ``local`` cache as an OCI image layout: ``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``.

Any OCI tool reads the directory (``skopeo copy oci:<dir>:<ref name> ...``), and the gateway's
mirror serves it through the read API (:meth:`OciLayout.resolve`, :meth:`OciLayout.blob_path`,
:meth:`OciLayout.touch`), which answers from memory: the index is loaded once at start and kept
in sync with every write, so a read costs no file access beyond the blob itself.

Each preheated reference is one descriptor in ``index.json`` whose
``org.opencontainers.image.ref.name`` is ``<origin host>/<repository>:<tag>`` (by-digest
preheats: ``<origin host>/<repository>@sha256:<hex>``). It points at the manifest the origin
served (an index when the reference named one), stored byte for byte as a blob next to the
manifests of the platforms preheated and their config and layer blobs.

Writes are atomic: blobs land under their final name only once checked, then ``index.json``
is replaced whole (temporary file, fsync, ``os.replace``) under one lock per layout, so
concurrent preheats lose nothing and a crash leaves the previous or the next valid index. At
start, a blob an entry references whose size is wrong (cut short by a crash) is removed, to
be fetched again.

The layout is bounded by ``max_bytes``: before a preheat fetches, room is made by evicting
first blobs nothing references (a tag that moved, a failed preheat, a migrated cache), then
whole images and files, least recently pulled or preheated first. A blob shared with an
image that stays, or in use by a preheat in progress, stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import msgspec

from adapters.base import PreheatError
from adapters.manifest import Descriptor
from adapters.oci import MAX_MANIFEST_BYTES
from adapters.reference import DIGEST_RE, DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, OCI_INDEX, OCI_MANIFEST

REF_NAME = "org.opencontainers.image.ref.name"
LAST_USED = "io.harbor-preheat-gateway.last-used"
"""Annotation with the time (RFC 3339, UTC) an image was last pulled or preheated: the eviction order across restarts."""
MEDIA_TYPE = "io.harbor-preheat-gateway.media-type"
"""Annotation with the origin's media type of a Docker manifest or list, whose descriptor says the OCI equivalent."""
OCI_EQUIVALENT = {DOCKER_MANIFEST: OCI_MANIFEST, DOCKER_LIST: OCI_INDEX}
"""Docker schema-2 types and the OCI types of the same structure: skopeo and podman find a ref name in
``index.json`` only on a descriptor of an OCI type, so a Docker-typed image is recorded as its OCI
equivalent (its bytes, hence its digest, unchanged) and its own type kept in :data:`MEDIA_TYPE`."""
LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i?))?(b?)\s*\Z", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """``10GiB``, ``500MB``, ``1.5TiB`` or a number of bytes; raises ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{value} is not a positive number of bytes")
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size: give bytes or a number with a unit, e.g. 10GiB or 500MB")
    prefix = (match[2] or "").lower()
    scale = (1024 if match[3] else 1000) ** ("kmgtp".index(prefix) + 1) if prefix else 1
    number = float(match[1])
    size = int(number * scale)
    if size < 1:
        raise ValueError(f"{value!r} is not a positive size")
    return size


class AmbiguousOrigin(LookupError):
    """A repository is held from several origin hosts and the caller named none."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__(f"held from several origins ({', '.join(hosts)}): name one")
        self.hosts = hosts


class CacheFull(PreheatError):
    """A preheat cannot fit within the cluster's ``max_bytes``."""


class _Ref(msgspec.Struct):
    digest: str = ""
    mediaType: str = ""
    size: int = 0
    urls: list[str] | None = None


class _Doc(msgspec.Struct):
    mediaType: str = ""
    config: _Ref | None = None
    layers: list[_Ref] | None = None
    manifests: list[_Ref] | None = None


class _IndexEntry(msgspec.Struct, omit_defaults=True):
    digest: str
    mediaType: str = ""
    size: int = 0
    annotations: dict[str, str] = {}


class _IndexDoc(msgspec.Struct):
    schemaVersion: int = 2
    mediaType: str = OCI_INDEX
    manifests: list[_IndexEntry] = []


@dataclass(frozen=True)
class _Links:
    """What one manifest references: the manifests an index lists (digest, media type) and an image's blobs."""

    media_type: str
    manifests: tuple[tuple[str, str], ...]
    blobs: tuple[str, ...]


@dataclass
class _Entry:
    name: str
    descriptor: Descriptor
    last_used: float
    host: str = ""
    repository: str = ""
    reference: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    """Other annotations of an entry the gateway did not write, kept as they were."""


def ref_name(host: str, repository: str, reference: str) -> str:
    """The ``org.opencontainers.image.ref.name`` of a preheated reference (tag or digest)."""
    return f"{host}/{repository}{'@' if reference.startswith('sha256:') else ':'}{reference}"


def split_ref_name(name: str) -> tuple[str, str, str] | None:
    """``host/repo:tag`` or ``host/repo@sha256:..`` into its parts; None for other names."""
    host, _, rest = name.partition("/")
    repository, at, reference = rest.partition("@")
    if not at:
        repository, _, reference = rest.rpartition(":")
    if not host or not repository or not reference or ":" in repository:
        return None
    return host, repository, reference


def _links(raw: bytes) -> _Links | None:
    try:
        doc = msgspec.json.decode(raw, type=_Doc)
    except (msgspec.DecodeError, RecursionError):
        return None
    if doc.manifests is not None:
        return _Links(
            doc.mediaType or OCI_INDEX,
            tuple((m.digest, m.mediaType) for m in doc.manifests if DIGEST_RE.match(m.digest)),
            (),
        )
    if doc.config is None:
        return None
    blobs = [ref.digest for ref in [doc.config, *(doc.layers or [])] if not ref.urls and DIGEST_RE.match(ref.digest)]
    return _Links(doc.mediaType or OCI_MANIFEST, (), tuple(blobs))


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None, default: float) -> float:
    try:
        return datetime.strptime(text or "", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return default


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` or the previous content, never a mix: temp file, fsync, rename, fsync of the directory."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_open: weakref.WeakValueDictionary[Path, OciLayout] = weakref.WeakValueDictionary()


class OciLayout:
    """One cache directory as an OCI image layout; see the module docstring."""

    @classmethod
    def open(cls, root: Path, max_bytes: int | None = None) -> OciLayout:
        """The layout of ``root``, shared by every cluster of this process that names the same directory."""
        root = root.expanduser().resolve()
        layout = _open.get(root)
        if layout is None:
            layout = _open[root] = cls(root, max_bytes)
        elif max_bytes is not None:
            layout.max_bytes = min(layout.max_bytes, max_bytes)
        return layout

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.files = root / "files" / "sha256"
        self.temp = root / "tmp"
        for directory in (self.blobs, self.files, self.temp):
            directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes if max_bytes is not None else default_max_bytes(root)
        self.evictions = 0
        """Images and files evicted to make room (blobs nothing referenced are not counted)."""
        self.evicted_bytes = 0
        self.hits = 0
        self.misses = 0
        """For the mirror to count what it served and what it did not find."""
        self.problem = ""
        """What was wrong with the directory at start (an unreadable index.json set aside), for health checks."""
        self._lock = asyncio.Lock()
        self._entries: dict[str, _Entry] = {}
        self._sizes: dict[str, int] = {}
        self._files: dict[str, list[float]] = {}  # key -> [size, last used]
        self._links: dict[str, _Links | None] = {}
        self._closure: dict[str, frozenset[str]] = {}
        self._users: dict[str, set[str]] = {}
        self._repos: dict[tuple[str, str], set[str]] = {}
        self._hosts: dict[str, set[str]] = {}
        self._manifests: dict[tuple[str, str], dict[str, Descriptor]] = {}
        self._pins: Counter[str] = Counter()
        self._pinned_files: Counter[str] = Counter()
        self._reserved: dict[str, int] = {}
        self._active: Counter[str] = Counter()
        self._dirty = False
        self.held_bytes = 0
        self._load()

    # --- read API (the mirror's) ------------------------------------------------------------

    def resolve(self, host: str | None, repository: str, reference: str) -> Descriptor | None:
        """The manifest ``reference`` (a tag or a ``sha256:`` digest) names in ``repository`` from
        ``host`` (None: the one origin host holding it; :class:`AmbiguousOrigin` when several do).
        By digest, any stored manifest of the repository (an index or a platform's) resolves."""
        hosts = self._hosts.get(repository)
        if not hosts:
            return None
        if host is None:
            if len(hosts) > 1:
                raise AmbiguousOrigin(sorted(hosts))
            (host,) = hosts
        if reference.startswith("sha256:"):
            return self._manifests.get((host, repository), {}).get(reference)
        entry = self._entries.get(ref_name(host, repository, reference))
        return entry.descriptor if entry is not None and entry.descriptor.digest in self._sizes else None

    def blob_path(self, digest: str) -> Path | None:
        """Where a blob (or manifest) present in the layout is, else None."""
        if digest not in self._sizes or not DIGEST_RE.match(digest):
            return None
        return self.blobs / digest.removeprefix("sha256:")

    def touch(self, digest: str) -> None:
        """Record the images holding ``digest`` as pulled now: they are evicted last."""
        now = time.time()
        for name in self._users.get(digest, ()):
            self._entries[name].last_used = now
            self._dirty = True

    # --- write API (the local adapter's) ----------------------------------------------------

    def path_of(self, digest: str) -> Path:
        """The final name of a blob, present or not."""
        return self.blobs / digest.removeprefix("sha256:")

    def reserve(self, name: str, planned: dict[str, int] | None = None) -> Reservation:
        """``async with layout.reserve(ref name, {digest: size}) as room``: room for an image's blobs
        (more with ``await room.plan(...)``), which stay pinned (never evicted) until the block ends."""
        return Reservation(self, name, planned or {})

    def blob_committed(self, digest: str, size: int) -> None:
        """A checked blob was renamed to its final name."""
        self.held_bytes += size - self._sizes.get(digest, 0)
        self._sizes[digest] = size
        self._reserved.pop(digest, None)

    async def record(self, host: str, repository: str, reference: str, descriptor: Descriptor) -> None:
        """Record a preheated reference in ``index.json`` (replacing what the name held), as used now."""
        name = ref_name(host, repository, reference)
        async with self._lock:
            self._set_entry(
                _Entry(
                    name,
                    Descriptor(descriptor.digest, descriptor.mediaType, descriptor.size),
                    time.time(),
                    host,
                    repository,
                    reference,
                )
            )
            for other in list(
                self._users.get(descriptor.digest, ())
            ):  # images sharing this index may now hold more platforms
                if other != name:
                    self._recompute(other)
            await self._write_index()

    def file_committed(self, key: str, size: int) -> None:
        """A file was renamed into ``files/sha256/<key>``."""
        previous = self._files.get(key)
        self.held_bytes += size - (int(previous[0]) if previous else 0)
        self._files[key] = [size, time.time()]

    def file_used(self, key: str) -> None:
        """A file already present was preheated again: it is evicted last."""
        entry = self._files.get(key)
        if entry is not None:
            entry[1] = time.time()
            with contextlib.suppress(OSError):  # the eviction order survives a restart through the file's mtime
                os.utime(self.files / key, (entry[1], entry[1]))

    def pin_file(self, key: str) -> None:
        self._pinned_files[key] += 1

    def unpin_file(self, key: str) -> None:
        self._pinned_files[key] -= 1
        if self._pinned_files[key] <= 0:
            del self._pinned_files[key]

    async def admit_file(self, key: str, what: str) -> None:
        """Make room for a file just written (its size was not known before), or remove it and
        raise :class:`CacheFull` when it alone is larger than ``max_bytes``."""
        size = int(self._files.get(key, [0])[0])
        if size > self.max_bytes:
            self._files.pop(key, None)
            self.held_bytes -= size
            (self.files / key).unlink(missing_ok=True)
            raise CacheFull(
                f"{what} is {size} bytes, more than this cache's max_bytes ({self.max_bytes}); raise max_bytes to cache it"
            )
        async with self._lock:
            await self._make_room(0, what)

    async def flush(self) -> None:
        """Write the pull times recorded since the last write."""
        if self._dirty:
            async with self._lock:
                await self._write_index()

    def images(self) -> dict[str, Descriptor]:
        """Every recorded reference by its ref name (for tests and tools)."""
        return {name: entry.descriptor for name, entry in self._entries.items()}

    # --- reservations -----------------------------------------------------------------------

    def _enter(self, reservation: Reservation) -> None:
        self._active[reservation.name] += 1
        reservation.held = True

    async def _plan(self, reservation: Reservation, planned: dict[str, int]) -> None:
        """Pin ``planned`` for ``reservation`` and make room for what of it is not here yet."""
        new = {d: s for d, s in planned.items() if d not in reservation.planned}
        total = sum(reservation.planned.values()) + sum(new.values())
        if total > self.max_bytes:
            raise CacheFull(
                f"{reservation.name} is {total} bytes, more than this cache's max_bytes ({self.max_bytes}); raise max_bytes to cache it"
            )
        async with self._lock:
            reservation.planned.update(new)
            self._pins.update(new)  # released with the reservation, whatever happens next
            needed = {d: s for d, s in new.items() if d not in self._sizes and d not in self._reserved}
            await self._make_room(sum(needed.values()), reservation.name)
            self._reserved.update(needed)
            reservation.reserved += list(needed)

    def _release(self, reservation: Reservation) -> None:
        if not reservation.held:
            return
        reservation.held = False
        self._pins.subtract(reservation.planned)
        self._pins += Counter()  # drops the zeros
        self._active[reservation.name] -= 1
        self._active += Counter()
        for digest in reservation.reserved:
            self._reserved.pop(digest, None)

    async def _put_manifest(self, reservation: Reservation, digest: str, raw: bytes) -> None:
        if digest not in reservation.planned:
            reservation.planned[digest] = len(raw)
            self._pins[digest] += 1
        self._links[digest] = _links(raw)
        if self._sizes.get(digest) != len(raw):
            await asyncio.to_thread(_write_atomically, self.path_of(digest), raw)
            self.blob_committed(digest, len(raw))

    # --- eviction ---------------------------------------------------------------------------

    def _over(self, needed: int) -> bool:
        return self.held_bytes + sum(self._reserved.values()) + needed > self.max_bytes

    async def _make_room(self, needed: int, what: str) -> None:
        """Evict until ``needed`` more bytes fit (under the lock): orphans first, then least recently used images and files."""
        if not self._over(needed):
            return
        pinned = sum(self._sizes.get(d, 0) for d in self._pins) + sum(
            int(self._files[k][0]) for k in self._pinned_files if k in self._files
        )
        if pinned + sum(self._reserved.values()) + needed > self.max_bytes:
            raise CacheFull(
                f"no room for {what} within this cache's max_bytes ({self.max_bytes}): preheats in progress hold "
                f"{pinned + sum(self._reserved.values())} bytes; retry when they finish, or raise max_bytes"
            )
        doomed: list[Path] = []
        orphans = [d for d in self._sizes if d not in self._users and d not in self._pins]
        for digest in sorted(orphans, key=self._mtime):
            if not self._over(needed):
                break
            doomed.append(self._forget_blob(digest))
        victims = 0
        units = sorted(
            [(entry.last_used, 0, name) for name, entry in self._entries.items() if name not in self._active]
            + [(last, 1, key) for key, (_, last) in self._files.items() if key not in self._pinned_files]
        )
        for _, kind, key in units:
            if not self._over(needed):
                break
            before = self.held_bytes
            if kind == 0:
                doomed += self._drop_entry(key)
                victims += 1
            else:
                self.held_bytes -= int(self._files.pop(key)[0])
                doomed.append(self.files / key)
            self.evictions += 1
            self.evicted_bytes += before - self.held_bytes
        if victims:
            await self._write_index()  # the index first: a crash now leaves orphans, never a dangling entry
        await asyncio.to_thread(_unlink_all, doomed)

    def _mtime(self, digest: str) -> float:
        try:
            return self.path_of(digest).stat().st_mtime
        except OSError:
            return 0.0

    def _forget_blob(self, digest: str) -> Path:
        self.held_bytes -= self._sizes.pop(digest, 0)
        self._links.pop(digest, None)
        return self.path_of(digest)

    def _drop_entry(self, name: str) -> list[Path]:
        """Remove an entry and return the blobs no other entry or preheat uses."""
        entry = self._entries.pop(name)
        closure = self._closure.get(name, frozenset())
        self._drop_users(name)
        freed = [
            self._forget_blob(digest)
            for digest in closure
            if digest not in self._users and digest not in self._pins and digest in self._sizes
        ]
        self._index_repo(entry)
        return freed

    # --- the in-memory index ----------------------------------------------------------------

    def _set_entry(self, entry: _Entry) -> None:
        if entry.name in self._entries:
            self._drop_users(entry.name)
        self._entries[entry.name] = entry
        self._recompute(entry.name)

    def _drop_users(self, name: str) -> None:
        for digest in self._closure.pop(name, frozenset()):
            users = self._users.get(digest)
            if users is not None:
                users.discard(name)
                if not users:
                    del self._users[digest]

    def _recompute(self, name: str) -> None:
        """The digests an entry holds: its manifest, the manifests of it present here, their blobs."""
        self._drop_users(name)
        entry = self._entries[name]
        closure: set[str] = set()
        stack = [entry.descriptor.digest]
        while stack:
            digest = stack.pop()
            if digest in closure:
                continue
            closure.add(digest)
            links = self._links_of(digest)
            if links is not None:
                closure.update(links.blobs)
                stack.extend(child for child, _ in links.manifests if child in self._sizes)
        self._closure[name] = frozenset(closure)
        for digest in closure:
            self._users.setdefault(digest, set()).add(name)
        self._index_repo(entry)

    def _links_of(self, digest: str) -> _Links | None:
        if digest not in self._links:
            size = self._sizes.get(digest)
            if size is None or size > MAX_MANIFEST_BYTES:
                return None
            try:
                self._links[digest] = _links(self.path_of(digest).read_bytes())
            except OSError:
                return None
        return self._links[digest]

    def _index_repo(self, entry: _Entry) -> None:
        """Rebuild what resolves in ``entry``'s repository: its tags' hosts and every manifest its entries hold."""
        if not entry.repository:
            return
        key = (entry.host, entry.repository)
        names = self._repos.setdefault(key, set())
        if entry.name in self._entries:
            names.add(entry.name)
        else:
            names.discard(entry.name)
        manifests: dict[str, Descriptor] = {}
        for name in names:
            top = self._entries[name].descriptor
            stack = [(top.digest, top.mediaType)]
            while stack:
                digest, media_type = stack.pop()
                if digest in manifests or digest not in self._sizes:
                    continue
                links = self._links_of(digest)
                manifests[digest] = Descriptor(
                    digest, media_type or (links.media_type if links else OCI_MANIFEST), self._sizes[digest]
                )
                if links is not None:
                    stack.extend(links.manifests)
        hosts = self._hosts.setdefault(entry.repository, set())
        if names:
            self._manifests[key] = manifests
            hosts.add(entry.host)
        else:
            del self._repos[key]
            self._manifests.pop(key, None)
            hosts.discard(entry.host)
            if not hosts:
                del self._hosts[entry.repository]

    async def _write_index(self) -> None:
        self._dirty = False
        doc = _IndexDoc(manifests=[_index_entry(e) for e in sorted(self._entries.values(), key=lambda e: e.name)])
        await asyncio.to_thread(_write_atomically, self.root / "index.json", msgspec.json.encode(doc))

    # --- start ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the directory: migrate a cache of bare blobs, scan sizes, load the index, drop torn blobs."""
        if not (self.root / "oci-layout").is_file():
            _write_atomically(self.root / "oci-layout", LAYOUT_VERSION)
        for stale in self.root.glob(".index.json.*"):
            stale.unlink(missing_ok=True)
        with os.scandir(self.blobs) as listing:
            for item in listing:
                if item.is_file(follow_symlinks=False) and DIGEST_RE.match("sha256:" + item.name):
                    self._sizes["sha256:" + item.name] = item.stat().st_size
        with os.scandir(self.files) as listing:
            for item in listing:
                if item.is_file(follow_symlinks=False):
                    stat = item.stat()
                    self._files[item.name] = [stat.st_size, stat.st_mtime]
        self.held_bytes = sum(self._sizes.values()) + sum(int(size) for size, _ in self._files.values())
        index = self.root / "index.json"
        try:
            doc = msgspec.json.decode(index.read_bytes(), type=_IndexDoc)
        except FileNotFoundError:
            doc = _IndexDoc()
            _write_atomically(index, msgspec.json.encode(doc))
        except (OSError, msgspec.DecodeError, RecursionError) as error:
            aside = index.with_name(f"index.json.unreadable-{int(time.time())}")
            os.replace(index, aside)
            self.problem = f"{index} could not be read ({error}); set aside as {aside.name}, blobs kept"
            doc = _IndexDoc()
            _write_atomically(index, msgspec.json.encode(doc))
        now = time.time()
        for described in doc.manifests:
            if not DIGEST_RE.match(described.digest):
                continue
            annotations = dict(described.annotations)
            name = annotations.pop(REF_NAME, "")
            parts = split_ref_name(name) if name else None
            last_used = _parse_time(annotations.pop(LAST_USED, None), now)
            media_type = annotations.pop(MEDIA_TYPE, "") if parts is not None else ""
            descriptor = Descriptor(
                described.digest,
                media_type if OCI_EQUIVALENT.get(media_type) == described.mediaType else described.mediaType,
                described.size,
            )
            if parts is None:  # an entry another tool wrote: kept (and its blobs) as it was
                self._set_entry(
                    _Entry(name or f"@{described.digest}", descriptor, last_used, extra=dict(described.annotations))
                )
            else:
                self._set_entry(_Entry(name, descriptor, last_used, *parts, extra=annotations))
        self._drop_torn()

    def _drop_torn(self) -> None:
        """Remove referenced blobs whose size is not the one their manifest declares (a write cut by a crash)."""
        declared: dict[str, int] = {}
        for digest, links in list(self._links.items()):
            if links is None or not links.blobs:
                continue
            try:
                doc = msgspec.json.decode(self.path_of(digest).read_bytes(), type=_Doc)
            except (OSError, msgspec.DecodeError, RecursionError):
                continue
            for ref in [doc.config, *(doc.layers or [])]:
                if ref is not None:
                    declared[ref.digest] = ref.size
        torn = [d for d, size in declared.items() if d in self._sizes and self._sizes[d] != size]
        _unlink_all([self._forget_blob(d) for d in torn])


def _index_entry(entry: _Entry) -> _IndexEntry:
    """An entry as ``index.json`` records it: ref name, last use, and an OCI media type (see :data:`OCI_EQUIVALENT`)."""
    media_type = entry.descriptor.mediaType
    if not entry.repository:  # written by another tool: as it was
        return _IndexEntry(entry.descriptor.digest, media_type, entry.descriptor.size, entry.extra)
    annotations = {**entry.extra, REF_NAME: entry.name, LAST_USED: _rfc3339(entry.last_used)}
    if media_type in OCI_EQUIVALENT:
        annotations[MEDIA_TYPE] = media_type
    return _IndexEntry(
        entry.descriptor.digest, OCI_EQUIVALENT.get(media_type, media_type), entry.descriptor.size, annotations
    )


def _unlink_all(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def default_max_bytes(root: Path) -> int:
    """Half of the size of the filesystem holding ``root``, measured at start."""
    return shutil.disk_usage(root).total // 2


class Reservation:
    """Room held for one image's preheat; its digests are never evicted while it lasts."""

    def __init__(self, layout: OciLayout, name: str, planned: dict[str, int]) -> None:
        self.layout, self.name, self._initial = layout, name, dict(planned)
        self.planned: dict[str, int] = {}
        self.held = False
        self.reserved: list[str] = []

    async def __aenter__(self) -> Reservation:
        self.layout._enter(self)
        try:
            if self._initial:
                await self.plan(self._initial)
        except BaseException:
            self.layout._release(self)
            raise
        return self

    async def plan(self, planned: dict[str, int]) -> None:
        """Add blobs ``{digest: size}`` to fetch: evicts to make room, or raises :class:`CacheFull`."""
        await self.layout._plan(self, planned)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.layout._release(self)

    async def put_manifest(self, digest: str, raw: bytes) -> None:
        """Store a manifest (checked against ``digest`` by the caller) as a blob, byte for byte."""
        await self.layout._put_manifest(self, digest, raw)


__all__ = [
    "INDEX_TYPES",
    "AmbiguousOrigin",
    "CacheFull",
    "OciLayout",
    "Reservation",
    "parse_size",
    "ref_name",
    "split_ref_name",
]
