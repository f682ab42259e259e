"""The semantic signal's per-paper cache: each paper's sentence embedding.

One row per (model, paper text): the vector of the paper's title and abstract as 384 float16
(``paperpost.semantic``). Rows of other models are never read (and are deleted when a run
saves); ``checksum`` guards each row's data. Empty unless the semantic signal is on.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paper_vectors",
        sa.Column("model", sa.String(16), primary_key=True),
        sa.Column("text_key", sa.String(32), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("checksum", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("paper_vectors")
