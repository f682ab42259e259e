"""Each run's day and cadence, so a weekly reader whose weekday no run served is caught up.

``day`` is the date the run served (``--today``, else the UTC date it started) and
``cadence`` the subscribers it was limited to (``daily``/``weekly``; NULL: everyone). A
weekday that passed without a finished run serving weekly readers (the lease was held by a
long daily run, the machine was down) makes that weekday's weekly readers due at the next
run (``Store.plan_run``, ``pipeline.rank_stage``). Earlier runs get the date they started.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("day", sa.Date))
    op.add_column("runs", sa.Column("cadence", sa.String(10)))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE runs SET day = (started_at AT TIME ZONE 'UTC')::date")
    else:
        op.execute("UPDATE runs SET day = date(started_at)")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cadence")
        batch.drop_column("day")
