"""Database engines: one per URL and process; SQLite files get WAL and a busy timeout."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

# How long a SQLite statement waits for another process's write lock before giving up.
# Writers here hold it for well under a second; a wait this long means something is stuck.
BUSY_TIMEOUT = 10.0


def create(url: str, immediate: bool = False) -> Engine:
    """An engine for ``url``. ``immediate`` (SQLite only): a one-off, unpooled engine whose
    transactions start with ``BEGIN IMMEDIATE``, taking the write lock up front."""
    if not url.startswith("sqlite:"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT},
        **({"poolclass": NullPool} if immediate else {}),
    )

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        _write_ahead_log(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        if immediate:
            connection.isolation_level = None  # SQLAlchemy's BEGIN below is the only one

    if immediate:

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _write_ahead_log(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL once. The switch needs an exclusive lock and SQLite does not
    wait for it (no busy handler), so a process opening a new file while another migrates
    it retries here for up to BUSY_TIMEOUT."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
