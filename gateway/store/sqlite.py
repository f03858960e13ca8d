"""The embedded store: one SQLite file, written by one connection, read by another.

SQLite allows one writer at a time, so every write transaction runs under an asyncio lock on
a dedicated connection (``BEGIN IMMEDIATE``); reads go to a second connection, which WAL mode
lets run beside the writer. One gateway process owns the file (see ``gateway.statedir``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from gateway.store import StoreUnavailable
from gateway.store.sql import Row

_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=10000")


class _Tx:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        await self.connection.execute(sql, params or {})

    async def fetchall(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return list(await self.connection.execute_fetchall(sql, params or {}))

    async def fetchone(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class SqliteDriver:
    dialect: Literal["sqlite"] = "sqlite"
    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            self._reader = await self._connect()
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {error}") from None

    async def _connect(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in _PRAGMAS:
            await connection.execute(pragma)
        return connection

    async def close(self) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                await connection.close()
        self._writer = self._reader = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        if self._writer is None:
            raise StoreUnavailable("the store is closed")
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(self._writer)
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            else:
                await self._writer.execute("COMMIT")

    async def fetchall(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        if self._reader is None:
            raise StoreUnavailable("the store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params or {}))
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from None

    async def fetchone(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
