"""A bandwidth cap shared by every transfer of one cluster (``bandwidth_mib_per_second``)."""

from __future__ import annotations

import asyncio
import time


class Throttle:
    """A token bucket shared by every transfer of one cluster: a bandwidth cap for WAN links."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._allowance = bytes_per_second
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more may pass (callers take turns, so the cap is shared fairly)."""
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate) - nbytes
            self._last = now
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self.rate)
