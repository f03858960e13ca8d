"""A small OCI distribution client: manifests, platforms, the token dance, streamed blobs.

Everything an adapter needs to turn "preheat this manifest URL" into "these blobs, read to
the end and digest-checked": manifest resolution (OCI index and Docker list down to
per-platform manifests), registry authentication (the caller's header first, then the Bearer
token dance with credentials), redirects checked against the URL policy and never carrying
the registry's ``Authorization`` to another origin, and blob streaming through a sha256 check
(for a further copy of a checked blob, a fingerprint compared with it) that never holds a blob
in memory. Transient failures are retried with backoff and jitter.

What a registry sends is not trusted (docs/security.md): every body is read within a cap
counted after decompression (:class:`ReadLimits`, :mod:`adapters.bounded`), a blob is cut at
the size its manifest declares, every digest is checked before it becomes a URL, and text a
registry wrote is quoted cut short. Credentials for a registry go only to its own origin and
to the token service its own 401 names (over TLS unless the registry itself is plain HTTP).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

import cachetools
import httpx
import msgspec

from adapters import ratefloor
from adapters.base import Credentials, PreheatError, Throttle
from adapters.bounded import (
    BODY_SECONDS,
    BodyError,
    TooLarge,
    decoded_view,
    quote,
    read_capped,
    read_excerpt,
)
from adapters.fairshare import FairShare
from adapters.fingerprints import Claim, Fingerprints, new_fingerprint
from adapters.guard import RefusedConnection
from adapters.urlpolicy import RefusedURL, URLPolicy, origin

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MAX_MANIFEST_BYTES = 4 << 20
"""Largest manifest or index read (``registries.max_manifest_bytes``)."""
MAX_ERROR_BODY_BYTES = 64 << 10
"""Most of an error answer's body read: only a short detail of it is ever quoted (``registries.max_error_body_bytes``)."""
MAX_TOKEN_BYTES = 64 << 10
"""Largest token service answer read (``registries.max_token_bytes``)."""
MAX_BLOB_BYTES = 64 << 30
"""Largest blob size a manifest may declare; larger ones are refused at resolve time (``registries.max_blob_bytes``)."""
MANIFEST_CACHE_BYTES = 32 << 20
"""Bytes of by-digest manifests kept in memory (``registries.manifest_cache_bytes``)."""
TOKEN_TTL_CAP_SECONDS = 3600.0
"""A token is reused at most this long, whatever ``expires_in`` its service claims."""
MAX_REDIRECTS = 5
RETRY_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.5
RETRY_AFTER_CAP_SECONDS = 30.0
Verify = Literal["digest", "size"]

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
_TOKEN = re.compile(r"[\x21-\x7e]+\Z")
T = TypeVar("T")


