"""Single flight for warms: one fetch of an item on one target from one source, shared across jobs.

Every adapter that warms through a cache or an endpoint runs its fetches through the one
:class:`Deduper` the gateway lends it (``AdapterContext.dedupe``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable

import cachetools

from adapters import ratefloor
from adapters.base import Credentials, PreheatError
from adapters.ratefloor import TransferFloor


class _LeaderGone(PreheatError):
    """The caller a fetch was shared with went away (its job was deleted or timed out)."""


class Deduper:
    """Single flight and a recent-window for warming one item on one target, from one source.

    ``key`` names a warm: the target (a cache, an endpoint), the SOURCE it reads from (origin
    ``scheme://host:port`` and repository, or a file's identity) and the item (a digest), so
    callers of different registries never share a fetch. ``authority`` names who the fetch is
    made as (:meth:`authority`: a keyed hash of the credentials, never the secret itself):

    - same key, same authority: the caller joins the fetch in flight and shares its outcome;
    - same key, another authority: the caller waits for that fetch and uses its bytes if they
      arrived, but a failure there is not its own (someone else's token may have been refused):
      it then fetches for itself;
    - a caller whose leader was cancelled (its job deleted) fetches for itself too.

    A key warmed within ``window`` seconds is not fetched again. Failures are not remembered,
    so the next caller retries. Every fetch runs under ``floor`` (:mod:`adapters.ratefloor`).
    """

    def __init__(self, window: float = 600.0, maxsize: int = 200_000, *, floor: TransferFloor | None = None) -> None:
        self._recent: cachetools.TTLCache[tuple[str, ...], int] = (
            cachetools.TTLCache(maxsize=maxsize, ttl=window) if window > 0 else cachetools.TTLCache(maxsize=1, ttl=1e-9)
        )
        self._inflight: dict[tuple[str, ...], dict[str, asyncio.Future[int]]] = {}
        self._secret = secrets.token_bytes(32)  # this process only: authorities cannot be compared elsewhere
        self.floor = floor
        self.fetches = 0
        self.joined = 0
        self.reused = 0
        self.refetched = 0
        """Callers that fetched for themselves after the fetch they waited on failed."""

    def authority(self, *secrets_: str | None) -> str:
        """Who a fetch is made as (an Authorization header, a username and password, ...), as a
        keyed hash: equal for equal inputs within this process, and no secret can be read back."""
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in secrets_:
            data = b"" if part is None else part.encode("utf-8", "surrogatepass")
            mac.update(b"\0" if part is None else len(data).to_bytes(8, "big") + data)
        return mac.hexdigest()[:32]

    def authority_of(self, header: str | None = None, credentials: Credentials | None = None) -> str:
        """:meth:`authority` of a caller's ``Authorization`` header and registry credentials."""
        return self.authority(
            header, credentials.username if credentials else None, credentials.password if credentials else None
        )

    def authority_of_headers(self, headers: dict[str, str]) -> str:
        """:meth:`authority` of the headers a file is fetched with (tokens, cookies), in any order or case."""
        return self.authority(*sorted(f"{name.lower()}:{value}" for name, value in headers.items()))

    def forget(self, key: tuple[str, ...]) -> None:
        self._recent.pop(key, None)

    async def run(self, key: tuple[str, ...], warm: Callable[[], Awaitable[int]], *, authority: str = "") -> int:
        """Warm ``key`` with ``warm()`` (returning bytes read) unless done or in flight; see the class docstring."""
        for attempt in range(3):
            size = self._recent.get(key)
            if size is not None:
                self.reused += 1
                return size
            flights = self._inflight.get(key) or {}
            shared = flights.get(authority)
            same_authority = shared is not None
            if shared is None and flights and attempt == 0:
                shared = next(iter(flights.values()))
            if shared is None:
                break
            self.joined += 1
            try:
                return await asyncio.shield(shared)
            except _LeaderGone:
                pass
            except Exception:
                if same_authority:
                    raise  # the same source, as the same caller: the same failure
            self.refetched += 1
        return await self._lead(key, authority, warm)

    async def _lead(self, key: tuple[str, ...], authority: str, warm: Callable[[], Awaitable[int]]) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inflight.setdefault(key, {})[authority] = future
        try:
            self.fetches += 1
            with ratefloor.using(self.floor):
                size = await warm()
        except BaseException as error:
            if not future.done():
                # A cancelled leader hands on a failure its joiners fetch past.
                future.set_exception(
                    _LeaderGone("the fetch was shared with a job that went away; retry")
                    if isinstance(error, asyncio.CancelledError)
                    else error
                )
                future.exception()  # mark retrieved: joiners may not exist
            raise
        else:
            self._recent[key] = size
            future.set_result(size)
            return size
        finally:
            flights = self._inflight.get(key)
            if flights is not None and flights.get(authority) is future:
                del flights[authority]
                if not flights:
                    del self._inflight[key]
