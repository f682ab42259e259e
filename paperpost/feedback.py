"""What readers teach paperpost: "more like this" / "fewer like this" votes, and their examples.

Every paper card carries two links to ``paperpost web``. Their token names the reader by an
opaque id (``readers`` table), never by address, and binds the paper, the digest it came
in and an expiry, all under an HMAC-SHA256 tag. A GET only shows a confirmation; the POST
records the vote in ``feedback``, one row per (address, paper): the last vote counts.

This module is the I/O side (tokens, the two tables, JSON-lines export/import, loading a
reader's :class:`~paperpost.profile.Taste`); the ranking maths is in ``profile.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from paperpost.models import Paper, title_key
from paperpost.profile import Nudge, Taste, nudge
from paperpost.rank import Background, MatchCache, Profile, Ranked, rank_many
from paperpost.store import Store, deliveries, feedback, key_hash, now, papers, readers
from paperpost.subscribers import Subscriber

if TYPE_CHECKING:
    from paperpost.semantic import Vectors

VOTES = {"more": 1, "fewer": -1}
LINK_DAYS = 60  # how long a vote link works
DELIVERED = ("sent", "data-sent", "ambiguous")  # ledger states of a digest that went out
_ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}")
# What an imported vote may hold: the sizes of the columns (and of a stored title), no
# control characters or lone surrogates (PostgreSQL refuses NUL, UTF-8 refuses surrogates).
_IMPORT_LIMITS = {"address": 320, "paper_id": 64, "title": 500, "digest": 64}
_UNSTORABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


class BadVoteToken(ValueError):
    """A vote token that was altered, expired, or made for someone this database does not know."""


# --- signed links ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteLink:
    """What a vote token says: whose vote, on which paper, from which digest, until when."""

    reader_id: str
    paper: str  # see paper_ref: an arXiv id, or "k:" and the paper's key hash
    digest: str
    expires: int  # Unix time


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(key: str, body: bytes) -> bytes:
    return hmac.new(key.encode(), b"vote:" + body, hashlib.sha256).digest()[:16]


def make_vote_token(key: str, link: VoteLink) -> str:
    body = "\n".join((link.reader_id, link.paper, link.digest, str(link.expires))).encode()
    return f"{_b64(body)}.{_b64(_tag(key, body))}"


def read_vote_token(key: str, token: str, at: float | None = None) -> VoteLink:
    """The link a token was made for, or :class:`BadVoteToken` (altered, foreign, expired)."""
    try:
        body_text, tag_text = token.strip().split(".", 1)
        body, given = _unb64(body_text), _unb64(tag_text)
        reader_id, paper, digest, expires = body.decode("utf-8").split("\n")
        link = VoteLink(reader_id, paper, digest, int(expires))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadVoteToken("this vote link is malformed; copy the whole link") from None
    if not hmac.compare_digest(given, _tag(key, body)):
        raise BadVoteToken("this vote link was not issued by this paperpost (bad signature)")
    if link.expires < (time.time() if at is None else at):
        raise BadVoteToken(
            f"this vote link expired ({LINK_DAYS} days after its digest); "
            "use the links in a newer digest"
        )
    return link


@lru_cache(maxsize=8192)  # every reader's card of a paper carries it
def paper_ref(paper: Paper) -> str:
    """How a vote link names a paper: its arXiv id, else its key hash (both indexed)."""
    return paper.arxiv_id or "k:" + key_hash(paper.key)


def vote_urls(
    key: str, base_url: str, reader_id: str, paper: Paper, digest: str, expires: int
) -> tuple[str, str]:
    """The "more like this" and "fewer like this" URLs of one card (one token for both)."""
    token = make_vote_token(key, VoteLink(reader_id, paper_ref(paper), digest, expires))
    return f"{base_url}/vote/more/{token}", f"{base_url}/vote/fewer/{token}"


def vote_expiry(day: date) -> int:
    """When links in the digest of ``day`` stop working (Unix time; same for every reader)."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return int(start.timestamp()) + (LINK_DAYS + 1) * 86_400


# --- the readers and feedback tables ------------------------------------------------------


