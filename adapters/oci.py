"""A small OCI distribution client: it fetches manifests, does the token dance, streams blobs.

Everything an adapter needs to turn "preheat this manifest URL" into "these blobs, read to
the end and checked": manifest resolution (OCI index and Docker list down to per-platform
manifests, :mod:`adapters.manifest`), registry authentication (the caller's header first, then
the Bearer token dance with credentials), redirects checked against the URL policy and never
carrying the registry's ``Authorization`` to another origin (:mod:`adapters.redirects`), and
blob streaming through a sha256 check (for a further copy of a checked blob, a fingerprint
compared with it) that never holds a blob in memory (:mod:`adapters.streaming`). Transient
failures are retried with backoff and jitter.

What a registry sends is not trusted (docs/security.md): every body is read within a cap
counted after decompression (:class:`ReadLimits`, :mod:`adapters.bounded`), a blob is cut at
the size its manifest declares, every digest is checked before it becomes a URL, and text a
registry wrote is quoted cut short. Credentials for a registry go only to its own origin and
to the token service its own 401 names (over TLS unless the registry itself is plain HTTP).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

import cachetools
import httpx
import msgspec

from adapters.base import Credentials
from adapters.bounded import (
    BODY_SECONDS,
    BodyError,
    TooLarge,
    decoded_view,
    quote,
    read_capped,
    read_excerpt,
)
from adapters.describe import certificate_advice, describe
from adapters.fairshare import FairShare
from adapters.fingerprints import Fingerprints
from adapters.guard import RefusedConnection
from adapters.manifest import Blob, Manifest, decode_manifest, list_blobs, parse_manifest, select_platforms
from adapters.redirects import get_following_redirects
from adapters.reference import DIGEST_RE, MANIFEST_ACCEPT, ImageRef
from adapters.retry import RegistryError, retry_after, retrying
from adapters.streaming import BlobSink, BrokenStream, CappedSink, Checks, Unvouched, Verify, drain
from adapters.throttle import Throttle
from adapters.transport import SSL_EXTENSION, CertificateRejected
from adapters.urlpolicy import RefusedURL, URLPolicy, origin

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
RETRY_ATTEMPTS = 4
"""Attempts at one manifest or blob before a transient failure is final (:func:`adapters.retry.retrying`)."""
RETRY_BASE_SECONDS = 0.5

_TOKEN = re.compile(r"[\x21-\x7e]+\Z")
T = TypeVar("T")


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


@dataclass
class RegistryAuth:
    """How to authenticate to one registry for one job.

    ``header`` is the caller's ``Authorization`` value (Harbor's short-lived token), tried
    first. ``credentials`` feed the token dance when there is no header or it is refused.
    ``ssl`` is the job's own TLS to the registry (``certificate_chain``, ``insecure_skip_verify``):
    every request to the registry's origin carries it, and the token service's when it shares that
    origin; other hosts (object storage a blob redirects to) get their own. ``None``: the client's
    (``registries.tls`` for the host, else the default trust).
    """

    header: str | None = None
    credentials: Credentials | None = None
    bearer: str | None = field(default=None, repr=False)
    ssl: SSLContext | None = field(default=None, repr=False)

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
        # Tokens live until they expire; kept apart per TLS setting, so an answer got over a caller's
        # own TLS (a skip-verify that reached a man in the middle) never serves a job over another.
        self._tokens: cachetools.TLRUCache[tuple[str | SSLContext | None, ...], tuple[str, float]] = (
            cachetools.TLRUCache(maxsize=4096, ttu=lambda _key, value, _now: value[1], timer=time.monotonic)
        )
        # Keyed by the origin (scheme://host:port) whose 401 issued the challenge, never by another's,
        # and by the TLS it was heard over, for the same reason.
        self._challenges: cachetools.TTLCache[tuple[str, SSLContext | None], _Challenge] = cachetools.TTLCache(
            maxsize=1024, ttl=3600
        )
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
            return Manifest(cached[0], reference, cached[1], decode_manifest(cached[1], where))
        url = ref.manifest_url(reference) + query
        limit = self.limits.manifest_bytes

        async def attempt() -> Manifest:
            async with self.open(url, auth, ref, accept=MANIFEST_ACCEPT, what=f"manifest {where}") as response:
                raw = await self._read_whole(response, limit, "registries.max_manifest_bytes", f"manifest {where}")
                return parse_manifest(raw, response.headers.get("content-type", ""), reference, where)

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
            raise RegistryError(f"reading {what} broke off: {describe(error)}", transient=True) from None

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
            self.list_blobs(top, ref, blobs)
            return fetched, list(blobs.values())
        entries = select_platforms(top, platform, ref)
        del top
        for entry in entries:
            child = await self.get_manifest(ref, auth, entry.digest, query=query)
            fetched.append(child.digest)
            if not child.is_index:
                self.list_blobs(child, ref, blobs)
        return fetched, list(blobs.values())

    def list_blobs(self, manifest: Manifest, ref: ImageRef, blobs: dict[str, Blob]) -> None:
        """Add an image manifest's blobs to ``blobs`` (:func:`adapters.manifest.list_blobs`) within this client's limits."""
        list_blobs(manifest, ref, blobs, max_blob_bytes=self.limits.blob_bytes)

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
        checks = Checks(self.fingerprints, blob, where, verify, source=source or ref.base)

        def read() -> Awaitable[int]:
            return self.retrying(lambda: self._fetch_once(url, where, ref, auth, open_sink, on_bytes, throttle, checks))

        try:
            try:
                return await read()
            except Unvouched:  # the copy under its sha256 check failed: read this one again, checking its own
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
        checks: Checks,
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
                capped = CappedSink(sink, blob_size, where)  # cut at the declared size + 1 byte
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
        own, registry = origin(url), origin(ref.base)
        tls = auth.ssl if own == registry else None  # the job's TLS is for its registry only
        header = auth.bearer or auth.header
        if header is None and (challenge := self._challenges.get((own, tls))) is not None:
            header = await self._authorize(challenge, auth, ref, what)
        response = await self._send(url, accept, header, what, tls, registry)
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
        self._challenges[own, tls] = challenge
        caller_refused = header is not None and header == auth.header
        if caller_refused and auth.credentials is None:
            raise RegistryError(
                f"{ref.host} refused the token the caller sent for {ref.repository} (401): it expired or lacks pull "
                f"access; re-run the preheat, or configure registries.credentials for {ref.host}",
                status=401,
            )
        header = await self._authorize(challenge, auth, ref, what)
        return await self._send(url, accept, header, what, tls, registry)

    async def _authorize(self, challenge: _Challenge, auth: RegistryAuth, ref: ImageRef, what: str) -> str:
        credentials = auth.credentials
        if challenge.scheme == "basic":
            if credentials is None:
                raise RegistryError(
                    f"{ref.host} asks for a username and password to read {what} and the request carried none "
                    f"{_no_credentials_fix(auth, ref)}",
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
            auth.ssl,
        )
        cached = self._tokens.get(key)
        if cached is not None:
            auth.bearer = f"Bearer {cached[0]}"
            return auth.bearer
        token, expires_in = await self._fetch_token(realm, service, scope, credentials, ref, auth.ssl)
        self._tokens[key] = (token, time.monotonic() + max(5.0, expires_in - 10.0))
        auth.bearer = f"Bearer {token}"
        return auth.bearer

    async def _fetch_token(
        self,
        realm: str,
        service: str,
        scope: str,
        credentials: Credentials | None,
        ref: ImageRef,
        tls: SSLContext | None = None,
    ) -> tuple[str, float]:
        """Ask the token service ``ref``'s registry named for a pull token, with its credentials if any.

        The service must pass the URL policy as a token service (with an allowlist: be on it),
        and credentials go to it only over https, or over http when the registry itself is
        plain http (they cross the same network in clear either way). ``tls`` (the job's) is
        used when the service shares the registry's origin; another host gets its own.
        """
        shown = quote(realm, 200)
        try:
            await self.policy.check_token_service(realm, ref.host)
        except RefusedURL as error:
            raise RegistryError(f"{ref.host}'s token service is refused: {error}") from None
        same_origin = origin(realm) == origin(ref.base)
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
        extensions = {SSL_EXTENSION: tls} if tls is not None and same_origin else None
        try:
            response = await self.http.send(
                self.http.build_request("GET", url, headers=headers, extensions=extensions), stream=True
            )
        except CertificateRejected as error:
            raise RegistryError(
                f"cannot reach the token service of {ref.host} at {shown}: "
                f"{certificate_advice(error, origin(ref.base) if same_origin else '')}"
            ) from None
        except RefusedConnection as error:  # the connect-time policy: retrying would only ask DNS again
            raise RegistryError(f"cannot reach the token service of {ref.host} at {shown}: {describe(error)}") from None
        except httpx.TransportError as error:
            raise RegistryError(
                f"cannot reach the token service of {ref.host} at {shown}: {describe(error)}", transient=True
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

    async def _send(
        self,
        url: str,
        accept: str | None,
        authorization: str | None,
        what: str,
        tls: SSLContext | None = None,
        registry: str = "",
    ) -> httpx.Response:
        """GET ``url`` (:func:`get_following_redirects`), its failures as :class:`RegistryError`;
        ``tls`` for ``url``'s origin, ``registry`` the job's registry's origin (for advice)."""
        headers = {"User-Agent": self.user_agent, **({"Accept": accept} if accept else {})}
        try:
            return await get_following_redirects(
                self.http,
                self.policy,
                url,
                headers,
                {"Authorization": authorization} if authorization else {},
                ssl_context=tls,
            )
        except CertificateRejected as error:  # the same certificate fails the same way: not retried
            raise RegistryError(f"{what}: {certificate_advice(error, registry)}") from None
        except RefusedConnection as error:
            raise RegistryError(f"{what}: {describe(error)}") from None
        except httpx.TransportError as error:
            raise RegistryError(
                f"cannot reach {urlsplit(url).netloc} for {what}: {describe(error)}", transient=True
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
                f"{_no_credentials_fix(auth, ref)}",
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
                retry_after=retry_after(response),
            )
        if status >= 500:
            return RegistryError(
                f"{ref.host} failed serving {what} ({status} {detail})",
                transient=True,
                status=status,
                retry_after=retry_after(response),
            )
        return RegistryError(f"{ref.host} answered {status} for {what} ({detail})", status=status)

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` again on transient errors (:func:`adapters.retry.retrying`), counting the retries."""
        return await retrying(attempt, attempts=RETRY_ATTEMPTS, base_seconds=RETRY_BASE_SECONDS, on_retry=self._retried)

    def _retried(self) -> None:
        self.retries += 1


def _no_credentials_fix(auth: RegistryAuth, ref: ImageRef) -> str:
    """Why a request carried no credentials, and the fix."""
    if auth.ssl is not None:  # the runner withholds registries.credentials from a job with its own TLS
        return (
            "(a job with its own certificate_chain or insecure_skip_verify is never handed registries.credentials, "
            "which could reach a man in the middle that way): send the job's own username and password or "
            f"Authorization header, or configure {ref.host}'s CA in registries.tls and leave the job's TLS out"
        )
    return f"(Kraken events never do); configure registries.credentials for {ref.host}"
