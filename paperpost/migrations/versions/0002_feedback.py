"""Reader feedback: ``readers`` (the opaque id vote links carry) and ``feedback`` (votes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "readers",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("reader_id", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("paper_id", sa.String(64), primary_key=True),
        sa.Column("vote", sa.Integer, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("voted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("readers")