def _insert(store: Store, table):  # type: ignore[no-untyped-def]
    """INSERT with ON CONFLICT support for the store's dialect."""
    dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def reader_ids(store: Store, addresses: Iterable[str]) -> dict[str, str]:
    """Each address's opaque id for vote links, created on first use (race-free)."""
    wanted = sorted({a.lower() for a in addresses})
    found: dict[str, str] = {}
    with store.engine.begin() as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(
                select(readers.c.address, readers.c.reader_id).where(readers.c.address.in_(chunk))
            )
            found.update({r.address: r.reader_id for r in rows})
        missing = [a for a in wanted if a not in found]
        if missing:
            stamp = now()
            conn.execute(
                _insert(store, readers).on_conflict_do_nothing(index_elements=["address"]),
                [
                    {"address": a, "reader_id": secrets.token_urlsafe(12), "created_at": stamp}
                    for a in missing
                ],
            )
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                rows = conn.execute(
                    select(readers.c.address, readers.c.reader_id).where(
                        readers.c.address.in_(chunk)
                    )
                )
                found.update({r.address: r.reader_id for r in rows})
    return found


def address_of(store: Store, reader_id: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(
            select(readers.c.address).where(readers.c.reader_id == reader_id)
        ).scalar()


@dataclass(frozen=True, slots=True)
class Vote:
    address: str
    paper_id: str
    vote: int  # +1 more, -1 fewer
    title: str
    digest: str
    voted_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "paper_id": self.paper_id,
            "vote": "more" if self.vote > 0 else "fewer",
            "title": self.title,
            "digest": self.digest,
            "voted_at": self.voted_at.isoformat(),
        }


def record_votes(store: Store, votes: Sequence[Vote]) -> int:
    """Upsert votes; per (address, paper) the latest ``voted_at`` wins, whatever the order.
    Returns how many rows were written (a vote older than the stored one writes none)."""
    if not votes:
        return 0
    stmt = _insert(store, feedback)
    stmt = stmt.on_conflict_do_update(
        index_elements=["address", "paper_id"],
        set_={
            "vote": stmt.excluded.vote,
            "title": stmt.excluded.title,
            "digest": stmt.excluded.digest,
            "voted_at": stmt.excluded.voted_at,
        },
        where=stmt.excluded.voted_at >= feedback.c.voted_at,
    )
    rows = [
        {
            "address": v.address.lower(),
            "paper_id": v.paper_id,
            "vote": v.vote,
            "title": v.title,
            "digest": v.digest,
            "voted_at": v.voted_at.astimezone(UTC),
        }
        for v in votes
    ]
    with store.engine.begin() as conn:
        if len(rows) == 1:  # one statement: its row count is reliable on every driver
            return conn.execute(stmt, rows[0]).rowcount
        conn.execute(stmt, rows)
    return len(rows)


def record_click(store: Store, vote: Vote) -> bool:
    """A reader's click on a vote link: it is their latest word on that paper, even when a
    stored vote carries a later time (the server's clock was stepped back). True if recorded."""
    with store.engine.connect() as conn:
        stored = conn.execute(
            select(feedback.c.voted_at).where(
                feedback.c.address == vote.address.lower(), feedback.c.paper_id == vote.paper_id
            )
        ).scalar()
    if stored is not None:
        stored = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
        if stored >= vote.voted_at:
            vote = replace(vote, voted_at=stored + timedelta(milliseconds=1))
    return record_votes(store, [vote]) == 1


def votes_of(store: Store, addresses: Iterable[str]) -> dict[str, list[Vote]]:
    """Every address's votes, oldest first."""
    out: dict[str, list[Vote]] = {}
    wanted = sorted({a.lower() for a in addresses})
    with store.engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            rows = conn.execute(
                select(feedback)
                .where(feedback.c.address.in_(wanted[start : start + 500]))
                .order_by(feedback.c.voted_at)
            )
            for r in rows:
                out.setdefault(r.address, []).append(_vote(r))
    return out


def _vote(row) -> Vote:  # type: ignore[no-untyped-def]
    voted_at = row.voted_at if row.voted_at.tzinfo else row.voted_at.replace(tzinfo=UTC)
    return Vote(row.address, row.paper_id, row.vote, row.title, row.digest, voted_at)