class RegistryError(PreheatError):
    """A registry answered with an error or could not be reached.

    ``transient`` errors (connection trouble, timeouts, 5xx, 429) are worth retrying;
    the others (401, 403, 404, digest mismatch) fail at once.
    """

    def __init__(
        self, message: str, *, transient: bool = False, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class ReadLimits:
    """What the client reads from registries and token services at most (the ``registries.*`` keys)."""

    manifest_bytes: int = MAX_MANIFEST_BYTES
    """A manifest or index, decompressed; beyond it the manifest is refused."""
    error_body_bytes: int = MAX_ERROR_BODY_BYTES
    """An error answer's body: the rest is left unread (only a short detail is quoted)."""
    token_bytes: int = MAX_TOKEN_BYTES
    """A token service's answer, decompressed; beyond it the token is refused."""
    blob_bytes: int = MAX_BLOB_BYTES
    """The largest size a manifest may declare for a blob; larger declarations are refused at resolve time."""
    manifest_cache_bytes: int = MANIFEST_CACHE_BYTES
    """By-digest manifests kept in memory, counted by their bytes."""
    body_seconds: float = BODY_SECONDS
    """The longest a whole manifest or token answer may take to arrive."""


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


class Descriptor(msgspec.Struct, frozen=True):
    digest: str
    mediaType: str = ""
    size: int = 0
    platform: Platform | None = None
    annotations: dict[str, str] | None = None
    urls: list[str] | None = None


class _ManifestDoc(msgspec.Struct):
    schemaVersion: int = 2
    mediaType: str = ""
    config: Descriptor | None = None
    layers: list[Descriptor] | None = None
    manifests: list[Descriptor] | None = None


def _decode_manifest(raw: bytes, where: str) -> _ManifestDoc:
    """The document of a manifest; a malformed one (too deeply nested included) is a :class:`RegistryError`."""
    try:
        return msgspec.json.decode(raw, type=_ManifestDoc)
    except msgspec.DecodeError as error:
        raise RegistryError(f"manifest {where} is not a valid OCI/Docker manifest ({quote(str(error), 200)})") from None
    except RecursionError:
        raise RegistryError(f"manifest {where} is not a valid OCI/Docker manifest (it is nested too deeply)") from None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    raw: bytes
    doc: _ManifestDoc = field(repr=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


class Blob(msgspec.Struct, frozen=True):
    """One blob to warm: a manifest's config or a layer."""

    digest: str
    size: int
    media_type: str = ""


class BlobSink(Protocol):
    """Where a streamed blob's bytes go. One sink per attempt."""

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class _CappedSink:
    """A sink that refuses the byte after ``limit``: a blob is cut at the size its manifest declares."""

    def __init__(self, sink: BlobSink, limit: int, where: str) -> None:
        self.sink, self.limit, self.where, self.size = sink, limit, where, 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise RegistryError(
                f"{self.where} served more than the manifest's {self.limit} bytes; the registry or a cache in between "
                "served the wrong data (the gateway stopped reading there)"
            )
        self.sink.write(chunk)

    def commit(self) -> None:
        self.sink.commit()

    def discard(self) -> None:
        self.sink.discard()


class DiscardSink:
    """Reads to the end and keeps nothing: warming a cache that sits in the path."""

    def write(self, chunk: bytes) -> None:
        pass

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


@dataclass
class RegistryAuth:
    """How to authenticate to one registry for one job.

    ``header`` is the caller's ``Authorization`` value (Harbor's short-lived token), tried
    first. ``credentials`` feed the token dance when there is no header or it is refused.
    """

    header: str | None = None
    credentials: Credentials | None = None
    bearer: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"RegistryAuth(header={'<redacted>' if self.header else None}, credentials={self.credentials!r})"


@dataclass(frozen=True)
class _Challenge:
    scheme: str
    params: dict[str, str]


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> _Challenge:
    scheme, _, rest = header.strip().partition(" ")
    return _Challenge(scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest)))


def _registry_error_detail(body: bytes, reason: str) -> str:
    """The first ``code: message`` of a distribution error body (else the reason phrase), fit to quote."""
    try:
        first = msgspec.json.decode(body)["errors"][0]
        detail = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (msgspec.DecodeError, RecursionError, LookupError, TypeError, AttributeError):
        detail = ""
    return quote(str(detail) or reason or "")


def _parse_token(raw: bytes, ref: ImageRef) -> tuple[str, float]:
    """``token`` (or ``access_token``) and ``expires_in`` of a token answer; the token must be one header-safe word."""
    try:
        body = msgspec.json.decode(raw)
        token = body.get("token") or body.get("access_token")
        expires_in = float(body.get("expires_in") or 60)
    except (msgspec.DecodeError, RecursionError, AttributeError, TypeError, ValueError):
        token, expires_in = None, 0.0
    if not token:
        raise RegistryError(f"the token service of {ref.host} answered without a token")
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise RegistryError(
            f"the token service of {ref.host} answered a token that is not a single word of printable ASCII; refusing it"
        )
    if not expires_in > 0:  # NaN and negatives included
        expires_in = 60.0
    return token, min(expires_in, TOKEN_TTL_CAP_SECONDS)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(RETRY_AFTER_CAP_SECONDS, max(0.0, float(value)))
    except ValueError:
        return None


