"""``echo``: a third-party adapter that warms nothing and says so, one row per URL per host.

It shows the whole contract of ``adapters.base``: an ``Options`` struct decoded strictly from
the cluster's config keys, ``preheat`` reporting rows through ``progress`` and failing with
``PreheatError``, ``check`` for health, and ``aclose``.
"""

from __future__ import annotations

import time

import msgspec

from adapters.base import Adapter, Health, PreheatError, PreheatRequest, Progress, TaskRow


class EchoOptions(msgspec.Struct, forbid_unknown_fields=True):
    hosts: list[str]
    """Made-up node names, one row each."""
    fail_on: str = ""
    """A URL containing this fails the task (to show a failure)."""

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("hosts: list at least one host")


class EchoAdapter(Adapter):
    name = "echo"
    Options = EchoOptions
    supports = frozenset({"image", "file"})

    async def preheat(self, request: PreheatRequest, progress: Progress) -> None:
        progress.planned(len(request.urls) * len(self.options.hosts), 0)
        for url in request.urls:
            for index, host in enumerate(self.options.hosts):
                row = TaskRow(url=url, hostname=host, ip=f"192.0.2.{index + 1}")
                if self.options.fail_on and self.options.fail_on in url:
                    progress.failed(TaskRow(row.url, row.hostname, row.ip, f"echo refuses URLs with {self.options.fail_on!r}"))
                else:
                    progress.succeeded(row)
        if self.options.fail_on and any(self.options.fail_on in url for url in request.urls):
            raise PreheatError(f"echo refused a URL containing {self.options.fail_on!r}: remove it from the request")

    async def check(self) -> Health:
        started = time.monotonic()
        return Health(reachable=True, latency_ms=(time.monotonic() - started) * 1000)
