"""The ranker's per-paper cache: what each paper's text matched, per topic.

One row per (ranker version, paper text): word counts and, per topic, the matched terms,
before any word weights (``paperpost.rank.Record``). Rows of other ranker versions are
never read (and are deleted when a run saves); ``checksum`` guards each row's data.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paper_evidence",
        sa.Column("version", sa.String(16), primary_key=True),
        sa.Column("text_key", sa.String(32), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("checksum", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("paper_evidence")
