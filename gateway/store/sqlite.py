"""The embedded store: one SQLite file in WAL mode, one writer and one reader connection.

Statements run on the event loop's own thread: a statement against a local WAL database is
cheaper than the GIL handoff a worker thread would cost it (docs/design.md, "Storage"). What
could block is lock contention with another process (``preheat-gateway token create``), so the
lock timeout is zero and a busy database is retried with ``asyncio.sleep``, never waited on.

SQLite allows one writer at a time: write transactions take an asyncio lock and ``BEGIN
IMMEDIATE``; reads use the second connection, which WAL lets run beside a writer. A serving
gateway owns the file (``owner=True``: an exclusive lock beside it, so a second one refuses to
start instead of re-running the first's tasks); the CLI may open it alongside. The WAL is folded
back into the database every few seconds by a worker thread (the only slow, fsyncing step), off
the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from gateway.store.models import StoreUnavailable
from gateway.store.sql import Row

# No automatic checkpoints: one would run inside a commit, on the event loop, and fsync.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=0",
    "PRAGMA wal_autocheckpoint=0",
)
BUSY_PATIENCE_SECONDS = 10.0
CHECKPOINT_SECONDS = 5.0


class _Tx:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.connection.execute(sql, params or {})

    async def fetchall(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self.connection.execute(sql, params or {}).fetchall()

    async def fetchone(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        return self.connection.execute(sql, params or {}).fetchone()


def _private(database: Path) -> None:
    """Create the database file readable by its owner only (it holds token hashes and sealed
    credentials), and tighten one an older version left 0644. SQLite gives its ``-wal`` and
    ``-shm`` files the database file's mode; existing ones are tightened here too.

    An existing database is never opened here: closing any descriptor of it would drop every
    POSIX lock this process holds on it, a serving store's SQLite locks included."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        except FileNotFoundError:
            pass


def _lock_exclusive(database: Path) -> Any:
    """The serving process's lock on ``database``: a second serving process would re-run the first's tasks."""
    lock = open(database.with_name(database.name + ".lock"), "a+")  # noqa: SIM115 - held while the store is open
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreUnavailable(
            f"another gateway process serves the SQLite store {database}; run one process per SQLite file, "
            "or use PostgreSQL (store.url: postgresql://...) for several replicas"
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def checkpoint_wal(connection: sqlite3.Connection) -> None:
    """Fold what the WAL holds back into the database; busy or transient, the next round folds it in."""
    with contextlib.suppress(sqlite3.Error):
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _busy(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


class SqliteDriver:
    dialect: Literal["sqlite"] = "sqlite"
    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: str, *, owner: bool = False) -> None:
        self.path = Path(path)
        self.owner = owner
        self._owner_lock: Any = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.owner and self._owner_lock is None:
                self._owner_lock = _lock_exclusive(self.path)
            _private(self.path)
            self._writer = self._connect()
            self._reader = self._connect()
            checkpointing = self._connect()
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {error}") from None
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(checkpointing), name="sqlite-checkpoint")

    async def _checkpoint_loop(self, connection: sqlite3.Connection) -> None:
        """Fold the WAL back every few seconds on a worker thread, the connection closed only once it is done.

        Closing a connection while another thread runs a statement on it crashes the process, and a
        cancelled ``to_thread`` does not stop its thread: a cancellation waits for the checkpoint."""
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_SECONDS)
                checkpoint = asyncio.ensure_future(asyncio.to_thread(checkpoint_wal, connection))
                try:
                    await asyncio.shield(checkpoint)
                except asyncio.CancelledError:
                    await asyncio.wait([checkpoint])
                    raise
        finally:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            connection.execute(pragma)
        return connection

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        for connection in (self._writer, self._reader):
            if connection is not None:
                connection.close()
        self._writer = self._reader = None
        if self._owner_lock is not None:
            self._owner_lock.close()
            self._owner_lock = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        if self._writer is None:
            raise StoreUnavailable("the store is closed")
        async with self._lock:
            await self._retry_busy(lambda: self._writer.execute("BEGIN IMMEDIATE"))
            try:
                yield _Tx(self._writer)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            else:
                await self._retry_busy(lambda: self._writer.execute("COMMIT"))

    async def fetchall(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        if self._reader is None:
            raise StoreUnavailable("the store is closed")
        return await self._retry_busy(lambda: self._reader.execute(sql, params or {}).fetchall())

    async def fetchone(self, sql: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def _retry_busy(self, statement: Any) -> Any:
        """Run ``statement``; while another process holds the database, sleep (not block) and retry."""
        deadline = time.monotonic() + BUSY_PATIENCE_SECONDS
        delay = 0.001
        while True:
            try:
                return statement()
            except sqlite3.OperationalError as error:
                if not _busy(error) or time.monotonic() > deadline:
                    raise StoreUnavailable(f"SQLite store {self.path}: {error}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
