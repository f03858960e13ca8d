"""Rendered job status replies, each kept for one second by the process that rendered it.

A job's status is read far more often than it changes in a way a reader could notice: the
runner saves a task's progress about once a second, and scripts, ``preheat --wait`` and
dashboards may poll one job many times a second. Keeping each rendered reply for
``LIFETIME_SECONDS`` serves those polls without a store read, while every reply stays within a
second of the store on every replica, whichever replica wrote: no cross-replica invalidation is
needed. A PATCH, DELETE or cancel on this replica forgets the job at once (:meth:`forget`).
The decision and its measurement are in docs/design.md ("Status polling").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from gateway.store import JobRecord

LIFETIME_SECONDS = 1.0
"""How long a rendered reply is served: no reply is older than the store by more than this."""
MAX_ENTRIES = 10_000
MAX_BYTES = 32 << 20
"""Bounds on what is held: replies rendered within the last second, and never more than this."""

Key = tuple[int, str]


class StatusCache:
    """Each job's reply per dialect (``openapi``, ``legacy``), as rendered at most ``lifetime`` ago."""

    def __init__(
        self,
        lifetime: float = LIFETIME_SECONDS,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()  # oldest first: all live equally long
        self._bytes = 0
        self._dialects: set[str] = set()
        self._forgets = 0  # counts forget() calls: a reply loaded across one is not kept

    def fresh(self, dialect: str, job_id: int) -> bytes | None:
        """The job's reply in ``dialect`` if one was rendered within the lifetime: most polls, with no coroutine."""
        entry = self._entries.get((job_id, dialect))
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    async def reply(
        self,
        dialect: str,
        job_id: int,
        load: Callable[[int], Awaitable[JobRecord | None]],
        render: Callable[[JobRecord], bytes],
    ) -> bytes | None:
        """The job's reply in ``dialect``, or None if there is no such job (that answer is not kept)."""
        key = (job_id, dialect)
        if (body := self.fresh(dialect, job_id)) is not None:
            return body
        forgets = self._forgets
        job = await load(job_id)
        if job is None:
            return None
        body = render(job)
        if forgets == self._forgets:  # no PATCH, DELETE or cancel finished while the job was read
            self._keep(key, body)
        return body

    def forget(self, job_id: int) -> None:
        """Drop the job's replies: its next read on this replica goes to the store."""
        self._forgets += 1
        for dialect in self._dialects:
            entry = self._entries.pop((job_id, dialect), None)
            if entry is not None:
                self._bytes -= len(entry[1])

    def _keep(self, key: Key, body: bytes) -> None:
        now = time.monotonic()
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._entries[key] = (now + self.lifetime, body)
        self._bytes += len(body)
        self._dialects.add(key[1])
        entries = self._entries
        while entries:  # drop what has expired, and the oldest beyond the bounds
            expires, oldest = next(iter(entries.values()))
            if expires > now and len(entries) <= self.max_entries and self._bytes <= self.max_bytes:
                break
            entries.popitem(last=False)
            self._bytes -= len(oldest)
