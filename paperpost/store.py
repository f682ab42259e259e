"""The database: what earlier runs saw, fetched and delivered.

SQLAlchemy Core over SQLite (default) or PostgreSQL. What lives here:

* ``papers``: every paper ever ingested, with a monotonically increasing ``seq``
  assigned when it is first seen, first/last seen times and the latest upvotes; found
  again by arXiv id, folded title (``key_hash``) or folded abstract (``abstract_hash``).
  Two arXiv ids are two papers even with one title: the second one's ``key_hash`` is
  then that of its id (``"\\0" + id``), since a title hash is held by one row.
* ``fetches``: per source, the last ETag / Last-Modified / content hash ingested.
* ``runs``: each run, and the ``high_water`` (largest paper ``seq``) it covered.
* ``subscriber_state``: per address, ``cursor``: the largest ``seq`` already
  delivered (or deliberately not delivered) to them.
* ``deliveries``: the ledger, one row per (address, digest), ``sending → data-sent →
  sent | failed | retry | ambiguous`` (``data-sent``: the SMTP end-of-data went out).
* ``suppressions``: addresses that unsubscribed or bounced permanently.
* ``locks``: a lease so overlapping runs do not both send.
* ``domain_deferrals``: per run and receiving domain, its refusals in a row by policy or rate
  limit and, once there were too many, why the run sends it nothing more; every batch of the
  run counts there and reads it.
* ``readers``: per address, the opaque id that vote links carry instead of the address.
* ``feedback``: per (address, paper), the reader's last vote: +1 "more", -1 "fewer".
* ``paper_evidence``: the ranker's cache, per (ranker version, paper text): what the text
  matched per topic, before word weights (``paperpost.rank.Record``; docs/ranking.md).
* ``paper_vectors``: the semantic signal's cache, per (model, title and abstract): the
  paper's sentence embedding, 384 float16 (``paperpost.semantic``).

The schema is owned by the Alembic revisions in ``paperpost/migrations`` (see
``paperpost.schema``); the tables below mirror it for queries and ``--autogenerate``.

A paper is news to a subscriber while its ``seq`` is above their cursor; cursors
move only after the digest holding those papers was sent (or skipped on purpose).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from paperpost import db, schema
from paperpost.dumps import distinct_papers, merge_papers
from paperpost.models import Paper, abstract_key, normalize_space

metadata = MetaData()

papers = Table(
    "papers",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("key_hash", String(40), nullable=False, unique=True),
    Column("arxiv_id", String(64), unique=True),
    Column("abstract_hash", String(40), index=True),
    Column("title", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("upvotes", Integer),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)

fetches = Table(
    "fetches",
    metadata,
    Column("source", String(2000), primary_key=True),
    Column("etag", String(500)),
    Column("last_modified", String(100)),
    Column("content_hash", String(64)),
    Column("status", String(20), nullable=False),
    Column("papers", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    Column("low_water", Integer, nullable=False),
    Column("high_water", Integer),
    Column("summary", Text),
    Column("pause_reason", Text),
    Column("day", Date),  # the day it served (``--today``, else the UTC date)
    Column("cadence", String(10)),  # the subscribers it served: daily, weekly, NULL = all
)

subscriber_state = Table(
    "subscriber_state",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("cursor", Integer, nullable=False),
    Column("last_digest_at", DateTime(timezone=True)),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("lo", Integer, nullable=False),
    Column("hi", Integer, nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("run_id", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("address", "digest", name="uq_delivery_address_digest"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("reason", String(40), nullable=False),
    Column("detail", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

bounces = Table(
    "bounces",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_key", String(200), nullable=False, unique=True),
    Column("kind", String(20), nullable=False),
    Column("address", String(320), index=True),
    Column("digest", String(64)),
    Column("detail", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("owner", String(100), nullable=False),
    Column("expires_at", Float, nullable=False),
)

domain_deferrals = Table(
    "domain_deferrals",
    metadata,
    Column("run_id", Integer, primary_key=True),
    Column("domain", String(255), primary_key=True),
    Column("refusals", Integer, nullable=False),
    Column("reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

readers = Table(
    "readers",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("reader_id", String(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("paper_id", String(64), primary_key=True),
    Column("vote", Integer, nullable=False),
    Column("title", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("voted_at", DateTime(timezone=True), nullable=False),
)

paper_evidence = Table(
    "paper_evidence",
    metadata,
    Column("version", String(16), primary_key=True),
    Column("text_key", String(32), primary_key=True),
    Column("data", Text, nullable=False),
    Column("checksum", String(32), nullable=False),
)

paper_vectors = Table(
    "paper_vectors",
    metadata,
    Column("model", String(16), primary_key=True),
    Column("text_key", String(32), primary_key=True),
    Column("vector", LargeBinary, nullable=False),
    Column("checksum", String(32), nullable=False),
)


def now() -> datetime:
    return datetime.now(UTC)


def key_hash(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def _abstract_hash(paper: Paper) -> str | None:
    key = abstract_key(paper.abstract)
    return key_hash(key) if key else None


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL and process, its database migrated to the current schema."""
    engine = db.create(url)
    schema.upgrade(engine)
    return engine


