"""Which of a cluster's endpoints an ``all_*`` preheat warms, and how many at once.

Dragonfly's ``ips``, ``count`` and ``percentage`` pick peers of a P2P cluster; here a
cluster's peers are the endpoints it lists (registry mirrors, HTTP proxies), so the same
arguments pick endpoints: by address, the first N as configured, or a share of them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from adapters.base import EndpointChoice, PreheatError
from adapters.gather import bounded_gather

E = TypeVar("E")


def choose(
    endpoints: Sequence[E], choice: EndpointChoice, *, names: Callable[[E], tuple[str, ...]], cluster: str
) -> list[E]:
    """The endpoints ``choice`` picks, in configured order; ``names`` gives an endpoint's host name and IP.

    An address in ``choice.ips`` that names no endpoint fails the task before anything is warmed:
    a mistyped address would otherwise silently warm less than was asked.
    """
    if choice.ips:
        unknown = [ip for ip in choice.ips if not any(ip in names(e) for e in endpoints)]
        if unknown:
            known = ", ".join(" ".join(filter(None, names(e))) for e in endpoints)
            raise PreheatError(
                f"ips {', '.join(unknown)} name no endpoint of cluster {cluster}; its endpoints are: {known}"
            )
        return [e for e in endpoints if any(ip in names(e) for ip in choice.ips)]
    if choice.count is not None:
        return list(endpoints[: choice.count])
    if choice.percentage is not None:
        return list(endpoints[: max(1, math.ceil(len(endpoints) * choice.percentage / 100))])
    return list(endpoints)


async def on_each(endpoints: Sequence[E], at_once: int, warm: Callable[[E], Awaitable[None]]) -> None:
    """``warm`` every endpoint, at most ``at_once`` of them at a time (Dragonfly's ``concurrent_peer_count``)."""
    await bounded_gather(at_once, [functools.partial(warm, e) for e in endpoints])