class OciClient:
    """Talks the distribution protocol to origins and mirrors over one pooled httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: URLPolicy,
        *,
        user_agent: str = "harbor-preheat-gateway",
        max_in_flight: int = 128,
        fingerprints: Fingerprints | None = None,
        limits: ReadLimits | None = None,
    ) -> None:
        self.http = http
        self.policy = policy
        self.user_agent = user_agent
        self.fingerprints = fingerprints or Fingerprints()
        self.limits = limits or ReadLimits()
        # A 1,000-tag policy queues its requests here, not in the connection pool: fairly between
        # origins, at most half the slots to one, so a slow origin cannot starve the others.
        self._in_flight = FairShare(max_in_flight)
        # By-digest manifests never change: kept as their bytes, bounded by bytes (decoded again on a hit,
        # which costs microseconds), so a registry serving many large manifests cannot grow the cache.
        self._manifests: cachetools.LRUCache[tuple[str, str, str], tuple[str, bytes]] = cachetools.LRUCache(
            maxsize=self.limits.manifest_cache_bytes, getsizeof=lambda value: len(value[1]) or 1
        )
        # Tokens live until they expire.
        self._tokens: cachetools.TLRUCache[tuple[str, ...], tuple[str, float]] = cachetools.TLRUCache(
            maxsize=4096, ttu=lambda _key, value, _now: value[1], timer=time.monotonic
        )
        # Keyed by the origin (scheme://host:port) whose 401 issued the challenge, never by another's.
        self._challenges: cachetools.TTLCache[str, _Challenge] = cachetools.TTLCache(maxsize=1024, ttl=3600)
        self.retries = 0

    # --- manifests -------------------------------------------------------------------------

    async def get_manifest(
        self, ref: ImageRef, auth: RegistryAuth, reference: str | None = None, *, query: str = ""
    ) -> Manifest:
        """Fetch one manifest (any of the four types), checking its digest."""
        reference = reference or ref.reference
        by_digest = reference.startswith("sha256:")
        if by_digest and not DIGEST_RE.match(reference):
            raise RegistryError(
                f"manifest reference {quote(reference, 80)!r} of {ref.repository} is not a sha256 digest; refusing to fetch it"
            )
        cache_key = (ref.base, ref.repository, reference)
        where = (
            f"{ref.host}/{ref.repository}:{reference}" if not by_digest else f"{ref.host}/{ref.repository}@{reference}"
        )
        if by_digest and (cached := self._manifests.get(cache_key)) is not None:
            return Manifest(cached[0], reference, cached[1], _decode_manifest(cached[1], where))
        url = ref.manifest_url(reference) + query
        limit = self.limits.manifest_bytes

        async def attempt() -> Manifest:
            async with self.open(url, auth, ref, accept=MANIFEST_ACCEPT, what=f"manifest {where}") as response:
                raw = await self._read_whole(response, limit, "registries.max_manifest_bytes", f"manifest {where}")
                return self._parse_manifest(raw, response, reference, where)

        manifest = await self.retrying(attempt)
        if by_digest and max(1, len(manifest.raw)) <= self._manifests.maxsize:
            self._manifests[cache_key] = (manifest.media_type, manifest.raw)
        return manifest

    async def _read_whole(self, response: httpx.Response, limit: int, key: str, what: str) -> bytes:
        """A whole body within ``limit`` bytes (config ``key``) and the body deadline; failures as
        :class:`RegistryError` naming ``what``."""
        try:
            return await read_capped(response, limit, seconds=self.limits.body_seconds)
        except TooLarge:
            raise RegistryError(f"{what} is larger than {limit} bytes ({key}); refusing it") from None
        except BodyError as error:
            raise RegistryError(f"{what} could not be read: {error}") from None
        except httpx.TransportError as error:
            raise RegistryError(f"reading {what} broke off: {_describe(error)}", transient=True) from None

    def _parse_manifest(self, raw: bytes, response: httpx.Response, reference: str, where: str) -> Manifest:
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"manifest {where} does not match its digest (got {digest}); the registry or a cache in between is corrupt"
            )
        doc = _decode_manifest(raw, where)
        media_type = response.headers.get("content-type", "").split(";")[0].strip() or doc.mediaType
        if media_type not in INDEX_TYPES | {OCI_MANIFEST, DOCKER_MANIFEST}:
            media_type = doc.mediaType or (OCI_INDEX if doc.manifests is not None else OCI_MANIFEST)
        if doc.schemaVersion == 1 or "prettyjws" in media_type:
            raise RegistryError(
                f"manifest {where} uses Docker schema 1, which is deprecated and not supported; rebuild and push the image"
            )
        return Manifest(media_type, digest, raw, doc)

    async def resolve_blobs(
        self, ref: ImageRef, auth: RegistryAuth, platform: str, *, query: str = ""
    ) -> tuple[list[str], list[Blob]]:
        """Resolve a manifest URL to the digests of the manifests fetched and the unique blobs to warm.

        Each platform's manifest is dropped once its blobs are listed, so an index of many large
        manifests never sits in memory whole. Every digest is checked before it becomes a URL,
        and every declared size before it is believed.
        """
        top = await self.get_manifest(ref, auth, query=query)
        fetched = [top.digest]
        blobs: dict[str, Blob] = {}
        if not top.is_index:
            self._list_blobs(top, ref, blobs)
            return fetched, list(blobs.values())
        entries = select_platforms(top, platform, ref)
        for entry in entries:
            if not DIGEST_RE.match(entry.digest):
                raise RegistryError(
                    f"index {ref.name} names a manifest with an unsupported digest {quote(entry.digest, 80)!r} "
                    f"(not sha256:<64 hex digits>); refusing to fetch it: the index is corrupt or hostile"
                )
        del top
        for entry in entries:
            child = await self.get_manifest(ref, auth, entry.digest, query=query)
            fetched.append(child.digest)
            if not child.is_index:
                self._list_blobs(child, ref, blobs)
        return fetched, list(blobs.values())

    def _list_blobs(self, manifest: Manifest, ref: ImageRef, blobs: dict[str, Blob]) -> None:
        """Add an image manifest's config and layers to ``blobs``, refusing bad digests and absurd sizes."""
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
            if descriptor.size > self.limits.blob_bytes:
                raise RegistryError(
                    f"{where} declares blob {descriptor.digest} as {descriptor.size} bytes, more than registries.max_blob_bytes "
                    f"({self.limits.blob_bytes}); refusing it: raise registries.max_blob_bytes if the image really has so large a layer"
                )
            blobs.setdefault(descriptor.digest, Blob(descriptor.digest, descriptor.size, descriptor.mediaType))

    # --- blobs -----------------------------------------------------------------------------

    async def fetch_blob(
        self,
        ref: ImageRef,
        blob: Blob,
        auth: RegistryAuth,
        open_sink: Callable[[], BlobSink],
        *,
        query: str = "",
        on_bytes: Callable[[int], None] | None = None,
        url: str | None = None,
        throttle: Throttle | None = None,
        verify: Verify = "digest",
        source: str | None = None,
    ) -> int:
        """Stream one blob to the end into a fresh sink per attempt, checked by ``verify``:
        ``digest`` checks the sha256 of one copy of each blob and compares every other copy with
        it by fingerprint (:mod:`adapters.fingerprints`); ``size`` checks only the length, for a
        cache that checks digests itself. ``source`` is the origin registry the bytes come from
        (``ref``'s own base unless ``ref`` names a cache): copies wait only for a check of a copy from
        the same source."""
        url = url or ref.blob_url(blob.digest) + query
        where = f"blob {blob.digest} of {ref.repository} from {ref.host}"
        checks = _Checks(self.fingerprints, blob, where, verify, source=source or ref.base)

        def read() -> Awaitable[int]:
            return self.retrying(lambda: self._fetch_once(url, where, ref, auth, open_sink, on_bytes, throttle, checks))

        try:
            try:
                return await read()
            except _Unvouched:  # the copy under its sha256 check failed: read this one again, checking its own
                checks.check_own_digest()
                return await read()
        finally:
            checks.release()

    async def _fetch_once(
        self,
        url: str,
        where: str,
        ref: ImageRef,
        auth: RegistryAuth,
        open_sink: Callable[[], BlobSink],
        on_bytes: Callable[[int], None] | None,
        throttle: Throttle | None,
        checks: _Checks,
    ) -> int:
        sink = open_sink()
        blob_size = checks.blob.size
        try:
            async with self.open(url, auth, ref, what=where) as response:
                try:
                    body = decoded_view(response)  # an encoded body is inflated in bounded pieces
                except BodyError as error:
                    raise RegistryError(f"{where} could not be read: {error}") from None
                check = checks.next()  # chosen once a copy is coming: a cache that is down never holds a blob's check
                capped = _CappedSink(sink, blob_size, where)  # cut at the declared size + 1 byte
                try:
                    size = await drain(body, capped, on_bytes=on_bytes, throttle=throttle, hashes=check.hashes)
                except BrokenStream as broken:
                    raise RegistryError(
                        f"reading {where} broke off after {broken.received} bytes: {broken.reason}", transient=True
                    ) from None
                except BodyError as error:
                    raise RegistryError(f"{where} could not be read: {error}") from None
            if size != blob_size:  # in every verify mode: a digest that matches does not make a declared size true
                raise RegistryError(
                    f"{where} was {size} bytes where the manifest says {blob_size}; the registry or a cache in between served the wrong data"
                )
            await check.vouch(size)  # may wait for another copy's check: the connection is back in the pool
            sink.commit()
            return size
        except BaseException:
            sink.discard()
            raise

    # --- transport -------------------------------------------------------------------------

    @asynccontextmanager
    async def open(
        self, url: str, auth: RegistryAuth, ref: ImageRef, *, accept: str | None = None, what: str
    ) -> AsyncIterator[httpx.Response]:
        """GET ``url`` with authentication and checked redirects; yields a 200 response."""
        async with self._in_flight.slot(f"{ref.scheme}://{ref.host}"):  # fair between origins (adapters.fairshare)
            response = await self._authenticated(url, auth, ref, accept, what)
            try:
                if response.status_code != 200:
                    body = await read_excerpt(response, self.limits.error_body_bytes)  # only a detail is quoted
                    raise self._status_error(response, body, what, auth, ref)
                yield response
            finally:
                await response.aclose()

    async def _authenticated(
        self, url: str, auth: RegistryAuth, ref: ImageRef, accept: str | None, what: str
    ) -> httpx.Response:
        """GET ``url`` with the credentials of its own origin; a 401 from that origin starts the token dance.

        A 401 from anywhere else (a host the registry redirected to) never does: the registry's
        credentials, the caller's token and tokens got with them go to the registry's origin and
        the token service its own 401 named, nowhere else.
        """
        own = origin(url)
        header = auth.bearer or auth.header
        if header is None and (challenge := self._challenges.get(own)) is not None:
            header = await self._authorize(challenge, auth, ref, what)
        response = await self._send(url, accept, header, what)
        if response.status_code != 401:
            return response
        answered = origin(str(response.request.url))
        await read_excerpt(response, self.limits.error_body_bytes)  # read a short body so the connection is kept
        await response.aclose()
        if answered != own:
            raise RegistryError(
                f"{ref.host} sent the gateway on to {answered} for {what}, and {answered} asks for credentials (401): the "
                f"gateway sends {ref.host}'s credentials and the caller's token only to {own} and the token service it names; "
                "make that target accept the request as it is (a signed URL), or preheat from it directly",
                status=401,
            )
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        self._challenges[own] = challenge
        caller_refused = header is not None and header == auth.header
        if caller_refused and auth.credentials is None:
            raise RegistryError(
                f"{ref.host} refused the token the caller sent for {ref.repository} (401): it expired or lacks pull "
                f"access; re-run the preheat, or configure registries.credentials for {ref.host}",
                status=401,
            )
        header = await self._authorize(challenge, auth, ref, what)
        return await self._send(url, accept, header, what)

    async def _authorize(self, challenge: _Challenge, auth: RegistryAuth, ref: ImageRef, what: str) -> str:
        credentials = auth.credentials
        if challenge.scheme == "basic":
            if credentials is None:
                raise RegistryError(
                    f"{ref.host} asks for a username and password to read {what}: configure registries.credentials for {ref.host}",
                    status=401,
                )
            auth.bearer = (
                "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
            )
            return auth.bearer
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise RegistryError(f"{ref.host} answered 401 without a usable challenge for {what}", status=401)
        scope = f"repository:{ref.repository}:pull"
        realm, service = challenge.params["realm"], challenge.params.get("service", "")
        key = (
            realm,
            service,
            scope,
            credentials.username if credentials else "",
            credentials.password if credentials else "",
        )
        cached = self._tokens.get(key)
        if cached is not None:
            auth.bearer = f"Bearer {cached[0]}"
            return auth.bearer
        token, expires_in = await self._fetch_token(realm, service, scope, credentials, ref)
        self._tokens[key] = (token, time.monotonic() + max(5.0, expires_in - 10.0))
        auth.bearer = f"Bearer {token}"
        return auth.bearer

    async def _fetch_token(
        self, realm: str, service: str, scope: str, credentials: Credentials | None, ref: ImageRef
    ) -> tuple[str, float]:
        """Ask the token service ``ref``'s registry named for a pull token, with its credentials if any.

        The service must pass the URL policy as a token service (with an allowlist: be on it),
        and credentials go to it only over https, or over http when the registry itself is
        plain http (they cross the same network in clear either way).
        """
        shown = quote(realm, 200)
        try:
            await self.policy.check_token_service(realm, ref.host)
        except RefusedURL as error:
            raise RegistryError(f"{ref.host}'s token service is refused: {error}") from None
        if credentials is not None and urlsplit(realm).scheme != "https" and ref.scheme == "https":
            raise RegistryError(
                f"{ref.host}'s token service {shown} is plain http: the gateway does not send {ref.host}'s credentials there "
                f"in clear; serve the token service over https (or the registry over http)"
            )
        query = urlencode({k: v for k, v in (("service", service), ("scope", scope)) if v})
        headers = {"User-Agent": self.user_agent}
        if credentials is not None:
            headers["Authorization"] = (
                "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
            )
        url = f"{realm}{'&' if '?' in realm else '?'}{query}"
        try:
            response = await self.http.send(self.http.build_request("GET", url, headers=headers), stream=True)
        except RefusedConnection as error:  # the connect-time policy: retrying would only ask DNS again
            raise RegistryError(
                f"cannot reach the token service of {ref.host} at {shown}: {_describe(error)}"
            ) from None
        except httpx.TransportError as error:
            raise RegistryError(
                f"cannot reach the token service of {ref.host} at {shown}: {_describe(error)}", transient=True
            ) from None
        try:
            if response.status_code != 200:
                body = await read_excerpt(response, self.limits.error_body_bytes)
                detail = _registry_error_detail(body, response.reason_phrase)
                status = response.status_code
                if status in (401, 403):
                    who = f"user {credentials.username!r}" if credentials else "anonymous access"
                    raise RegistryError(
                        f"the token service of {ref.host} refused {who} ({status} {detail}); check registries.credentials for {ref.host}",
                        status=status,
                    )
                raise RegistryError(
                    f"the token service of {ref.host} answered {status} ({detail})",
                    transient=status >= 500,
                    status=status,
                )
            raw = await self._read_whole(
                response,
                self.limits.token_bytes,
                "registries.max_token_bytes",
                f"the answer of the token service of {ref.host}",
            )
        finally:
            await response.aclose()
        return _parse_token(raw, ref)

    async def _send(self, url: str, accept: str | None, authorization: str | None, what: str) -> httpx.Response:
        headers = {"User-Agent": self.user_agent, **({"Accept": accept} if accept else {})}
        try:
            return await get_following_redirects(
                self.http, self.policy, url, headers, {"Authorization": authorization} if authorization else {}
            )
        except RefusedConnection as error:
            raise RegistryError(f"{what}: {_describe(error)}") from None
        except httpx.TransportError as error:
            raise RegistryError(
                f"cannot reach {urlsplit(url).netloc} for {what}: {_describe(error)}", transient=True
            ) from None
        except RefusedURL as error:
            raise RegistryError(f"redirect for {what} refused: {error}") from None

    def _status_error(
        self, response: httpx.Response, body: bytes, what: str, auth: RegistryAuth, ref: ImageRef
    ) -> RegistryError:
        status = response.status_code
        detail = _registry_error_detail(body, response.reason_phrase)
        if status == 404:
            return RegistryError(
                f"{what} not found (404 {detail}): check that the repository and tag exist", status=404
            )
        if status == 401 and auth.header is None and auth.credentials is None:
            return RegistryError(
                f"{ref.host} refused anonymous access to {what} (401 {detail}): the request carried no registry credentials "
                f"(Kraken events never do); configure registries.credentials for {ref.host}",
                status=401,
            )
        if status == 401:
            return RegistryError(
                f"{ref.host} refused access to {what} (401 {detail}): the credentials lack pull access to {ref.repository}",
                status=401,
            )
        if status == 403:
            return RegistryError(
                f"{ref.host} forbids {what} (403 {detail}): the account lacks pull access to {ref.repository}",
                status=403,
            )
        if status == 429:
            return RegistryError(
                f"{ref.host} is rate-limiting (429) {what}",
                transient=True,
                status=429,
                retry_after=_retry_after(response),
            )
        if status >= 500:
            return RegistryError(
                f"{ref.host} failed serving {what} ({status} {detail})",
                transient=True,
                status=status,
                retry_after=_retry_after(response),
            )
        return RegistryError(f"{ref.host} answered {status} for {what} ({detail})", status=status)

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` again on transient errors, with exponential backoff and jitter."""
        for number in range(1, RETRY_ATTEMPTS + 1):
            try:
                return await attempt()
            except RegistryError as error:
                if not error.transient or number == RETRY_ATTEMPTS:
                    raise
                delay = error.retry_after if error.retry_after is not None else RETRY_BASE_SECONDS * 2 ** (number - 1)
                self.retries += 1
                await asyncio.sleep(delay * (0.5 + random.random() / 2) if error.retry_after is None else delay)
        raise AssertionError("unreachable")


class BrokenStream(Exception):
    """The connection failed mid-body; ``received`` bytes had arrived. Worth another attempt."""

    def __init__(self, received: int, reason: str) -> None:
        super().__init__(reason)
        self.received = received
        self.reason = reason


async def drain(
    response: httpx.Response,
    sink: BlobSink,
    *,
    on_bytes: Callable[[int], None] | None = None,
    throttle: Throttle | None = None,
    hashes: Sequence[Hash] = (),
    floor: ratefloor.TransferFloor | None = None,
) -> int:
    """Read a body to the end into ``sink`` and through ``hashes``, in bounded chunks; returns its length.

    The one streaming loop for blobs and files. A transport failure mid-body becomes
    :class:`BrokenStream`, which callers turn into their own retryable error. A body that
    arrives slower than ``floor`` (by default the task's, :func:`adapters.ratefloor.current`)
    is cut with a :class:`RegistryError` naming the rate, not retried: a drip would hold its
    fetch slot again on every attempt. Time spent in ``throttle`` does not count.
    """
    try:
        async with ratefloor.paced(floor) as watch:
            async for chunk in response.aiter_bytes():
                for hash_ in hashes:
                    hash_.update(chunk)
                sink.write(chunk)
                watch.add(len(chunk))
                if on_bytes is not None:
                    on_bytes(len(chunk))
                if throttle is not None:
                    with watch.excused():  # waiting on our own bandwidth cap is not the source's slowness
                        await throttle.consume(len(chunk))
    except httpx.TransportError as error:
        raise BrokenStream(watch.received, _describe(error)) from None
    except ratefloor.TooSlow as slow:
        url = response.request.url  # its origin only: a signed URL's query and any user-info stay out
        source = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        raise RegistryError(f"reading from {source} stopped: {slow}") from None
    return watch.received


class Hash(Protocol):
    """What :func:`drain` feeds: hashlib's and xxhash's objects alike."""

    def update(self, data: bytes, /) -> None: ...


class _Check(Protocol):
    """How one attempt decides its bytes are the blob: the hashes they go through, then ``vouch``,
    which raises :class:`RegistryError` when they are not."""

    hashes: tuple[Hash, ...]

    async def vouch(self, size: int) -> None: ...


class _Unvouched(Exception):
    """A copy read for comparison lost the copy it was to be compared with."""


class _LengthCheck:
    """``verify: size``: the length only."""

    def __init__(self, blob: Blob, where: str) -> None:
        self.blob, self.where = blob, where
        self.hashes: tuple[Hash, ...] = ()

    async def vouch(self, size: int) -> None:
        pass  # every copy's length is checked against the manifest's before its check vouches (OciClient._fetch_once)


class _DigestCheck:
    """The sha256 of every byte; bytes that pass teach their fingerprint to the other copies."""

    def __init__(self, blob: Blob, where: str, claim: Claim) -> None:
        self.blob, self.where, self.claim = blob, where, claim
        self.sha256, self.fingerprint = hashlib.sha256(), new_fingerprint()
        self.hashes: tuple[Hash, ...] = (self.sha256, self.fingerprint)

    async def vouch(self, size: int) -> None:
        got = "sha256:" + self.sha256.hexdigest()
        if got != self.blob.digest:
            raise RegistryError(
                f"{self.where} failed its digest check (got {got}, {size} bytes); the registry or a cache in between served corrupt data"
            )
        self.claim.learned(self.fingerprint.digest())


class _FingerprintCheck:
    """Another copy: its fingerprint must equal that of a copy that passed its sha256 check."""

    def __init__(self, blob: Blob, where: str, reference: bytes | Awaitable[bytes | None]) -> None:
        self.blob, self.where, self.reference = blob, where, reference
        self.fingerprint = new_fingerprint()
        self.hashes: tuple[Hash, ...] = (self.fingerprint,)

    async def vouch(self, size: int) -> None:
        reference = self.reference if isinstance(self.reference, bytes) else await self.reference
        if reference is None:
            raise _Unvouched
        if self.fingerprint.digest() != reference:
            raise RegistryError(
                f"{self.where} differs from a copy of {self.blob.digest} that passed its digest check ({size} bytes); "
                "the registry or a cache in between served corrupt data"
            )


class _Checks:
    """The checks of one blob fetch's attempts, each chosen when its response is open."""

    def __init__(self, fingerprints: Fingerprints, blob: Blob, where: str, verify: Verify, *, source: str) -> None:
        self.fingerprints, self.blob, self.where, self.verify, self.source = fingerprints, blob, where, verify, source
        self._claim: Claim | None = None
        self._own_digest = False

    def next(self) -> _Check:
        if self.verify == "size":
            return _LengthCheck(self.blob, self.where)
        if self._claim is None:
            reference = self.fingerprints.known(self.blob.digest)
            if reference is None and not self._own_digest:
                reference = self.fingerprints.pending(self.blob.digest, self.source)
            if reference is not None:
                self.fingerprints.checks["fingerprint"] += 1
                return _FingerprintCheck(self.blob, self.where, reference)
            self._claim = self.fingerprints.claim(self.blob.digest, self.source)  # held across this fetch's retries
        self.fingerprints.checks["sha256"] += 1
        return _DigestCheck(self.blob, self.where, self._claim)

    def check_own_digest(self) -> None:
        """No more waiting on other copies: a copy with no known fingerprint takes the sha256 check."""
        self._own_digest = True

    def release(self) -> None:
        if self._claim is not None:
            self._claim.release()


async def get_following_redirects(
    client: httpx.AsyncClient,
    policy: URLPolicy,
    url: str,
    headers: dict[str, str],
    credentials: dict[str, str],
) -> httpx.Response:
    """GET ``url`` (streamed), following redirects by hand: the one place redirects are followed.

    Every target must pass ``policy.check_redirect``, and ``credentials`` (an Authorization
    header, a caller's token) go only to the first URL's origin (scheme, host and port), never
    to where it redirects (object storage with a signed URL): an https registry redirecting to
    http on its own host gets no credentials in clear. The final URL is ``response.request.url``.
    Raises ``httpx.TransportError`` or ``RefusedURL``.
    """
    first = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        sent = {**headers, **credentials} if origin(url) == first else headers
        response = await client.send(client.build_request("GET", url, headers=sent), stream=True)
        if response.status_code not in (301, 302, 303, 307, 308) or "location" not in response.headers:
            return response
        await response.aclose()
        url = urljoin(url, response.headers["location"])
        await policy.check_redirect(url)
    raise RefusedURL(f"more than {MAX_REDIRECTS} redirects")


def select_platforms(index: Manifest, platform: str, ref: ImageRef) -> list[Descriptor]:
    """Pick the index entries for ``platform`` (``all``: every runnable entry)."""
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
    return chosen


def _describe(error: Exception) -> str:
    """A transport error in a few words a person recognises (``connection refused``, ``timed out``)."""
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"name does not resolve ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    text = str(error) or type(error).__name__
    if text == "All connection attempts failed":
        return "connection refused or host unreachable"
    return quote(text)
