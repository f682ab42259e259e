"""Parse snapshots of the Daily Papers listing: plain-text page dumps and API JSON.

Pure functions from bytes to :class:`ParsedDump`; no I/O. Every way a dump can be
malformed ends in :class:`DumpError`, which names the source, the line where it
could tell, what is wrong and what to do.

Year inference (text dumps carry dates without a year): the listing date ``Mon D``
is the latest such date on or before the *reference date* (when the dump was
captured: the HTTP ``Last-Modified``/``Date`` header or the file's mtime). A
paper's ``Mon D`` is in the listing's year, or the year before when that would put
it after the listing date; ``Mon D, YYYY`` is taken as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from paperpost.models import Paper, abstract_key, has_words, normalize_space
from paperpost.sanitize import http_url, shorten_line

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_MONTH = "(" + "|".join(MONTHS) + ")"
HEADER_LINES = frozenset(
    {
        "new",
        "Get trending papers in your email inbox!",
        "Subscribe",
        "Daily Papers",
        "byAK and the research community",
    }
)
_LISTING_DATE = re.compile(rf"{_MONTH} (\d{{1,2}})")
_AUTHORS = re.compile(r"\s*•\s*(\d+) authors?\s*")
_ORG = re.compile(r"(\S+) (\S.*)")  # on a stripped line (no backtracking over spaces)
_PAPER_DATE = re.compile(rf"{_MONTH} (\d{{1,2}})(?:, (\d{{4}}))?(?: (\d+))?\s*")
# an arXiv id, and the version the API sometimes appends (2611.90006v2): one paper, its
# id without the version
_ARXIV_ID = re.compile(r"(\d{4}\.\d{4,5}|[a-z][a-z.-]{0,30}/\d{7})(?:v\d{1,4})?")
# Counts (upvotes, authors) above this are nonsense and do not fit a 32-bit column.
MAX_COUNT = 2**31 - 1
# A listing page holds about a hundred papers and an API month a few thousand; a dump with
# more is not a listing (and would cost gigabytes of memory to hold as papers).
MAX_PAPERS = 10_000
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


class DumpError(ValueError):
    """A dump that cannot be read. ``str()`` is the message a user sees."""

    def __init__(self, source: str, problem: str, line: int | None = None) -> None:
        self.source = source
        self.problem = problem
        self.line = line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {problem}")


@dataclass(slots=True)
class ParsedDump:
    """What one source held: its papers in listing order, and anything skipped."""

    source: str
    kind: str  # "text" or "api"
    listing_date: date | None
    papers: list[Paper]
    warnings: list[str] = field(default_factory=list)


def decode(content: bytes, source: str) -> tuple[str, list[str]]:
    """The dump's text: UTF-8 (a byte-order mark is skipped), or UTF-16/32 when a
    byte-order mark says so. A dump cut off inside a character loses that character,
    with a warning; any other byte that is not UTF-8 is an error naming its line."""
    for bom, encoding in _BOMS:
        if content.startswith(bom):
            try:
                return content.decode(encoding), []
            except UnicodeDecodeError:
                raise DumpError(
                    source, f"starts like {encoding.upper()} text but is not; re-download it"
                ) from None
    if b"\x00" in content[:65536]:
        raise DumpError(source, "binary data (NUL bytes), not a text or JSON dump")
    try:
        return content.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        if exc.reason == "unexpected end of data":  # only the last character is cut
            return content[: exc.start].decode("utf-8-sig"), [
                f"{source}:{line}: the dump ends in the middle of a character (truncated?); "
                "the last paper may be missing"
            ]
        column = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DumpError(
            source,
            f"not UTF-8 text (byte {content[exc.start]:02X} at column {column}; Latin-1 or "
            "Windows-1252?); save the dump as UTF-8",
            line,
        ) from None


def parse_dump(content: bytes, source: str, reference: date) -> ParsedDump:
    """Parse one dump, telling text from API JSON by its content."""
    text, warnings = decode(content, source)
    text = text.lstrip("\ufeff")  # a byte-order mark saved twice
    stripped = text.lstrip()
    if not stripped:
        raise DumpError(source, "empty file; expected a page dump or daily-papers JSON")
    if stripped[0] == "<":
        raise DumpError(
            source,
            "this is an HTML page (an error page?), not a dump; save the listing as text "
            "or use the daily-papers API",
        )
    if stripped[0] in "[{":
        parsed = parse_api_json(text, source)
    else:
        parsed = parse_text_dump(text, source, reference)
    parsed.warnings[:0] = warnings
    return parsed


def _too_many(source: str, line: int | None = None) -> DumpError:
    return DumpError(
        source,
        f"more than {MAX_PAPERS:,} papers; a Daily Papers listing holds a few hundred at "
        "most, so this is not one (check the source)",
        line,
    )


# --- text dumps ----------------------------------------


def _paragraphs(text: str, source: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated paragraphs, each with the 1-based line it starts on (refused
    when there are more than a listing of MAX_PAPERS papers could have)."""
    paras: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    limit = 3 * MAX_PAPERS + 10  # title, abstract, metadata; the header
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if line.strip():
            if not current:
                start = number
            current.append(line.rstrip())
        elif current:
            paras.append((start, current))
            current = []
            if len(paras) > limit:
                raise _too_many(source, start)
    if current:
        paras.append((start, current))
    return paras


