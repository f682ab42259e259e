"""Per run and receiving domain: refusals in a row by policy or rate limit, and deferral.

A domain that refused a few messages in a row (``refusals``, set back to 0 when it accepts
one) by policy (5.7.x, 5.3.x) or rate limit (a 4xx saying we send too much) is deferred for
the rest of the run (``reason`` set): its other readers wait for the next run
(``paperpost.delivery``; docs/delivery.md). The rows are how every batch of the run, in this
process or another, counts together and learns of a deferral; the first reason wins.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domain_deferrals",
        sa.Column("run_id", sa.Integer, primary_key=True),
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("refusals", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("domain_deferrals")
