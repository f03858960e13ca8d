"""Reading a blob or file to the end: the one streaming loop, the sinks it writes to, and the
checks that vouch for a blob's bytes.

:func:`drain` reads a body in bounded chunks into a :class:`BlobSink` and through hashes,
never holding it whole, under the task's transfer floor (:mod:`adapters.ratefloor`). A blob's
copy is checked by :class:`Checks`: the sha256 of one copy of each blob, a fingerprint compared
with it for every other copy (:mod:`adapters.fingerprints`), or its length only (``verify: size``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

import httpx

from adapters import ratefloor
from adapters.describe import describe
from adapters.fingerprints import Claim, Fingerprints, new_fingerprint
from adapters.manifest import Blob
from adapters.retry import RegistryError
from adapters.throttle import Throttle

Verify = Literal["digest", "size"]
"""How a blob's copy is checked: ``digest`` (sha256 once, a fingerprint for every other copy) or ``size``."""


class BlobSink(Protocol):
    """Where a streamed blob's bytes go. One sink per attempt."""

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class CappedSink:
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
        raise BrokenStream(watch.received, describe(error)) from None
    except ratefloor.TooSlow as slow:
        url = response.request.url  # its origin only: a signed URL's query and any user-info stay out
        source = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        raise RegistryError(f"reading from {source} stopped: {slow}") from None
    return watch.received


class Hash(Protocol):
    """What :func:`drain` feeds: hashlib's and xxhash's objects alike."""

    def update(self, data: bytes, /) -> None: ...


class Check(Protocol):
    """How one attempt decides its bytes are the blob: the hashes they go through, then ``vouch``,
    which raises :class:`RegistryError` when they are not."""

    hashes: tuple[Hash, ...]

    async def vouch(self, size: int) -> None: ...


class Unvouched(Exception):
    """A copy read for comparison lost the copy it was to be compared with."""


class _LengthCheck:
    """``verify: size``: the length only."""

    def __init__(self, blob: Blob, where: str) -> None:
        self.blob, self.where = blob, where
        self.hashes: tuple[Hash, ...] = ()

    async def vouch(self, size: int) -> None:
        pass  # every copy's length is checked against the manifest's before its check vouches (OciClient.fetch_blob)


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
            raise Unvouched
        if self.fingerprint.digest() != reference:
            raise RegistryError(
                f"{self.where} differs from a copy of {self.blob.digest} that passed its digest check ({size} bytes); "
                "the registry or a cache in between served corrupt data"
            )


class Checks:
    """The checks of one blob fetch's attempts, each chosen when its response is open."""

    def __init__(self, fingerprints: Fingerprints, blob: Blob, where: str, verify: Verify, *, source: str) -> None:
        self.fingerprints, self.blob, self.where, self.verify, self.source = fingerprints, blob, where, verify, source
        self._claim: Claim | None = None
        self._own_digest = False

    def next(self) -> Check:
        if self.verify == "size":
            return _LengthCheck(self.blob, self.where)
        if self._claim is None:
            reference: bytes | Awaitable[bytes | None] | None = self.fingerprints.known(self.blob.digest)
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
