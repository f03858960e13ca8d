"""Per-credential rate limit on job creation: a token bucket for each principal.

A runaway script must not flood the store, but a Harbor policy legitimately fires a thousand
creates within seconds, so the default bucket is deep (``server.create_burst``) and refills
at ``server.create_rate_per_second``. Harbor does not retry a refused create, so size it for
your largest policy.
"""

from __future__ import annotations

import math
import time

import cachetools


class RateLimited(Exception):
    """A create refused by the rate limit (the app answers 429 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._buckets: cachetools.TTLCache[str, tuple[float, float]] = cachetools.TTLCache(maxsize=100_000, ttl=3600)

    def acquire(self, key: str, cost: int = 1) -> float:
        """Take ``cost`` tokens for ``key``, all or none; returns 0 when taken, else the seconds until
        ``cost`` tokens will be there (nothing is taken then)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate

    def charge(self, caller: str, jobs: int) -> None:
        """Charge ``caller``'s bucket for creating ``jobs`` jobs, all or none of them.

        A request that would create more jobs than the bucket holds now is refused whole
        (:class:`RateLimited`) with a retry time by which its whole cost has refilled. More than
        ``server.create_burst`` at once can never fit, and is refused saying so.
        """
        if self.rate <= 0 or jobs <= 0:
            return
        if jobs > self.burst:
            raise RateLimited(
                f"this request would create {jobs} jobs; this credential may create at most {self.burst} at once "
                "(server.create_burst): send them in smaller requests",
                max(1, round(jobs / self.rate)),
            )
        wait = self.acquire(caller, jobs)
        if wait:
            what = (
                "too many jobs created by this credential"
                if jobs == 1
                else f"this request would create {jobs} jobs, more than this credential may create now; no job was created"
            )
            raise RateLimited(f"{what}; retry in {wait:.1f}s (server.create_rate_per_second)", max(1, math.ceil(wait)))
