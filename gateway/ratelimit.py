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
from starlette.requests import Request

from gateway.httputil import APIError


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


def charge_job_creations(request: Request, jobs: int) -> None:
    """Charge the caller's creation rate limit for ``jobs`` jobs, all or none of them.

    A request that would create more jobs than the bucket holds now is refused whole with 429
    and a ``Retry-After`` by which its whole cost has refilled. More than ``server.create_burst``
    at once can never fit, and is refused saying so.
    """
    gateway = request.app.state.gateway
    limit = gateway.create_limit
    if limit.rate <= 0 or jobs <= 0:
        return
    if jobs > limit.burst:
        gateway.metrics.rate_limited.inc()
        raise APIError(
            429,
            f"this request would create {jobs} jobs; this credential may create at most {limit.burst} at once "
            "(server.create_burst): send them in smaller requests",
            {"Retry-After": str(max(1, round(jobs / limit.rate)))},
        )
    principal = request.scope.get("state", {}).get("principal")
    wait = limit.acquire(principal.name if principal else "anonymous", jobs)
    if wait:
        gateway.metrics.rate_limited.inc()
        what = (
            "too many jobs created by this credential"
            if jobs == 1
            else (
                f"this request would create {jobs} jobs, more than this credential may create now; no job was created"
            )
        )
        raise APIError(
            429,
            f"{what}; retry in {wait:.1f}s (server.create_rate_per_second)",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
