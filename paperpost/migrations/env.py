"""Alembic environment: runs paperpost's revisions on the connection it is given.

``paperpost.schema.upgrade`` passes an open connection (already holding the migration
lock) in ``config.attributes["connection"]``. Run from the ``alembic`` command line
(``alembic revision --autogenerate``, see the README), it connects to the configured
database itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from paperpost.store import metadata

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    from paperpost.settings import Settings

    with create_engine(Settings().db_url).connect() as own:
        context.configure(connection=own, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
