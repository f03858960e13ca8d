"""Retrying a fetch: the one failure shape every fetch raises, and the one loop that retries it.

A registry's answers (:mod:`adapters.oci`) fail as :class:`RegistryError`, a file's
(:mod:`adapters.files`) as :class:`FetchError`; both are a :class:`TransferError`, which says
whether another attempt could succeed (``transient``: connection trouble, timeouts, 5xx, 429),
the HTTP status if there was one, and how long the server asked to be left alone
(``Retry-After``). :func:`retrying` runs an attempt again on transient failures only.

This module sits below every module that reads from a registry or a file server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from adapters.base import PreheatError

RETRY_AFTER_CAP_SECONDS = 30.0
"""The longest ``Retry-After`` honoured: a server asking for more is retried after this long."""
T = TypeVar("T")


class TransferError(PreheatError):
    """A fetch failed: ``transient`` ones are worth another attempt, the others fail at once.

    ``status`` is the HTTP status that said so (``None`` when the connection failed or the
    bytes were wrong), ``retry_after`` the seconds the server's ``Retry-After`` asked for.
    """

    def __init__(
        self, message: str, *, transient: bool = False, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


class RegistryError(TransferError):
    """A registry answered with an error or could not be reached.

    ``transient`` errors (connection trouble, timeouts, 5xx, 429) are worth retrying;
    the others (401, 403, 404, digest mismatch) fail at once.
    """


class FetchError(TransferError):
    """A file could not be fetched; ``transient`` ones are worth another attempt."""


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a response's ``Retry-After`` asks for (capped), or ``None`` without a number."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(RETRY_AFTER_CAP_SECONDS, max(0.0, float(value)))
    except ValueError:
        return None


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_seconds: float,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run ``attempt`` up to ``attempts`` times while it raises a transient :class:`TransferError`.

    Between attempts it waits what the server's ``Retry-After`` asked, else ``base_seconds``
    doubled each time with jitter (half to all of it). ``on_retry`` counts each retry.
    """
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except TransferError as error:
            if not error.transient or number == attempts:
                raise
            if on_retry is not None:
                on_retry()
            if error.retry_after is not None:
                await asyncio.sleep(error.retry_after)
            else:
                await asyncio.sleep(base_seconds * 2 ** (number - 1) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")