def export_votes(store: Store) -> Iterator[str]:
    """Every vote as one JSON object per line, in a stable order."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(feedback).order_by(feedback.c.address, feedback.c.paper_id))
        for row in rows:
            yield json.dumps(_vote(row).to_json(), ensure_ascii=False)


class BadExport(ValueError):
    """A line of a feedback export that cannot be imported (message says where and why)."""


def parse_export(lines: Iterable[str], name: str = "<stdin>") -> list[Vote]:
    """Votes from JSON lines; every bad line is reported as ``name:line: problem``."""
    votes: list[Vote] = []
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object with address, paper_id, vote, ...")
            vote = VOTES.get(data["vote"]) if isinstance(data["vote"], str) else None
            if vote is None:
                raise ValueError(f'vote must be "more" or "fewer", got {str(data["vote"])[:40]!r}')
            text = {
                field: _import_text(data, field, limit) for field, limit in _IMPORT_LIMITS.items()
            }
            if "@" not in text["address"]:
                raise ValueError(f"address is not an email address: {text['address'][:80]!r}")
            voted_at = _import_time(data["voted_at"])
            votes.append(
                Vote(
                    text["address"].lower(),
                    text["paper_id"],
                    vote,
                    text["title"],
                    text["digest"],
                    voted_at,
                )
            )
        except json.JSONDecodeError as exc:
            problems.append(f"{name}:{number}: not JSON ({exc.msg})")
        except KeyError as exc:
            problems.append(f"{name}:{number}: missing or unknown value for {exc}")
        except ValueError as exc:
            problems.append(f"{name}:{number}: {exc}")
    if problems:
        raise BadExport("\n".join(problems))
    return votes


def _import_text(data: dict, field: str, limit: int) -> str:
    value = data[field]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be non-blank text, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{field} has {len(value):,} characters; at most {limit} are allowed")
    if _UNSTORABLE.search(value):
        raise ValueError(f"{field} contains a control character or a lone surrogate")
    return value


# how far ahead of this machine's clock an imported vote may be (clocks of two machines differ)
IMPORT_CLOCK_SKEW = timedelta(minutes=5)


def _import_time(value: object) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (no zone: UTC), not in the future: a vote
    dated ahead would outrank every real click until that date."""
    if not isinstance(value, str):
        raise ValueError(f"voted_at must be an ISO 8601 time, got {type(value).__name__}")
    voted_at = datetime.fromisoformat(value)
    try:
        voted_at = voted_at.replace(tzinfo=voted_at.tzinfo or UTC).astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise ValueError(f"voted_at {value!r} is out of range") from None
    latest = datetime.now(UTC) + IMPORT_CLOCK_SKEW
    if voted_at > latest:
        raise ValueError(
            f"voted_at {value!r} is in the future (this machine's clock says "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC); a vote dated ahead would outrank the "
            "reader's real clicks until then: correct the time (or the exporting machine's "
            "clock) and import again"
        )
    return voted_at


# --- papers, history and tastes -------------------------------------------------------------


def is_arxiv_id(text: str) -> bool:
    return bool(_ARXIV_ID.fullmatch(text))


def find_papers(store: Store, refs: Iterable[str]) -> dict[str, Paper]:
    """Papers of the history by arXiv id or by title (folded: case, accents, punctuation)."""
    refs = set(refs)
    ids = [r for r in refs if is_arxiv_id(r)]
    hashes = {key_hash(title_key(r)): r for r in refs if not is_arxiv_id(r)}
    found: dict[str, Paper] = {}
    with store.engine.connect() as conn:
        for start in range(0, max(len(ids), len(hashes)), 500):
            id_chunk = ids[start : start + 500]
            hash_chunk = list(hashes)[start : start + 500]
            rows = conn.execute(
                select(papers.c.arxiv_id, papers.c.key_hash, papers.c.data).where(
                    papers.c.arxiv_id.in_(id_chunk) | papers.c.key_hash.in_(hash_chunk)
                )
            )
            for row in rows:
                paper = Paper.from_json(json.loads(row.data))
                if row.arxiv_id in refs:
                    found[row.arxiv_id] = paper
                if row.key_hash in hashes:
                    found[hashes[row.key_hash]] = paper
    return found


