"""Cluster health, probed briefly and cached, so a thousand Harbor health checks cost a few probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from adapters.base import Adapter, Health

PROBE_TIMEOUT_SECONDS = 10.0


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
            "error": health.error,
            "checked_at": time.time(),
        }
        self._cache[cluster_id] = (time.monotonic(), body)
        return body