def _chunks(items: Sequence, size: int = 500) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fits(value: str | None, column: Column) -> str | None:
    """A validator value from a server, or None when it would not fit its column (a
    truncated ETag would never match; the content hash still detects an unchanged dump)."""
    length = column.type.length  # type: ignore[attr-defined]
    return value if value is None or len(value) <= length else None


@dataclass(frozen=True, slots=True)
class FetchState:
    etag: str | None
    last_modified: str | None
    content_hash: str | None


@dataclass(frozen=True, slots=True)
class IngestCounts:
    seen: int
    new: int


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A run's window of news: papers with ``low_water < seq <= high_water``."""

    run_id: int
    low_water: int
    high_water: int
    semantic: bool = False  # rank with the semantic signal too (settings.semantic)
    # weekday -> the window a run reached since it passed (None: none), for weekdays no
    # finished run served in the last six days (see _weekdays_missed)
    weekly_missed: dict[str, int | None] = field(default_factory=dict)


def _weekdays_missed(conn, day: date | None) -> dict[str, int | None]:  # type: ignore[no-untyped-def]
    """The weekdays of the last six days that no finished run serving weekly readers covered
    (the lease was held by a long daily run, the job did not run that day), each with the
    highest window a run reached since that day (None: no run did). A weekly reader of such
    a weekday whose cursor is below it was not served, and is due now. Days before the
    first run ever are not missed: a new installation does not catch up on last week."""
    if day is None:
        return {}
    first = conn.execute(select(func.min(runs.c.day))).scalar()
    rows = conn.execute(
        select(runs.c.day, runs.c.status, runs.c.high_water).where(
            runs.c.day >= day - timedelta(days=6),
            runs.c.day < day,
            or_(runs.c.cadence.is_(None), runs.c.cadence == "weekly"),
        )
    ).all()
    missed: dict[str, int | None] = {}
    for back in range(1, 7):
        passed = day - timedelta(days=back)
        if first is None or passed < first:
            continue
        since = [r for r in rows if r.day >= passed]
        if any(r.status == "finished" for r in since):
            continue  # served that day, or caught up by a later run
        missed[passed.strftime("%A").lower()] = max(
            (r.high_water for r in since if r.high_water is not None), default=None
        )
    return missed


@dataclass(frozen=True, slots=True)
class Suppression:
    """Why an address gets no more mail: reason (unsubscribed, bounced, complained), the
    server's reply or report that caused it, and when."""

    address: str
    reason: str
    detail: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """The ledger's answer when a digest is about to be sent."""

    proceed: bool
    status: str  # the row's status before this claim ("new" when there was none)


@dataclass(frozen=True, slots=True)
class Wanted:
    """A digest about to be sent, as the ledger records it."""

    address: str
    digest: str
    lo: int
    hi: int
    message_id: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """A transport outcome to record: ``sent`` and ``ambiguous`` also move the cursor to ``hi``."""

    address: str
    digest: str
    status: str
    hi: int
    error: str | None = None


CLAIMABLE = {"retry", "released"}  # rows sent again; any other status is done or taken


def _evidence_checksum(version: str, key: str, data: str) -> str:
    return hashlib.sha256(f"{version}\0{key}\0{data}".encode()).hexdigest()[:32]


def _vector_checksum(model: str, key: str, vector: bytes) -> str:
    return hashlib.sha256(f"{model}\0{key}\0".encode() + vector).hexdigest()[:32]


def _upsert(dialect: str):  # type: ignore[no-untyped-def]
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


@lru_cache(maxsize=4)
def _claim_statement(dialect: str):  # type: ignore[no-untyped-def]
    """INSERT ``sending`` rows, skipping those that exist, returning the ones it made."""
    return (
        _upsert(dialect)(deliveries)
        .on_conflict_do_nothing(index_elements=[deliveries.c.address, deliveries.c.digest])
        .returning(deliveries.c.address, deliveries.c.digest)
    )


@lru_cache(maxsize=1)
def _settle_statement():  # type: ignore[no-untyped-def]
    return (
        update(deliveries)
        .where(
            deliveries.c.address == bindparam("b_address"),
            deliveries.c.digest == bindparam("b_digest"),
        )
        .values(
            status=bindparam("b_status"), error=bindparam("b_error"), updated_at=bindparam("b_at")
        )
    )


@lru_cache(maxsize=8)
def _cursor_statement(dialect: str, sent: bool):  # type: ignore[no-untyped-def]
    """Insert a cursor row, or move an existing one forward (never back)."""
    stmt = _upsert(dialect)(subscriber_state)
    moved = {"cursor": stmt.excluded.cursor}
    if sent:
        moved["last_digest_at"] = stmt.excluded.last_digest_at
    return stmt.on_conflict_do_update(
        index_elements=[subscriber_state.c.address],
        set_=moved,
        where=subscriber_state.c.cursor < stmt.excluded.cursor,
    )


