"""Database engines (SQLite files get WAL and a busy timeout) and database errors in one
line that says what happened and what to do (:func:`explain`)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

# How long a SQLite statement waits for another process's write lock before giving up.
# Writers here hold it for well under a second; a wait this long means something is stuck.
BUSY_TIMEOUT = 10.0
# How long to wait for a PostgreSQL server to accept a connection (a host that drops packets
# would otherwise hold a run for the system's TCP timeout, over two minutes). A URL's own
# ``connect_timeout`` wins.
CONNECT_TIMEOUT = 10


def create(url: str, immediate: bool = False) -> Engine:
    """An engine for ``url``. ``immediate`` (SQLite only): a one-off, unpooled engine whose
    transactions start with ``BEGIN IMMEDIATE``, taking the write lock up front."""
    if not url.startswith("sqlite:"):
        connect = {}
        if url.startswith("postgresql") and "connect_timeout" not in make_url(url).query:
            connect["connect_timeout"] = CONNECT_TIMEOUT
        engine = create_engine(
            url, pool_pre_ping=True, hide_parameters=True, connect_args=connect
        )  # as below
        _name_errors(engine)
        return engine
    path = url.removeprefix("sqlite:///")
    if url.startswith("sqlite:///") and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        hide_parameters=True,  # errors and logs never quote addresses or tokens
        connect_args={"timeout": BUSY_TIMEOUT},
        **({"poolclass": NullPool} if immediate else {}),
    )
    _name_errors(engine)

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


def _name_errors(engine: Engine) -> None:
    """Label every error of this engine with its database (password hidden), for explain()."""
    where = engine.url.render_as_string(hide_password=True)
    password = engine.url.password

    @event.listens_for(engine, "handle_error")
    def _label(context) -> None:  # type: ignore[no-untyped-def]
        if context.sqlalchemy_exception is not None:
            context.sqlalchemy_exception.paperpost_database = where
            context.sqlalchemy_exception.paperpost_password = password


def explain(exc: SQLAlchemyError) -> str:
    """A database error as one line: what happened, where, and what to do."""
    where = getattr(exc, "paperpost_database", None) or "the database"
    if where.startswith("sqlite:///"):
        where = make_url(where).database or where
    cause = getattr(exc, "orig", None) or exc
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    password = getattr(exc, "paperpost_password", None)
    if password:
        text = text.replace(str(password), "***")
    low = text.lower()
    if "database is locked" in low or "lock timeout" in low or "could not obtain lock" in low:
        return (
            f"{where} is locked: another process held its write lock for over "
            f"{BUSY_TIMEOUT:g} s (a stuck paperpost, or a sqlite3 shell inside a transaction?); "
            "end it, then run again"
        )
    if "readonly" in low or "read-only" in low:
        return (
            f"{where} is read-only: make the file and its folder writable by this user, or "
            "point PAPERPOST_DATABASE_URL at a writable database"
        )
    if "not a database" in low or "malformed" in low:
        return (
            f"{where} is not a readable SQLite database (corrupted?): restore it from a backup, "
            "or move it away to start afresh (every paper would then be news again)"
        )
    if "unable to open" in low:
        return f"cannot open {where}: check that its folder exists and is writable"
    if "disk i/o" in low or "full" in low:
        return f"{where}: {text}; check the disk (space, errors), then run again"
    if "connect" in low or "connection" in low or "resolve" in low:
        return (
            f"cannot connect to {where} ({text}); is the server running, and is "
            "PAPERPOST_DATABASE_URL right?"
        )
    return f"{where}: {text}; check PAPERPOST_DATABASE_URL (reachable, writable, not corrupt?)"
