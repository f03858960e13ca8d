"""Each blob's sha256 is checked once; every further copy of it is compared by a fast fingerprint.

Warming a blob into several caches reads one copy per cache, and each copy must be read to
the end for the cache to keep it. Hashing every copy with sha256 made the gateway's CPU
grow with caches x bytes: 2 GiB into two caches put 4 GiB through sha256, about 2.5 s of a
core with SHA instructions and four times that without, taken on a small machine from the
caches being warmed. xxh3-128 runs at about 50 GB/s. Once one copy of a blob has passed
its sha256 check, the xxh3 of those bytes is as fixed as the digest itself, so each other
copy is read through xxh3 only and compared with it: a copy that differs is reported
exactly as a failed digest check is.

The fingerprint is seeded with a random value per process. It guards against corruption,
not forgery; so does any check the gateway makes of bytes it then throws away, since a
cache could serve the gateway good bytes and its nodes bad ones. Nodes check digests
when they pull.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Awaitable

import cachetools
import xxhash

_SEED = secrets.randbits(64)


def new_fingerprint() -> xxhash.xxh3_128:
    """A fresh hash object for one copy's bytes."""
    return xxhash.xxh3_128(seed=_SEED)


class Fingerprints:
    """What each blob's bytes fingerprint to, learned from a copy that passed its sha256 check.

    Shared by every client that fetches blobs, so the copy checked through one cache or
    proxy vouches for the copies read through the others, in the same job or a later one.
    A copy waits for another copy's check only when both come from the same ``source`` (the
    origin registry): a hostile registry's copy of a digest never holds up another registry's.
    """

    def __init__(self, maxsize: int = 16384) -> None:
        self._known: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(maxsize=maxsize)
        self._claims: dict[tuple[str, str], Claim] = {}
        self.checks: collections.Counter[str] = collections.Counter()
        """Copies read, by check: ``sha256`` (their own digest) or ``fingerprint`` (compared)."""

    def known(self, digest: str) -> bytes | None:
        """The fingerprint of ``digest``'s checked bytes, if a copy has passed its check."""
        return self._known.get(digest)

    def pending(self, digest: str, source: str) -> Awaitable[bytes | None] | None:
        """The fingerprint a copy from ``source`` under its sha256 check now will learn (``None``
        if it fails); ``None`` when no copy from ``source`` is under check."""
        claim = self._claims.get((source, digest))
        return asyncio.shield(claim.outcome) if claim is not None else None

    def claim(self, digest: str, source: str) -> Claim:
        """Take the sha256 check of ``digest`` for one copy from ``source``; the caller must ``release`` it."""
        claim = self._claims[(source, digest)] = Claim(self, digest, source)
        return claim

    def _record(self, claim: Claim, fingerprint: bytes | None) -> None:
        if fingerprint is not None:
            self._known[claim.digest] = fingerprint
        if self._claims.get((claim.source, claim.digest)) is claim:
            del self._claims[(claim.source, claim.digest)]
        if not claim.outcome.done():
            claim.outcome.set_result(fingerprint)


class Claim:
    """One copy's sha256 check of a blob; copies read meanwhile wait on its ``outcome``."""

    def __init__(self, fingerprints: Fingerprints, digest: str, source: str) -> None:
        self._fingerprints = fingerprints
        self.digest = digest
        self.source = source
        self.outcome: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def learned(self, fingerprint: bytes) -> None:
        """The copy passed: record its fingerprint for every other copy."""
        self._fingerprints._record(self, fingerprint)

    def release(self) -> None:
        """The copy is done; if it never passed, the copies waiting on it learn ``None``."""
        self._fingerprints._record(self, None)
