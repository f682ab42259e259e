"""The database schema, owned by Alembic revisions in ``paperpost/migrations/versions``.

:func:`upgrade` brings a database to the newest revision. It runs on the first use of a
database in each process (``store.engine_for``) and by ``paperpost db upgrade``. The
revisions run in one transaction under a lock, so processes starting together on an
empty database do not race: on PostgreSQL a transaction-scoped advisory lock, on SQLite
the write lock (``BEGIN IMMEDIATE``). Whoever comes second waits, then finds the schema
current and does nothing.

A database created before migrations existed (its tables but no ``alembic_version``)
is stamped with the initial revision, which created exactly those tables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from paperpost import db
from paperpost.errors import DatabaseError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
INITIAL = "0001"
# pg_advisory_xact_lock key: any constant shared by every paperpost process ("pprpost").
ADVISORY_KEY = 0x70707270_6F7374


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head() -> str:
    """The newest revision this version of paperpost knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


@lru_cache(maxsize=1)
def known() -> frozenset[str]:
    """Every revision this version of paperpost knows."""
    return frozenset(s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions())


def current(connection: Connection) -> str | None:
    """The revision a database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Migrate the database behind ``engine`` to :func:`head`; returns that revision."""
    with engine.connect() as conn:
        found = current(conn)
    if found == head():  # the common case: nothing to do, no lock needed
        return found
    if found is not None and found not in known():
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseError(
            f"{where} is at schema revision {found}, which this version of paperpost does "
            "not know (a newer paperpost migrated it): upgrade paperpost, or use another database"
        )
    try:
        if engine.dialect.name == "sqlite":
            locked = db.create(engine.url.render_as_string(hide_password=False), immediate=True)
            try:
                with locked.begin() as conn:  # BEGIN IMMEDIATE: one migrator at a time
                    _migrate(conn)
            finally:
                locked.dispose()
        else:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_KEY})
                _migrate(conn)
    except SQLAlchemyError as exc:  # e.g. a user without the right to change the schema
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseError(
            f"{where} is at schema revision {found or 'none'} and this paperpost needs "
            f"{head()}; migrating it failed ({db.explain(exc)}). Run `paperpost db upgrade` "
            "as a database user that may change the schema, or fix what the error names"
        ) from None
    return head()


def _migrate(conn: Connection) -> None:
    names = set(inspect(conn).get_table_names())
    config = _config(conn)
    if "alembic_version" not in names and "papers" in names:
        command.stamp(config, INITIAL)  # made by create_all before migrations existed
    command.upgrade(config, "head")
