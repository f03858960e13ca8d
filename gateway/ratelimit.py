"""Per-credential rate limit on job creation: a token bucket for each principal.

A runaway script must not flood the store, but a Harbor policy legitimately fires a thousand
creates within seconds, so the default bucket is deep (``server.create_burst``) and refills
at ``server.create_rate_per_second``. Harbor does not retry a refused create, so size it for
your largest policy.
"""

from __future__ import annotations

import time

import cachetools


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
