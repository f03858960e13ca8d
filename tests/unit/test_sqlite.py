"""The embedded SQLite store's own housekeeping: its WAL checkpoints on a worker thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store import sqlite as sqlite_store


def test_closing_the_store_waits_for_a_checkpoint_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a connection under a statement another thread runs on it crashes the process."""
    started = threading.Event()
    outcome: list[str] = []

    def slow_checkpoint(connection: sqlite3.Connection) -> None:
        started.set()
        time.sleep(0.3)
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.ProgrammingError as error:  # "Cannot operate on a closed database."
            outcome.append(f"closed under the checkpoint: {error}")
        else:
            outcome.append("finished")

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(sqlite_store, "checkpoint_wal", slow_checkpoint)

    async def open_then_close() -> None:
        driver = sqlite_store.SqliteDriver(str(tmp_path / "gateway.db"), owner=True)
        await driver.open()
        await asyncio.to_thread(started.wait, 5)
        await driver.close()
        assert outcome == ["finished"], "close() returned before the checkpoint thread was done"

    asyncio.run(open_then_close())