@dataclass(slots=True)
class Lease:
    """A run's hold on its lease while it sends. :meth:`held` renews the lease in the
    database when a quarter of its time has passed since the last renewal (the first call
    always does), so a run that keeps working never lets it expire, however long it
    lasts. It is False from the moment another run has taken the lease: that run may be
    resending what this one claimed, so this one must send nothing more."""

    store: Store
    name: str
    owner: str
    ttl: timedelta
    renewed: float = float("-inf")  # time.monotonic() of the last renewal
    lost: bool = False

    def held(self) -> bool:
        if self.lost:
            return False
        if time.monotonic() - self.renewed >= self.ttl.total_seconds() / 4:
            self.lost = not self.store.renew_lock(self.name, self.owner, self.ttl)
            self.renewed = time.monotonic()
        return not self.lost


class Store:
    """All database access. Cheap to construct: engines are cached per URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    # --- fetch state -----------------------------------------------------------------

    def fetch_states(self) -> dict[str, FetchState]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    fetches.c.source,
                    fetches.c.etag,
                    fetches.c.last_modified,
                    fetches.c.content_hash,
                ).where(fetches.c.status == "ingested")
            )
            return {r.source: FetchState(r.etag, r.last_modified, r.content_hash) for r in rows}

    def record_fetch_error(self, source: str, error: str) -> None:
        """Remember a failed fetch without touching what was last ingested from it."""
        error = normalize_space(error)[:2000]
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(fetches)
                .where(fetches.c.source == source)
                .values(error=error, fetched_at=now())
            ).rowcount
            if not changed:
                conn.execute(
                    insert(fetches).values(
                        source=source, status="failed", papers=0, error=error, fetched_at=now()
                    )
                )

    def failed_sources(self) -> list[str]:
        """Sources that failed and were never ingested (to be tried again)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(fetches.c.source).where(fetches.c.status == "failed")).scalars()
            )

    # --- papers ------------------------------------------------------------------------

    def ingest(
        self,
        source: str,
        items: Sequence[Paper],
        etag: str | None = None,
        last_modified: str | None = None,
        content_hash: str | None = None,
    ) -> IngestCounts:
        """Record a source's papers and its fetch state in one transaction.

        Duplicates within ``items`` are merged first. Known papers (same arXiv id, same
        folded title, or same folded abstract: see below) get their last-seen time,
        upvotes and any newly known fields updated; they are not new. Unknown papers
        get the next ``seq``.

        A paper without an arXiv id whose title was reworded (same abstract) is the
        paper stored before and keeps the title it was first stored with, so its id,
        its vote links and the ranker's cache stay what they were; the API's report of
        it (with its arXiv id) brings the listing's title. Papers with different arXiv
        ids are never taken for one another, by their titles or their abstracts; a
        text-only report of a title several arXiv papers share goes to the one with its
        abstract.
        """
        seen_at = now()
        new = 0
        unique = distinct_papers(items)
        with self.engine.begin() as conn:
            for chunk in _chunks(unique):
                hashes = [key_hash(p.key) for p in chunk]
                abstracts = [_abstract_hash(p) for p in chunk]
                ids = [p.arxiv_id for p in chunk if p.arxiv_id]
                found = conn.execute(
                    select(
                        papers.c.seq,
                        papers.c.key_hash,
                        papers.c.arxiv_id,
                        papers.c.abstract_hash,
                        papers.c.data,
                        papers.c.upvotes,
                    )
                    .where(
                        papers.c.key_hash.in_(hashes)
                        | papers.c.arxiv_id.in_(ids)
                        | papers.c.abstract_hash.in_([a for a in abstracts if a])
                    )
                    .order_by(papers.c.seq)
                ).all()
                by_hash = {row.key_hash: row for row in found}
                by_id = {row.arxiv_id: row for row in found if row.arxiv_id}
                by_abstract: dict[str, object] = {}
                for row in found:  # the first stored, when several share an abstract
                    if row.abstract_hash:
                        by_abstract.setdefault(row.abstract_hash, row)
                inserts: list[dict[str, object]] = []
                inserted: dict[str, int] = {}  # abstract hash -> index in inserts
                updates: dict[int, dict[str, object]] = {}  # by seq: two papers, one row
                merged_at: dict[int, Paper] = {}
                taken = set(by_hash)  # title hashes held, by stored rows or inserts
                for paper, digest, abstract in zip(chunk, hashes, abstracts, strict=True):
                    row = by_id.get(paper.arxiv_id or "")
                    if row is None and digest in by_hash:
                        titled = by_hash[digest]
                        if not (paper.arxiv_id and titled.arxiv_id):  # two ids: two papers
                            row = titled
                        # a title two papers share: the abstract says which one is listed
                        alike = by_abstract.get(abstract or "")
                        if not paper.arxiv_id and alike is not None and alike is not row:
                            row = alike
                    reworded = False
                    if row is None and abstract:
                        candidate = by_abstract.get(abstract)
                        if candidate is not None and not (
                            paper.arxiv_id and candidate.arxiv_id  # type: ignore[attr-defined]
                        ):
                            row, reworded = candidate, not paper.arxiv_id
                        elif abstract in inserted and not paper.arxiv_id:
                            slot = inserts[inserted[abstract]]
                            known = Paper.from_json(json.loads(str(slot["data"])))
                            paper = replace(paper, title=known.title, abstract=known.abstract)
                            merged = merge_papers(known, paper)
                            slot["data"] = json.dumps(merged.to_json())
                            slot["upvotes"] = merged.upvotes
                            continue
                    if row is None:
                        if abstract and not paper.arxiv_id:
                            inserted[abstract] = len(inserts)
                        if digest in taken:  # another arXiv paper holds this title
                            digest = key_hash("\0" + str(paper.arxiv_id))
                        taken.add(digest)
                        inserts.append(
                            {
                                "key_hash": digest,
                                "arxiv_id": paper.arxiv_id,
                                "abstract_hash": abstract,
                                "title": paper.title,
                                "data": json.dumps(paper.to_json()),
                                "upvotes": paper.upvotes,
                                "first_seen": seen_at,
                                "last_seen": seen_at,
                            }
                        )
                        continue
                    known = merged_at.get(row.seq) or Paper.from_json(json.loads(row.data))
                    if reworded:  # the same paper: keep its identity (the stored title)
                        paper = replace(paper, title=known.title, abstract=known.abstract)
                    merged = merged_at[row.seq] = merge_papers(known, paper)
                    updates[row.seq] = {
                        "b_seq": row.seq,
                        "b_data": json.dumps(merged.to_json()),
                        "b_upvotes": merged.upvotes,
                        "b_arxiv_id": row.arxiv_id or merged.arxiv_id,
                    }
                if inserts:
                    conn.execute(insert(papers), inserts)
                    new += len(inserts)
                if updates:
                    conn.execute(
                        update(papers)
                        .where(papers.c.seq == bindparam("b_seq"))
                        .values(
                            last_seen=seen_at,
                            data=bindparam("b_data"),
                            upvotes=bindparam("b_upvotes"),
                            arxiv_id=bindparam("b_arxiv_id"),
                        ),
                        list(updates.values()),
                    )
            self._record_fetch(conn, source, etag, last_modified, content_hash, len(unique))
        return IngestCounts(seen=len(unique), new=new)

    def _record_fetch(self, conn, source, etag, last_modified, content_hash, count) -> None:  # type: ignore[no-untyped-def]
        values = dict(
            etag=_fits(etag, fetches.c.etag),
            last_modified=_fits(last_modified, fetches.c.last_modified),
            content_hash=content_hash,
            status="ingested",
            papers=count,
            error=None,
            fetched_at=now(),
        )
        if not conn.execute(
            update(fetches).where(fetches.c.source == source).values(**values)
        ).rowcount:
            conn.execute(insert(fetches).values(source=source, **values))

    def papers_between(self, low: int, high: int) -> list[tuple[int, Paper]]:
        """Papers with ``low < seq <= high``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(papers.c.seq, papers.c.data)
                .where(papers.c.seq > low, papers.c.seq <= high)
                .order_by(papers.c.seq)
            )
            return [(r.seq, Paper.from_json(json.loads(r.data))) for r in rows]

    def latest_papers(self, count: int, high: int | None = None) -> list[Paper]:
        """The ``count`` papers of the history up to ``seq`` ``high`` (default: the newest),
        oldest first: what the ranker's word weights count over."""
        if high is None:
            with self.engine.connect() as conn:
                high = conn.execute(select(func.max(papers.c.seq))).scalar() or 0
        return [paper for _, paper in self.papers_between(max(0, high - count), high)]

    def paper_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(papers)).scalar_one()

    # --- the ranker's cache -------------------------------------------------------------

    def evidence_rows(self, version: str, keys: Sequence[str]) -> dict[str, str]:
        """Stored ranker records of this version by text key; a row whose checksum does not
        match its data is left out (the ranker recomputes it)."""
        found = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(keys):
                rows = conn.execute(
                    select(
                        paper_evidence.c.text_key, paper_evidence.c.data, paper_evidence.c.checksum
                    ).where(
                        paper_evidence.c.version == version, paper_evidence.c.text_key.in_(chunk)
                    )
                )
                for key, data, checksum in rows:
                    if checksum == _evidence_checksum(version, key, data):
                        found[key] = data
        return found

    def save_evidence(self, version: str, rows: dict[str, str]) -> None:
        """Store ranker records (insert or replace), and drop every other version's rows."""
        self._save_cached(paper_evidence, "version", "data", version, rows, _evidence_checksum)

    def vector_rows(self, model: str, keys: Sequence[str]) -> dict[str, bytes]:
        """Stored paper vectors of this model by text key; a row whose checksum does not
        match is left out (the vector is computed again)."""
        found = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(keys):
                rows = conn.execute(
                    select(
                        paper_vectors.c.text_key, paper_vectors.c.vector, paper_vectors.c.checksum
                    ).where(paper_vectors.c.model == model, paper_vectors.c.text_key.in_(chunk))
                )
                for key, vector, checksum in rows:
                    vector = bytes(vector)
                    if checksum == _vector_checksum(model, key, vector):
                        found[key] = vector
        return found

    def save_vectors(self, model: str, rows: dict[str, bytes]) -> None:
        """Store paper vectors (insert or replace), and drop every other model's rows."""
        self._save_cached(paper_vectors, "model", "vector", model, rows, _vector_checksum)

    def _save_cached(self, table, scope: str, value: str, version, rows, checksum) -> None:  # type: ignore[no-untyped-def]
        """One per-paper cache's rows of ``version`` in ``scope`` (insert or replace, checksummed),
        every other version's rows dropped: the evidence and the vector caches."""
        if not rows:
            return
        values = [
            {scope: version, "text_key": k, value: v, "checksum": checksum(version, k, v)}
            for k, v in rows.items()
        ]
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c[scope] != version))
            statement = _upsert(conn.dialect.name)(table)
            statement = statement.on_conflict_do_update(
                index_elements=[table.c[scope], table.c.text_key],
                set_={value: statement.excluded[value], "checksum": statement.excluded.checksum},
            )
            for chunk in _chunks(values):
                conn.execute(statement, list(chunk))

    # --- runs --------------------------------------------------------------------------

    def start_run(self, day: date | None = None, cadence: str | None = None) -> int:
        """Open a run serving ``day`` (default: today, UTC) for the subscribers of ``cadence``
        (None: all); its low water is the high water of the last finished run."""
        started = now()
        with self.engine.begin() as conn:
            low = conn.execute(
                select(func.max(runs.c.high_water)).where(runs.c.status == "finished")
            ).scalar()
            return conn.execute(
                insert(runs).values(
                    started_at=started,
                    status="running",
                    low_water=low or 0,
                    day=day or started.date(),
                    cadence=cadence,
                )
            ).inserted_primary_key[0]

    def plan_run(self, run_id: int) -> RunPlan:
        """Fix the run's window once ingestion is done: everything ingested so far."""
        with self.engine.begin() as conn:
            high = conn.execute(select(func.max(papers.c.seq))).scalar() or 0
            run = conn.execute(
                select(runs.c.low_water, runs.c.day, runs.c.cadence).where(runs.c.id == run_id)
            ).one()
            conn.execute(update(runs).where(runs.c.id == run_id).values(high_water=high))
            missed = _weekdays_missed(conn, run.day) if run.cadence != "daily" else {}
        return RunPlan(run_id, run.low_water, high, weekly_missed=missed)

    def finish_run(self, run_id: int, status: str, summary: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=now(), summary=json.dumps(summary, default=str))
            )

    def pause_run(self, run_id: int, reason: str) -> None:
        """Stop a run's remaining deliveries (first reason wins)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.pause_reason.is_(None))
                .values(pause_reason=reason)
            )

    def pause_reason(self, run_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(runs.c.pause_reason).where(runs.c.id == run_id)
            ).scalar_one_or_none()

    def domain_refused(self, run_id: int, domain: str) -> tuple[int, str | None]:
        """Count one more refusal in a row from ``domain`` in this run (by policy or rate
        limit, in any batch); returns the count and, if the run defers it, why."""
        with self.engine.begin() as conn:
            stmt = _upsert(conn.dialect.name)(domain_deferrals).values(
                run_id=run_id, domain=domain, refusals=1, updated_at=now()
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[domain_deferrals.c.run_id, domain_deferrals.c.domain],
                    set_={
                        "refusals": domain_deferrals.c.refusals + 1,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
            )
            row = conn.execute(
                select(domain_deferrals.c.refusals, domain_deferrals.c.reason).where(
                    domain_deferrals.c.run_id == run_id, domain_deferrals.c.domain == domain
                )
            ).one()
            return row.refusals, row.reason

    def domain_accepted(self, run_id: int, domain: str) -> None:
        """``domain`` accepted a message: its refusals are no longer in a row."""
        with self.engine.begin() as conn:
            conn.execute(
                update(domain_deferrals)
                .where(
                    domain_deferrals.c.run_id == run_id,
                    domain_deferrals.c.domain == domain,
                    domain_deferrals.c.reason.is_(None),
                )
                .values(refusals=0, updated_at=now())
            )

    def defer_domain(self, run_id: int, domain: str, reason: str) -> str:
        """Send nothing more to ``domain`` in this run; returns the reason that stands (the
        first one, if another batch of the run deferred it meanwhile)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(domain_deferrals)
                .where(
                    domain_deferrals.c.run_id == run_id,
                    domain_deferrals.c.domain == domain,
                    domain_deferrals.c.reason.is_(None),
                )
                .values(reason=reason, updated_at=now())
            )
            return conn.execute(
                select(domain_deferrals.c.reason).where(
                    domain_deferrals.c.run_id == run_id, domain_deferrals.c.domain == domain
                )
            ).scalar_one()

    def domain_states(self, run_id: int) -> dict[str, tuple[int, str | None]]:
        """Per domain with refusals in this run: refusals in a row, and why it is deferred
        (None while it is not)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    domain_deferrals.c.domain,
                    domain_deferrals.c.refusals,
                    domain_deferrals.c.reason,
                ).where(domain_deferrals.c.run_id == run_id)
            )
            return {r.domain: (r.refusals, r.reason) for r in rows}

    # --- subscribers -------------------------------------------------------------------

    def cursors(self, addresses: Iterable[str]) -> dict[str, tuple[int, datetime | None]]:
        """Each known address's cursor and the time of its last digest."""
        found: dict[str, tuple[int, datetime | None]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(addresses)):
                rows = conn.execute(
                    select(
                        subscriber_state.c.address,
                        subscriber_state.c.cursor,
                        subscriber_state.c.last_digest_at,
                    ).where(subscriber_state.c.address.in_(chunk))
                )
                found.update({r.address: (r.cursor, r.last_digest_at) for r in rows})
        return found

    def advance_cursors(self, updates: Sequence[tuple[str, int]], sent: bool = False) -> None:
        """Move cursors forward (never back) for (address, seq) pairs, in one transaction."""
        with self.engine.begin() as conn:
            self._advance(conn, updates, sent)

    def _advance(self, conn, updates: Sequence[tuple[str, int]], sent: bool) -> None:  # type: ignore[no-untyped-def]
        """One upsert statement for all of ``updates`` (executemany, in address order so two
        writers never wait on each other's rows in opposite orders)."""
        latest: dict[str, int] = {}
        for address, cursor in updates:
            latest[address] = max(cursor, latest.get(address, cursor))
        if not latest:
            return
        stamp = now() if sent else None
        conn.execute(
            _cursor_statement(conn.dialect.name, sent),
            [
                {"address": address, "cursor": cursor, "last_digest_at": stamp}
                for address, cursor in sorted(latest.items())
            ],
        )

    def suppressed(self, addresses: Iterable[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(addresses)):
                rows = conn.execute(
                    select(suppressions.c.address, suppressions.c.reason).where(
                        suppressions.c.address.in_(chunk)
                    )
                )
                out.update({r.address: r.reason for r in rows})
        return out

    def suppression(self, address: str) -> Suppression | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(suppressions).where(suppressions.c.address == address.lower())
            ).first()
        return Suppression(row.address, row.reason, row.detail, row.created_at) if row else None

    def suppressions(self, addresses: Iterable[str]) -> dict[str, Suppression]:
        out: dict[str, Suppression] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(addresses)):
                rows = conn.execute(select(suppressions).where(suppressions.c.address.in_(chunk)))
                out.update(
                    {
                        r.address: Suppression(r.address, r.reason, r.detail, r.created_at)
                        for r in rows
                    }
                )
        return out

    def reactivate(self, address: str) -> Suppression | None:
        """Lift a suppression; its failed deliveries are released so they can be sent again."""
        address = address.lower()
        found = self.suppression(address)
        if found is None:
            return None
        with self.engine.begin() as conn:
            conn.execute(delete(suppressions).where(suppressions.c.address == address))
            conn.execute(
                update(deliveries)
                .where(deliveries.c.address == address, deliveries.c.status == "failed")
                .values(status="released", updated_at=now())
            )
        return found

    def suppress(self, address: str, reason: str, detail: str | None = None) -> bool:
        """Record a suppression; False when the address was already suppressed."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(suppressions).values(
                        address=address.lower(), reason=reason, detail=detail, created_at=now()
                    )
                )
        except IntegrityError:
            return False
        return True

    # --- bounces -----------------------------------------------------------------------------

    def record_bounce(
        self,
        message_key: str,
        kind: str,
        address: str | None,
        digest: str | None,
        detail: str,
        at: datetime,
        suppression: tuple[str, str] | None,
        soft_limit: int,
        soft_since: datetime,
    ) -> tuple[str, str] | bool | None:
        """Record one processed report, and any suppression it causes, in one transaction.

        None when this report was processed before (nothing changes); the (reason, detail)
        of a new suppression; False otherwise. A soft bounce suppresses the address once it
        has ``soft_limit`` soft bounces since ``soft_since``.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(bounces).values(
                        message_key=message_key,
                        kind=kind,
                        address=address,
                        digest=digest,
                        detail=detail,
                        received_at=at,
                    )
                )
                if kind == "soft" and address and suppression is None:
                    count = conn.execute(  # digests, not reports: copies of one DSN count once
                        select(func.count(func.distinct(bounces.c.digest)))
                        .select_from(bounces)
                        .where(
                            bounces.c.address == address,
                            bounces.c.kind == "soft",
                            bounces.c.received_at >= soft_since,
                        )
                    ).scalar_one()
                    if count >= soft_limit:
                        suppression = (
                            "bounced",
                            f"{count} soft bounces since {soft_since:%Y-%m-%d} (each for a "
                            f"different digest); last: {detail}",
                        )
                if suppression is None or address is None:
                    return False
                exists = conn.execute(
                    select(suppressions.c.address).where(suppressions.c.address == address)
                ).first()
                if exists:
                    return False
                conn.execute(
                    insert(suppressions).values(
                        address=address,
                        reason=suppression[0],
                        detail=suppression[1],
                        created_at=now(),
                    )
                )
                return suppression
        except IntegrityError:
            return None

    # --- delivery ledger ------------------------------------------------------------------

    def claim_group(self, wanted: Sequence[Wanted], run_id: int) -> list[Claim]:
        """Mark a group of digests ``sending`` in one transaction, before any is sent.

        One multi-row INSERT ... ON CONFLICT DO NOTHING makes the rows of digests never tried
        before; the others are looked up: ``retry`` and ``released`` rows are taken again
        (each only if nobody else took it meanwhile), ``sent``, ``failed`` (permanent) and
        ``ambiguous`` rows are never sent again, and a row already ``sending`` or
        ``data-sent`` belongs to another process. One claim per item, in order.
        """
        if not wanted:
            return []
        stamp = now()
        with self.engine.begin() as conn:
            made = {
                (row.address, row.digest)
                for row in conn.execute(
                    _claim_statement(conn.dialect.name),
                    [
                        {
                            "address": w.address,
                            "digest": w.digest,
                            "lo": w.lo,
                            "hi": w.hi,
                            "message_id": w.message_id,
                            "status": "sending",
                            "attempts": 1,
                            "run_id": run_id,
                            "updated_at": stamp,
                        }
                        for w in wanted
                    ],
                )
            }
            if len(made) == len(wanted):  # the common case: none was tried before
                return [Claim(True, "new")] * len(wanted)
            known = self._taken_again(
                conn, [w for w in wanted if (w.address, w.digest) not in made], run_id, stamp
            )
        return [
            Claim(True, "new") if (w.address, w.digest) in made else known[w.address, w.digest]
            for w in wanted
        ]

    def _taken_again(self, conn, wanted: Sequence[Wanted], run_id: int, stamp: datetime):  # type: ignore[no-untyped-def]
        """Claims for digests whose rows already existed (a rerun's retries: few)."""
        statuses = {}
        for chunk in _chunks(wanted):
            rows = conn.execute(
                select(deliveries.c.address, deliveries.c.digest, deliveries.c.status).where(
                    deliveries.c.address.in_({w.address for w in chunk}),
                    deliveries.c.digest.in_({w.digest for w in chunk}),
                )
            )
            statuses.update({(r.address, r.digest): r.status for r in rows})
        claims: dict[tuple[str, str], Claim] = {}
        for w in wanted:
            status = statuses[w.address, w.digest]
            if status not in CLAIMABLE:
                claims[w.address, w.digest] = Claim(False, status)
                continue
            changed = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.address == w.address,
                    deliveries.c.digest == w.digest,
                    deliveries.c.status == status,  # nobody else took it meanwhile
                )
                .values(
                    status="sending",
                    attempts=deliveries.c.attempts + 1,
                    run_id=run_id,
                    updated_at=stamp,
                    message_id=w.message_id,  # what this attempt carries (and its VERP names)
                )
            ).rowcount
            claims[w.address, w.digest] = Claim(bool(changed), status if changed else "sending")
        return claims

    def claim(
        self, address: str, digest: str, lo: int, hi: int, message_id: str, run_id: int
    ) -> Claim:
        """:meth:`claim_group` for one digest."""
        return self.claim_group([Wanted(address, digest, lo, hi, message_id)], run_id)[0]

    def settle_group(
        self, settled: Sequence[Settlement], data_sent: tuple[str, str] | None = None
    ) -> None:
        """Record transport outcomes in one transaction: one UPDATE per row (executemany,
        in order, so a later outcome for the same digest wins), and one cursor upsert that
        moves ``sent`` and ``ambiguous`` subscribers past their digests (an ambiguous digest
        is not resent). ``data_sent`` (address, digest): mark that digest ``data-sent`` in the
        same commit (its end of data is about to go out)."""
        if not settled and data_sent is None:
            return
        stamp = now()
        with self.engine.begin() as conn:
            if settled:
                conn.execute(
                    _settle_statement(),
                    [
                        {
                            "b_address": s.address,
                            "b_digest": s.digest,
                            "b_status": s.status,
                            "b_error": s.error,
                            "b_at": stamp,
                        }
                        for s in settled
                    ],
                )
                self._advance(
                    conn,
                    [(s.address, s.hi) for s in settled if s.status in {"sent", "ambiguous"}],
                    sent=True,
                )
            if data_sent is not None:
                conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.address == data_sent[0], deliveries.c.digest == data_sent[1]
                    )
                    .values(status="data-sent", updated_at=stamp)
                )

    def settle(self, address: str, digest: str, status: str, hi: int, error: str | None) -> None:
        """:meth:`settle_group` for one digest."""
        self.settle_group([Settlement(address, digest, status, hi, error)])

    def mark_data_sent(self, address: str, digest: str, settled: Sequence[Settlement] = ()) -> None:
        """Record that the end of data is about to go out (from here on a crash is
        ambiguous), with any outcomes still to be recorded in the same commit."""
        self.settle_group(settled, (address, digest))

    def run_accepted(self, run_id: int) -> bool:
        """Whether a digest of this run was accepted (``sent``), in any batch."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(deliveries.c.id)
                .where(deliveries.c.run_id == run_id, deliveries.c.status == "sent")
                .limit(1)
            ).first()
            return found is not None

    def interrupted(self) -> list[tuple[str, str, int, str]]:
        """Deliveries a crash left unfinished: (address, digest, hi, status), where status is
        ``sending`` (end of data never sent) or ``data-sent`` (sent, no reply read)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    deliveries.c.address,
                    deliveries.c.digest,
                    deliveries.c.hi,
                    deliveries.c.status,
                ).where(deliveries.c.status.in_(["sending", "data-sent"]))
            )
            return [(r.address, r.digest, r.hi, r.status) for r in rows]

    def delivery_by_hash(self, digest_hash: str) -> tuple[str, str] | None:
        """(address, digest) of the delivery whose Message-ID starts with this hash."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(deliveries.c.address, deliveries.c.digest).where(
                    deliveries.c.message_id.like(f"<{digest_hash}@%")
                )
            ).first()
            return (row.address, row.digest) if row else None

    def delivery_by_message_id(self, message_id: str) -> tuple[str, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(deliveries.c.address, deliveries.c.digest).where(
                    deliveries.c.message_id == message_id.strip()
                )
            ).first()
            return (row.address, row.digest) if row else None

    def awaiting_retry(self, addresses: Iterable[str]) -> set[str]:
        """The addresses with a digest to try again (``retry``/``released``) that their cursor
        has not moved past: a temporary failure waits for the next run, not the next week."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(list(addresses)):
                rows = conn.execute(
                    select(deliveries.c.address)
                    .distinct()
                    .select_from(
                        deliveries.outerjoin(
                            subscriber_state, subscriber_state.c.address == deliveries.c.address
                        )
                    )
                    .where(
                        deliveries.c.address.in_(chunk),
                        deliveries.c.status.in_(sorted(CLAIMABLE)),
                        or_(
                            subscriber_state.c.cursor.is_(None),
                            deliveries.c.hi > subscriber_state.c.cursor,
                        ),
                    )
                )
                found.update(r.address for r in rows)
        return found

    def delivery_status(self, address: str) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.digest, deliveries.c.status)
                .where(deliveries.c.address == address)
                .order_by(deliveries.c.id)
            )
            return [(r.digest, r.status) for r in rows]

    # --- lease -------------------------------------------------------------------------------

    def acquire_lock(self, name: str, owner: str, ttl: timedelta) -> bool:
        """Take (or renew) a named lease; False while another owner holds an unexpired one."""
        stamp = now().timestamp()
        expires = stamp + ttl.total_seconds()
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(locks)
                .where(locks.c.name == name)
                .where((locks.c.owner == owner) | (locks.c.expires_at < stamp))
                .values(owner=owner, expires_at=expires)
            ).rowcount
            if taken:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(insert(locks).values(name=name, owner=owner, expires_at=expires))
            except IntegrityError:
                return False
            return True

    def renew_lock(self, name: str, owner: str, ttl: timedelta) -> bool:
        """Extend a lease this owner still holds (even if it has expired and nobody took it);
        False once another owner has it."""
        expires = now().timestamp() + ttl.total_seconds()
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(locks)
                    .where(locks.c.name == name, locks.c.owner == owner)
                    .values(expires_at=expires)
                ).rowcount
            )

    def take_over_lock(self, name: str, stale_owner: str, owner: str, ttl: timedelta) -> bool:
        """Take a lease from an owner known to be dead (only if it still holds it)."""
        expires = now().timestamp() + ttl.total_seconds()
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(locks)
                    .where(locks.c.name == name, locks.c.owner == stale_owner)
                    .values(owner=owner, expires_at=expires)
                ).rowcount
            )

    def check_writable(self) -> None:
        """Write and roll back a row: raises at once when the database is corrupt or
        read-only, or after the busy timeout when another process holds its write lock."""
        with self.engine.connect() as conn:
            conn.execute(insert(locks).values(name="write-check", owner="-", expires_at=0))
            conn.rollback()

    def lock_owner(self, name: str) -> str | None:
        row = self.lock_row(name)
        return row[0] if row else None

    def lock_row(self, name: str) -> tuple[str, float] | None:
        """(owner, expires_at) of a named lease, if any row holds it."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(locks.c.owner, locks.c.expires_at).where(locks.c.name == name)
            ).first()
            return (row.owner, row.expires_at) if row else None

    def release_lock(self, name: str, owner: str) -> bool:
        """Drop a lease if this owner still holds it (True if it did)."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    delete(locks).where(locks.c.name == name, locks.c.owner == owner)
                ).rowcount
            )
