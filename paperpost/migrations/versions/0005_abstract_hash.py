"""Papers' abstract hash: a paper without an arXiv id whose title changes between snapshots
is still the same paper (``paperpost.models.abstract_key``).

Adds ``papers.abstract_hash`` (indexed, not unique: NULL for short abstracts) and fills it
for the papers already stored.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# paperpost.models.abstract_key as of this revision (a migration must not change when
# the code does)
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def _abstract_hash(abstract: str) -> str | None:
    folded = unicodedata.normalize("NFKD", abstract).casefold()
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    folded = _NON_WORD.sub(" ", folded).strip()
    if folded.count(" ") + 1 < 20:
        return None
    return hashlib.sha1(folded.encode("utf-8")).hexdigest()


def upgrade() -> None:
    op.add_column("papers", sa.Column("abstract_hash", sa.String(40)))
    op.create_index("ix_papers_abstract_hash", "papers", ["abstract_hash"])
    papers = sa.table(
        "papers",
        sa.column("seq", sa.Integer),
        sa.column("data", sa.Text),
        sa.column("abstract_hash", sa.String(40)),
    )
    conn = op.get_bind()
    last = 0
    while True:  # in chunks: a large archive never sits in memory at once
        rows = conn.execute(
            sa.select(papers.c.seq, papers.c.data)
            .where(papers.c.seq > last)
            .order_by(papers.c.seq)
            .limit(1000)
        ).all()
        if not rows:
            break
        last = rows[-1].seq
        values = [
            {"b_seq": row.seq, "b_hash": _abstract_hash(json.loads(row.data)["abstract"])}
            for row in rows
        ]
        conn.execute(
            papers.update()
            .where(papers.c.seq == sa.bindparam("b_seq"))
            .values(abstract_hash=sa.bindparam("b_hash")),
            values,
        )


def downgrade() -> None:
    op.drop_index("ix_papers_abstract_hash", "papers")
    op.drop_column("papers", "abstract_hash")
