"""The initial schema: papers, fetches, runs, subscriber_state, deliveries, suppressions, locks.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "papers",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_hash", sa.String(40), nullable=False, unique=True),
        sa.Column("arxiv_id", sa.String(64), unique=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("upvotes", sa.Integer),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "fetches",
        sa.Column("source", sa.String(2000), primary_key=True),
        sa.Column("etag", sa.String(500)),
        sa.Column("last_modified", sa.String(100)),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("papers", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("low_water", sa.Integer, nullable=False),
        sa.Column("high_water", sa.Integer),
        sa.Column("summary", sa.Text),
        sa.Column("pause_reason", sa.Text),
    )
    op.create_table(
        "subscriber_state",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("cursor", sa.Integer, nullable=False),
        sa.Column("last_digest_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("lo", sa.Integer, nullable=False),
        sa.Column("hi", sa.Integer, nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("run_id", sa.Integer),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("address", "digest", name="uq_delivery_address_digest"),
    )
    op.create_table(
        "suppressions",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "locks",
        "suppressions",
        "deliveries",
        "subscriber_state",
        "runs",
        "fetches",
        "papers",
    ):
        op.drop_table(table)