def _paper_row(store: Store, ref: str) -> tuple[int, Paper] | None:
    """The history's sequence number and paper for a vote link's :func:`paper_ref`."""
    column = papers.c.key_hash if ref.startswith("k:") else papers.c.arxiv_id
    with store.engine.connect() as conn:
        row = conn.execute(
            select(papers.c.seq, papers.c.data).where(column == ref.removeprefix("k:"))
        ).one_or_none()
    return (row.seq, Paper.from_json(json.loads(row.data))) if row else None


def voted_paper(store: Store, address: str, link: VoteLink) -> Paper | None:
    """The paper of a vote link, if the ledger shows that digest sent to this address with
    this paper in it (else None: nothing may be recorded).

    A digest ``lo-hi`` holds papers first stored with ``lo < seq <= hi``; the signature
    proves the link was made for this paper in that digest, the ledger that the digest went
    out (``sent``, or ``data-sent``/``ambiguous``: it reached the server as far as we know).
    """
    found = _paper_row(store, link.paper)
    if found is None:
        return None
    seq, paper = found
    with store.engine.connect() as conn:
        window = conn.execute(
            select(deliveries.c.lo, deliveries.c.hi).where(
                deliveries.c.address == address.lower(),
                deliveries.c.digest == link.digest,
                deliveries.c.status.in_(DELIVERED),
            )
        ).one_or_none()
    return paper if window is not None and window.lo < seq <= window.hi else None


def tastes(store: Store, subscribers: Sequence[Subscriber]) -> list[Taste]:
    """What each subscriber taught: votes, ``like:`` examples found in the history, follows.

    A vote's paper is looked up in the history (its text feeds the profile); a paper the
    history no longer has still counts by its title.
    """
    votes = votes_of(store, [s.address for s in subscribers])
    refs: set[str] = {ref for s in subscribers for ref in s.like}
    for address_votes in votes.values():
        for v in address_votes:
            refs.add(v.paper_id if is_arxiv_id(v.paper_id) else v.title)
    known = find_papers(store, refs) if refs else {}
    out = []
    for sub in subscribers:
        liked: dict[str, Paper] = {}
        disliked: dict[str, Paper] = {}
        for ref in sub.like:
            if ref in known:
                liked[known[ref].id] = known[ref]
        for v in votes.get(sub.address, []):
            ref = v.paper_id if is_arxiv_id(v.paper_id) else v.title
            paper = known.get(ref) or Paper(title=v.title, abstract="")
            liked.pop(paper.id, None)
            disliked.pop(paper.id, None)
            if v.vote > 0:
                liked[paper.id] = paper
            else:
                disliked[paper.id] = paper
        out.append(
            Taste(
                liked=tuple(liked.values()),
                disliked=tuple(disliked.values()),
                authors=tuple(sub.authors),
                organizations=tuple(sub.organizations),
            )
        )
    return out


def reader_nudge(
    store: Store,
    papers: Sequence[Paper],
    subscribers: Sequence[Subscriber],
    background: Background,
    vectors: Vectors | None = None,
) -> Nudge | None:
    """What these subscribers taught, ready for :func:`paperpost.rank.rank_many` (with
    ``vectors``, the semantic extra's, the profile compares papers by meaning)."""
    taught = tastes(store, subscribers)
    return nudge(papers, taught, background, vectors) if any(taught) else None


def rank_readers(
    store: Store,
    papers: Sequence[Paper],
    subscribers: Sequence[Subscriber],
    profiles: Sequence[Profile],
    background: Background,
    cache: MatchCache | None = None,
) -> list[list[Ranked]]:
    """Rank ``papers`` for subscribers with their tags and all they taught (votes,
    examples, follows): the one path ``run``, ``preview`` and ``rank --reader`` share, with
    the ``cache`` and ``background`` of :func:`paperpost.pipeline.ranking_context`. With the
    semantic signal on (``cache.vectors``) it uses the semantic profile too."""
    vectors = cache.vectors if cache is not None else None
    taught = reader_nudge(store, papers, subscribers, background, vectors)
    return rank_many(papers, profiles, taught, background, cache)
