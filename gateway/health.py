"""Cluster health, probed briefly and cached, so a thousand Harbor health checks cost a few probes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

from adapters.base import Adapter, Health

PROBE_TIMEOUT_SECONDS = 10.0
MAX_ERROR_CHARS = 300
_CANNOT_CONNECT = re.compile(r"Cannot connect to host (?P<where>\S+?) ssl:\S+ \[(?P<why>.*)\]")
_ERRNO = re.compile(r"\[Errno -?\d+\] ")
_SSL_CODE = re.compile(r"\[SSL: [A-Z_]+\] ?| ?\(_ssl\.c:\d+\)")
_SSL_ERROR = re.compile(r"\w*SSL\w*Error: \(-?\d+, '(?P<why>[^']*)'\)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
_PLAIN_WORDS = (
    (re.compile(r"Connect call failed \([^)]*\)|Connection refused", re.I), "connection refused"),
    (re.compile(r"Connection reset by peer", re.I), "connection reset by the peer"),
    (re.compile(r"Server disconnected", re.I), "the server closed the connection"),
    (
        re.compile(
            r"Name or service not known|nodename nor servname provided, or not known|"
            r"Temporary failure in name resolution",
            re.I,
        ),
        "name does not resolve",
    ),
    (re.compile(r"wrong version number", re.I), "TLS handshake failed (is it plain http?)"),
    (re.compile(r"certificate verify failed: ?", re.I), "TLS certificate not trusted: "),
)


def clean_error(text: str) -> str:
    """A health message as one clean line: the HTTP library's raw phrasing
    (``Cannot connect to host h:p ssl:default [Connection reset by peer]``, ``[Errno 104] ...``)
    in plain words, control characters removed, at most ``MAX_ERROR_CHARS`` characters."""
    text = _CANNOT_CONNECT.sub(
        lambda m: (
            f"cannot connect to {m['where']}: {m['why'] if m['why'] not in ('', 'None') else 'connection failed'}"
        ),
        text,
    )
    text = _SSL_ERROR.sub(lambda m: m["why"], _SSL_CODE.sub("", _ERRNO.sub("", text)))
    for pattern, words in _PLAIN_WORDS:
        text = pattern.sub(words, text)
    text = " ".join(_CONTROL.sub(" ", text).split()).rstrip(": ")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 6] + "…[cut]"


class ClusterHealth:
    def __init__(self, adapters: Mapping[int, Adapter], ttl: float = 5.0) -> None:
        self.adapters = adapters
        self.ttl = ttl
        self._cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._inflight: dict[int, asyncio.Task[dict[str, Any]]] = {}

    def _fresh(self, cluster_id: int) -> dict[str, Any] | None:
        """The cached result while it is younger than ``ttl``, else None."""
        cached = self._cache.get(cluster_id)
        return cached[1] if cached is not None and time.monotonic() - cached[0] < self.ttl else None

    async def get(self, cluster_id: int) -> dict[str, Any]:
        if (fresh := self._fresh(cluster_id)) is not None:
            return fresh
        task = self._inflight.get(cluster_id)
        if task is None:
            task = asyncio.create_task(self._probe(cluster_id))
            self._inflight[cluster_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(cluster_id, None))
        return await asyncio.shield(task)

    def cached(self) -> dict[int, dict[str, Any]]:
        """The last results, without probing (for metrics scrapes)."""
        return {cluster_id: body for cluster_id, (_, body) in self._cache.items()}

    async def all(self) -> dict[int, dict[str, Any]]:
        fresh = {i: body for i in self.adapters if (body := self._fresh(i)) is not None}
        if len(fresh) == len(self.adapters):  # the common case under load: no task per cluster and call
            return fresh
        ids = list(self.adapters)
        results = await asyncio.gather(*(self.get(i) for i in ids))
        return dict(zip(ids, results, strict=True))

    async def _probe(self, cluster_id: int) -> dict[str, Any]:
        started = time.monotonic()
        try:
            health = await asyncio.wait_for(self.adapters[cluster_id].check(), PROBE_TIMEOUT_SECONDS)
        except TimeoutError:
            health = Health(reachable=False, error=f"health check timed out after {PROBE_TIMEOUT_SECONDS:.0f}s")
        except Exception as error:  # a probe bug is reported, not raised
            health = Health(reachable=False, error=f"health check failed: {type(error).__name__}")
        body = {
            "reachable": health.reachable,
            "latency_ms": round(health.latency_ms or (time.monotonic() - started) * 1000, 1),
            "error": clean_error(health.error),
            "checked_at": time.time(),
        }
        self._cache[cluster_id] = (time.monotonic(), body)
        return body
