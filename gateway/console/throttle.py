"""Slows repeated console sign-in failures from one client: a token bucket per address.

Every attempt takes a token *before* the credential is checked (so a burst of parallel guesses
cannot all get through while the first is still being verified); a successful sign-in gives it
back. An address with no token left is answered 429 with ``Retry-After`` without its credential
being looked at. IPv6 clients are keyed by their /64, the block one host is usually given.
Memory is bounded: at most :data:`MAX_CLIENTS` buckets, least recently used dropped first.
"""

from __future__ import annotations

import ipaddress
import time

import cachetools

MAX_CLIENTS = 10_000


def client_key(host: str | None) -> str:
    """The bucket a client address belongs to: an IPv4 address, or an IPv6 /64."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)


class SigninThrottle:
    """``burst`` attempts per client, refilled at ``per_minute``; successful ones are refunded."""

    def __init__(self, burst: int, per_minute: float, max_clients: int = MAX_CLIENTS) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self._buckets: cachetools.LRUCache[str, tuple[float, float]] = cachetools.LRUCache(maxsize=max_clients)

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def acquire(self, key: str) -> float:
        """Take an attempt for ``key``: 0 when allowed, else the seconds until the next one is."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def refund(self, key: str) -> None:
        """Give back the attempt a successful sign-in took."""
        now = time.monotonic()
        self._buckets[key] = (min(self.burst, self._level(key, now) + 1), now)