def latest_date_on_or_before(month: int, day: int, reference: date) -> date | None:
    """The most recent ``month``/``day`` not after ``reference`` (None if no such day)."""
    for year in range(reference.year, reference.year - 8, -1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue
        if candidate <= reference:
            return candidate
    return None


def count(value: object) -> int | None:
    """A plausible count: an int (or digit string) from 0 to MAX_COUNT, else None."""
    if isinstance(value, str):
        value = int(value) if value.isdigit() and len(value) <= 10 else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


@dataclass(slots=True)
class _Meta:
    author_count: int | None
    organization: str | None
    published: date | None
    upvotes: int | None


def _parse_meta(lines: list[str], listing: date) -> _Meta | None:
    """A metadata block (author count or organisation, ``·``, date [upvotes])."""
    if len(lines) != 3 or lines[1].strip() != "·":
        return None
    dated = _PAPER_DATE.fullmatch(lines[2].strip())
    if not dated:
        return None
    authors = _AUTHORS.fullmatch(lines[0])
    org = None if authors else _ORG.fullmatch(lines[0].strip())
    if not authors and not org:
        return None
    month, day = MONTHS[dated[1]], int(dated[2])
    try:
        if dated[3]:
            published: date | None = date(int(dated[3]), month, day)
        else:
            published = date(listing.year, month, day)
            if published > listing:
                published = date(listing.year - 1, month, day)
    except ValueError:
        published = None
    return _Meta(
        author_count=count(authors[1]) if authors else None,
        organization=normalize_space(org[2]) or None if org else None,
        published=published,
        upvotes=count(dated[4]) if dated[4] else None,
    )


def _looks_like_meta(lines: list[str]) -> bool:
    return len(lines) > 1 and any(line.strip() == "·" for line in lines)


def parse_text_dump(text: str, source: str, reference: date) -> ParsedDump:
    """Parse a page dump saved as text (see ``docs/dumps.md`` for the layout)."""
    paras = _paragraphs(text, source)
    index = 0
    listing: date | None = None
    while index < len(paras) and index < 8:
        line_no, lines = paras[index]
        only = lines[0].strip() if len(lines) == 1 else None
        index += 1
        if only in HEADER_LINES:
            continue
        dated = _LISTING_DATE.fullmatch(only or "")
        if dated:
            listing = latest_date_on_or_before(MONTHS[dated[1]], int(dated[2]), reference)
            if listing is None:
                raise DumpError(source, f"listing date {only!r} is not a real date", line_no)
            break
        raise DumpError(
            source,
            f"expected the Daily Papers header ending in a date like 'Jul 9', found "
            f"{(lines[0][:60])!r}; is this a page dump of huggingface.co/papers?",
            line_no,
        )
    if listing is None:
        raise DumpError(source, "no listing date (like 'Jul 9') in the header; file truncated?")

    papers: list[Paper] = []
    warnings: list[str] = []
    while index < len(paras):
        line_no, lines = paras[index]
        if _looks_like_meta(lines):
            warnings.append(f"{source}:{line_no}: metadata block with no paper before it; skipped")
            index += 1
            continue
        title = normalize_space(" ".join(lines))
        if index + 1 >= len(paras):
            warnings.append(
                f"{source}:{line_no}: title {title[:60]!r} has no abstract (truncated dump?); "
                "skipped"
            )
            break
        _, abstract_lines = paras[index + 1]
        if _looks_like_meta(abstract_lines):
            warnings.append(
                f"{source}:{line_no}: title {title[:60]!r} has no abstract before its "
                "metadata; skipped"
            )
            index += 2
            continue
        abstract = normalize_space(" ".join(abstract_lines))
        if not has_words(title) or not has_words(abstract):
            warnings.append(f"{source}:{line_no}: a paper with no readable title; skipped")
            index += 2
            continue
        paper = Paper(title=title, abstract=abstract, source=source, listing_date=listing)
        index += 2
        if index < len(paras) and _looks_like_meta(paras[index][1]):
            meta_line, meta_lines = paras[index]
            meta = _parse_meta(meta_lines, listing)
            if meta is None:
                warnings.append(
                    f"{source}:{meta_line}: unrecognised metadata block "
                    f"{' | '.join(meta_lines)[:80]!r}; paper kept without it"
                )
            else:
                paper = replace(
                    paper,
                    author_count=meta.author_count,
                    organization=meta.organization,
                    published=meta.published,
                    upvotes=meta.upvotes,
                )
            index += 1
        papers.append(_bounded(paper, f"{source}:{line_no}", warnings))
        if len(papers) > MAX_PAPERS:
            raise _too_many(source, line_no)
    return ParsedDump(source, "text", listing, papers, warnings)


# --- sizes ----------------------------------------

# Far beyond any real paper (arXiv caps abstracts at 1,920 characters, titles are under
# 300): longer text is cut, so one hostile item cannot make a digest megabytes long.
MAX_TITLE = 500
MAX_ABSTRACT = 10_000
MAX_TEXT = 1_000  # TL;DR
MAX_NAME = 200  # an author, organisation or keyword
MAX_NAMES = 1_000  # authors
MAX_KEYWORDS = 50


def _bounded(paper: Paper, where: str, warnings: list[str]) -> Paper:
    """``paper`` with over-long text cut (each cut reported in ``warnings``)."""
    changes: dict[str, object] = {}
    for name, limit in (
        ("title", MAX_TITLE),
        ("abstract", MAX_ABSTRACT),
        ("ai_summary", MAX_TEXT),
        ("organization", MAX_NAME),
    ):
        value = getattr(paper, name)
        if value and len(value) > limit:
            changes[name] = shorten_line(value, limit)
            warnings.append(f"{where}: {name} of {len(value):,} characters cut to {limit:,}")
    for name, count, limit in (
        ("authors", MAX_NAMES, MAX_NAME),
        ("ai_keywords", MAX_KEYWORDS, MAX_NAME),
    ):
        values = getattr(paper, name)
        if values and (len(values) > count or any(len(v) > limit for v in values)):
            changes[name] = tuple(shorten_line(v, limit) for v in values[:count])
            warnings.append(f"{where}: {name} cut to {count:,} of at most {limit} characters")
    return replace(paper, **changes) if changes else paper


# --- API JSON ----------------------------------------


def _iso_date(value: object) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return (normalize_space(value) or None) if isinstance(value, str) else None


def _words(value: object) -> str | None:
    """A title or summary, None when it has no visible letter or digit."""
    text = _text(value)
    return text if text and has_words(text) else None


def _org_name(*candidates: object) -> str | None:
    for org in candidates:
        if isinstance(org, dict):
            name = _text(org.get("fullname")) or _text(org.get("name"))
            if name:
                return name
    return None


def _api_paper(item: dict, source: str) -> Paper:
    inner = item.get("paper") if isinstance(item.get("paper"), dict) else item
    title = _words(inner.get("title")) or _words(item.get("title"))
    abstract = _words(inner.get("summary")) or _words(item.get("summary"))
    if not title:
        raise ValueError("no title")
    if not abstract:
        raise ValueError(f"paper {title[:50]!r} has no summary")
    raw_id = inner.get("id")
    found = _ARXIV_ID.fullmatch(raw_id.strip()) if isinstance(raw_id, str) else None
    arxiv_id = found[1] if found else None
    authors = inner.get("authors")
    names = (
        tuple(n for n in (_text(a.get("name")) for a in authors if isinstance(a, dict)) if n)
        if isinstance(authors, list)
        else None
    )
    keywords = inner.get("ai_keywords")
    return Paper(
        title=title,
        abstract=abstract,
        arxiv_id=arxiv_id,
        authors=names,
        author_count=len(names) if names else None,
        organization=_org_name(inner.get("organization"), item.get("organization")),
        published=_iso_date(inner.get("publishedAt")) or _iso_date(item.get("publishedAt")),
        upvotes=count(inner.get("upvotes")),
        ai_summary=_text(inner.get("ai_summary")),
        ai_keywords=tuple(k for k in (_text(k) for k in keywords or ()) if k)
        if isinstance(keywords, list)
        else (),
        github_repo=http_url(inner.get("githubRepo")),
        project_page=http_url(inner.get("projectPage")),
        source=source,
        listing_date=_iso_date(inner.get("submittedOnDailyAt")),
    )


def _json_int(digits: str) -> int | None:
    """JSON integers of up to 18 digits; longer ones (which Python refuses past 4300
    digits, and no column holds) are read as None."""
    return int(digits) if len(digits.lstrip("-")) <= 18 else None


def parse_api_json(text: str, source: str) -> ParsedDump:
    """Parse the body of ``GET /api/daily_papers``: a JSON list of items."""
    try:
        data = json.loads(text, parse_int=_json_int)
    except RecursionError:
        raise DumpError(
            source, "the JSON is nested too deeply to be a daily-papers list; re-download it"
        ) from None
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated")
        hint = "the file is truncated" if truncated else "this is not valid JSON"
        raise DumpError(
            source,
            f"{hint} ({exc.msg}, line {exc.lineno} column {exc.colno}); re-download it",
            exc.lineno,
        ) from None
    if isinstance(data, dict):
        detail = data.get("error") or ", ".join(sorted(data)[:5])
        raise DumpError(source, f"expected a list of papers, got an object ({detail})")
    if not isinstance(data, list):
        raise DumpError(source, f"expected a list of papers, got {type(data).__name__}")
    if len(data) > MAX_PAPERS:
        raise _too_many(source)
    papers: list[Paper] = []
    warnings: list[str] = []
    positions: dict[str, int] = {}  # arXiv id -> the first item with it
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            warnings.append(
                f"{source}: item {position} is a {type(item).__name__}, not an object; skipped"
            )
            continue
        try:
            paper = _bounded(_api_paper(item, source), f"{source}: item {position}", warnings)
        except ValueError as exc:
            warnings.append(f"{source}: item {position}: {exc}; skipped")
            continue
        papers.append(paper)
        if paper.arxiv_id:
            first = positions.setdefault(paper.arxiv_id, position)
            if first != position:
                warnings.append(
                    f"{source}: item {position}: arXiv id {paper.arxiv_id} again (item {first}); "
                    "the two are stored as one paper, the later item's details over the earlier's"
                )
    if data and not papers and all(isinstance(item, dict) for item in data):
        first = warnings[0].removeprefix(f"{source}: ").removesuffix("; skipped")
        more = f", and {len(warnings) - 1} more like it" if len(warnings) > 1 else ""
        raise DumpError(
            source,
            f"none of the {len(data)} items is a usable paper ({first}{more}); "
            "re-download the day from the API",
        )
    if data and not papers:
        kinds = sorted({type(item).__name__ for item in data})
        raise DumpError(
            source,
            f"none of the {len(data)} items is a paper object (items are {', '.join(kinds)}; "
            "a list of Python-repr strings?); re-download the day from the API",
        )
    days = [p.listing_date for p in papers if p.listing_date]
    return ParsedDump(source, "api", max(days) if days else None, papers, warnings)


# --- identity across sources ----------------------------------------


def merge_papers(old: Paper, new: Paper) -> Paper:
    """One record for a paper seen twice: the newer report wins where it knows more."""
    changes = {
        name: getattr(new, name)
        for name in (
            "arxiv_id",
            "authors",
            "author_count",
            "organization",
            "published",
            "upvotes",
            "ai_summary",
            "github_repo",
            "project_page",
        )
        if getattr(new, name) is not None
    }
    if new.ai_keywords:
        changes["ai_keywords"] = new.ai_keywords
    if new.arxiv_id or not old.arxiv_id:
        changes["title"] = new.title
        changes["abstract"] = new.abstract
    return replace(old, **changes)


def one_paper(a: Paper, b: Paper) -> bool:
    """Whether two reports are of one paper: the same arXiv id, or the same folded title
    when at most one of them has an arXiv id. Two arXiv ids are two papers, whatever
    their titles ("Efficient LLM Inference" is the title of more than one paper)."""
    if a.arxiv_id and b.arxiv_id:
        return a.arxiv_id == b.arxiv_id
    return a.key == b.key


def distinct_papers(papers: Iterable[Paper]) -> list[Paper]:
    """Papers with the reports of one paper (:func:`one_paper`) merged, first-seen order.

    Merging can give a record a new id or title that another record already has (a
    text-only paper, then two API reports of one arXiv id under two titles); such records
    are merged too, so no two results are one paper. A text-only report whose title two
    arXiv papers share is merged into the one with its abstract, else the first.
    """
    merged: list[Paper | None] = []
    by_id: dict[str, int] = {}
    by_key: dict[str, list[int]] = {}  # folded title -> slots that had it (some stale)

    def find(paper: Paper, skip: int | None) -> int | None:
        slot = by_id.get(paper.arxiv_id or "")
        if slot is not None and slot != skip and merged[slot] is not None:
            return slot
        found = [
            slot
            for slot in by_key.get(paper.key, ())
            if slot != skip and (other := merged[slot]) is not None and one_paper(other, paper)
        ]
        if len(found) > 1 and (abstract := abstract_key(paper.abstract)):
            # a title two arXiv papers share: the abstract says which one is listed
            same = [s for s in found if abstract_key(merged[s].abstract) == abstract]  # type: ignore[union-attr]
            found = same or found
        return found[0] if found else None

    for paper in papers:
        slot = find(paper, None)
        if slot is None:
            slot = len(merged)
            merged.append(paper)
        else:
            merged[slot] = merge_papers(merged[slot], paper)  # type: ignore[arg-type]
        while (clash := find(merged[slot], slot)) is not None:  # type: ignore[arg-type]
            first, second = min(slot, clash), max(slot, clash)
            merged[first] = merge_papers(merged[first], merged[second])  # type: ignore[arg-type]
            merged[second] = None
            slot = first
        record = merged[slot]
        assert record is not None
        if record.arxiv_id:
            by_id[record.arxiv_id] = slot
        slots = by_key.setdefault(record.key, [])
        if slot not in slots:
            slots.append(slot)
    return [p for p in merged if p is not None]
