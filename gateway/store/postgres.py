"""The shared store: PostgreSQL through a bounded psycopg 3 connection pool.

Every pooled connection is in autocommit mode: a read outside a transaction is one
statement on whichever connection is free, and :meth:`PostgresDriver.transaction` opens an
explicit ``BEGIN ... COMMIT`` on one connection for its whole block. Several gateway
replicas share the database; ``FOR UPDATE SKIP LOCKED`` (in ``gateway.store.sql``) keeps
them from claiming the same task, and an advisory lock serialises their migrations.

Queries arrive with ``:name`` parameters and are translated once (cached) to psycopg's
``%(name)s``. Connection failures surface as :class:`gateway.store.StoreUnavailable`
naming the server and database, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from gateway.store.models import StoreUnavailable
from gateway.store.sql import Row

log = logging.getLogger("gateway.store")

# Query parameters of the store URL that configure the pool rather than libpq (removed before
# connecting: libpq rejects URI parameters it does not know).
_POOL_PARAMS = ("pool_min", "pool_max")

# The failures that mean "the database cannot be used right now", as opposed to a bad query.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed)

# One lexical unit of SQL that matters when translating parameters: a quoted literal or
# identifier or a comment (copied, only ``%`` escaped), a ``::`` cast, a ``:name`` parameter,
# or a bare ``%``. (Dollar-quoted and ``E''`` strings are not recognised; the store uses none.)
_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|::|:([A-Za-z_][A-Za-z0-9_]*)|%""", re.DOTALL)


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """``:name`` -> ``%(name)s``; ``%`` -> ``%%``; quoted text and ``::`` casts left alone."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if match.group(1) is not None:
            return f"%({match.group(1)})s"
        if token == "%":
            return "%%"
        if token == "::":
            return token
        return token.replace("%", "%%")  # a quoted literal, identifier or comment

    return _TOKENS.sub(replace, sql)


def _row(row: tuple[Any, ...]) -> Row:
    """Rows as tuples of plain values: ``bytea`` may load as a ``memoryview``; return ``bytes``."""
    if any(isinstance(value, memoryview) for value in row):
        return tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)
    return row


class _Tx:
    def __init__(self, connection: psycopg.AsyncConnection[Any], unavailable: Any) -> None:
        self.connection = connection
        self._unavailable = unavailable

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self._unavailable():
            await self.connection.execute(translate(sql), params or {})

    async def fetchall(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        with self._unavailable():
            cursor = await self.connection.execute(translate(sql), params or {})
            return [_row(row) for row in await cursor.fetchall()]

    async def fetchone(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        with self._unavailable():
            cursor = await self.connection.execute(translate(sql), params or {})
            row = await cursor.fetchone()
        return _row(row) if row is not None else None


class PostgresDriver:
    """A ``postgresql://`` (or ``postgres://``) store URL, any libpq URI parameter allowed.

    ``pool_min`` / ``pool_max`` in the URL's query override ``min_size`` / ``max_size``.
    """

    dialect: Literal["postgresql"] = "postgresql"
    integrity_error = psycopg.errors.UniqueViolation

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        open_timeout: float = 10.0,
        acquire_timeout: float = 10.0,
    ) -> None:
        self._conninfo, pool_params = _split_url(url)
        self.min_size = int(pool_params.get("pool_min", min_size))
        self.max_size = int(pool_params.get("pool_max", max_size))
        if not 0 <= self.min_size <= self.max_size or self.max_size < 1:
            raise ValueError(
                f"PostgreSQL store pool: need 0 <= pool_min <= pool_max and pool_max >= 1, "
                f"got {self.min_size} and {self.max_size}"
            )
        self.open_timeout = open_timeout
        self.acquire_timeout = acquire_timeout
        try:
            parts = conninfo_to_dict(self._conninfo)
        except psycopg.ProgrammingError as error:
            raise ValueError(f"invalid PostgreSQL store url: {error}") from None
        self._password = str(parts.get("password") or "")
        host = parts.get("host") or parts.get("hostaddr") or "localhost"
        port = f":{parts['port']}" if parts.get("port") else ""
        user = f"{parts['user']}@" if parts.get("user") else ""
        self.description = f"{user}{host}{port}/{parts.get('dbname') or '(default database)'}"
        """Where the store lives, safe to show: ``user@host:port/dbname``, no password."""
        self._pool: AsyncConnectionPool | None = None
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresDriver({self.description!r})"

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and wait (``open_timeout``) until it holds ``min_size`` connections."""
        if self._pool is not None:
            return
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            kwargs={"autocommit": True},
            # A round trip before handing out a connection: after a server restart the pool
            # replaces dead connections instead of failing one request per connection.
            check=AsyncConnectionPool.check_connection,
            timeout=self.acquire_timeout,
            name="gateway-store",
        )
        try:
            await pool.open(wait=self.min_size > 0, timeout=self.open_timeout)
        except BaseException as error:
            await pool.close()
            if not isinstance(error, _UNAVAILABLE):
                raise
            reason = await self._why_unreachable()
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store {self.description} within {self.open_timeout:g} s"
                + (f": {reason}" if reason else "")
            ) from None
        self._pool = pool

    async def _why_unreachable(self) -> str:
        """One direct connection attempt, for the reason the pool could not connect."""
        try:
            connection = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=3)
        except psycopg.Error as error:
            return self._scrub(" ".join(str(error).split()))
        await connection.close()
        return ""

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """Call ``on_notify`` whenever another replica ``NOTIFY``s ``channel`` (reconnecting as needed)."""
        self._listener = asyncio.create_task(self._listen(channel, on_notify), name=f"listen-{channel}")

    async def _listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        delay = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {channel}")
                    delay = 1.0
                    on_notify()  # work may have arrived while we were not listening
                    async for _ in connection.notifies():
                        on_notify()
            except psycopg.Error as error:
                log.warning(
                    "LISTEN %s on %s failed (%s); retrying in %.0fs",
                    channel,
                    self.description,
                    self._scrub(" ".join(str(error).split())),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    # --- queries ---------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        """One transaction on one pooled connection: committed if the block succeeds, else rolled back."""
        pool = self._require_pool()
        with self._unavailable():
            async with pool.connection() as connection, connection.transaction():
                yield _Tx(connection, self._unavailable)

    async def fetchall(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        pool = self._require_pool()
        with self._unavailable():
            async with pool.connection() as connection:
                cursor = await connection.execute(translate(sql), params or {})
                return [_row(row) for row in await cursor.fetchall()]

    async def fetchone(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    # --- helpers ---------------------------------------------------------------------------

    def _require_pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise StoreUnavailable(f"the PostgreSQL store {self.description} is closed")
        return self._pool

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Re-raise connection-level failures as StoreUnavailable (query errors pass through)."""
        try:
            yield
        except _UNAVAILABLE as error:
            raise StoreUnavailable(
                f"PostgreSQL store {self.description}: {self._scrub(' '.join(str(error).split())) or type(error).__name__}"
            ) from None

    def _scrub(self, message: str) -> str:
        return message.replace(self._password, "***") if self._password else message


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without the pool's own query parameters, and those parameters."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {key: value for key, value in query if key in _POOL_PARAMS}
    if not ours:
        return url, {}
    rest = urlencode([(key, value) for key, value in query if key not in _POOL_PARAMS])
    return urlunsplit(parts._replace(query=rest)), ours
