"""Bounce bookkeeping: every processed bounce, complaint or mailto unsubscribe, once.

``message_key`` (the report's Message-ID, or a hash of its bytes) makes processing
idempotent; soft bounces are counted per address over a window.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_key", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("address", sa.String(320)),
        sa.Column("digest", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_bounces_address", "bounces", ["address"])


def downgrade() -> None:
    op.drop_index("ix_bounces_address", "bounces")
    op.drop_table("bounces")
