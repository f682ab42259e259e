from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import API_DAYS, CAPTURED, DUMPS, EXAMPLE_API_DAY, EXAMPLES, FULL_TESTS
from paperpost.dumps import (
    MAX_ABSTRACT,
    MAX_KEYWORDS,
    MAX_NAME,
    MAX_NAMES,
    MAX_PAPERS,
    MAX_TEXT,
    MAX_TITLE,
    DumpError,
    distinct_papers,
    parse_dump,
    parse_text_dump,
)
from paperpost.models import Paper, has_words, title_key

HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
HEADER += "byAK and the research community\n\nNov 24\n\n"


def parse_text(text: str, reference: date = CAPTURED):
    return parse_dump(text.encode(), "test.txt", reference)


# --- the real dumps (../shared) and the shipped examples ---------------------------------


@pytest.mark.shared
@pytest.mark.parametrize(
    ("index", "count", "listing"),
    [
        (0, 103, date(2026, 7, 9)),
        (1, 92, date(2026, 3, 11)),
        (2, 93, date(2026, 11, 24)),
        (3, 119, date(2026, 3, 11)),
    ],
)
def test_each_shared_dump_yields_its_papers(index: int, count: int, listing: date) -> None:
    # counts checked by hand: (paragraphs - header) / 2, less the 84 metadata blocks in 003
    parsed = parse_dump(DUMPS[index].read_bytes(), str(DUMPS[index]), CAPTURED)
    assert len(parsed.papers) == count
    assert parsed.listing_date == listing
    assert parsed.warnings == []


@pytest.mark.shared
def test_shared_dumps_hold_307_distinct_papers() -> None:
    papers = []
    for path in DUMPS:
        papers += parse_dump(path.read_bytes(), str(path), CAPTURED).papers
    assert len(distinct_papers(papers)) == 307


TEXT_DUMPS = sorted(EXAMPLES.glob("*/*.txt")) + DUMPS


@pytest.mark.parametrize("path", TEXT_DUMPS, ids=lambda path: path.name)
def test_titles_and_abstracts_are_kept_verbatim(path) -> None:
    raw = path.read_text(encoding="utf-8")
    parsed = parse_dump(raw.encode(), path.name, CAPTURED)
    assert parsed.papers and parsed.warnings == []
    lines = set(raw.splitlines())
    for paper in parsed.papers:
        assert paper.title in lines
        assert paper.abstract in lines


@pytest.mark.shared
def test_metadata_blocks_of_003() -> None:
    parsed = parse_dump(DUMPS[2].read_bytes(), "003", CAPTURED)
    by_title = {p.title: p for p in parsed.papers}
    video = by_title["VideoLLM-online: Online Video Large Language Model for Streaming Video"]
    assert (video.author_count, video.published, video.upvotes) == (10, date(2024, 6, 17), 1)
    bee = next(p for p in parsed.papers if p.title.startswith("Bee: A High-Quality Corpus"))
    assert (bee.organization, bee.published, bee.upvotes) == ("Open-Bee", date(2026, 10, 15), 2)
    llmcad = next(p for p in parsed.papers if p.title.startswith("LLMCad"))
    assert (llmcad.author_count, llmcad.published, llmcad.upvotes) == (7, date(2023, 9, 8), None)
    assert sum(1 for p in parsed.papers if p.published) == 84


@pytest.mark.parametrize("path", [EXAMPLE_API_DAY, *API_DAYS], ids=lambda path: path.name)
def test_api_days_keep_optional_fields_and_normalise_line_breaks(path) -> None:
    parsed = parse_dump(path.read_bytes(), str(path), CAPTURED)
    raw = json.loads(path.read_text())
    assert len(parsed.papers) == len(raw)
    for paper, item in zip(parsed.papers, raw, strict=True):
        assert paper.arxiv_id == item["paper"]["id"]
        assert "\n" not in paper.title and "  " not in paper.abstract
        assert paper.title == " ".join(item["paper"]["title"].split())
        assert paper.ai_keywords == tuple(item["paper"].get("ai_keywords", ()))
        assert paper.github_repo == item["paper"].get("githubRepo")
        assert paper.url == f"https://huggingface.co/papers/{paper.arxiv_id}"


@pytest.mark.shared
def test_the_latest_shared_api_day_has_summaries() -> None:
    last = parse_dump(API_DAYS[-1].read_bytes(), "x.json", CAPTURED).papers
    assert all(p.ai_summary for p in last)


# --- variants and damage -----------------------------------------------------------------


def test_titles_that_look_like_headers_or_dates_stay_titles() -> None:
    text = (
        HEADER
        + "Subscribe\n\nAn abstract.\n\nMar 11\n\nAnother abstract.\n\nDaily Papers\n\nThird.\n"
    )
    parsed = parse_text(text)
    assert [p.title for p in parsed.papers] == ["Subscribe", "Mar 11", "Daily Papers"]


def test_year_inference_for_listing_and_paper_dates() -> None:
    text = HEADER + "T\n\nA\n\n  • 2 authors\n·\nDec 30 3\n\nU\n\nB\n\norg Org Name\n·\nNov 2\n"
    parsed = parse_text(text, reference=date(2027, 1, 10))
    assert parsed.listing_date == date(2026, 11, 24)
    # Dec 30 would be after the listing date in 2026, so it is the year before
    assert parsed.papers[0].published == date(2025, 12, 30)
    assert parsed.papers[1].published == date(2026, 11, 2)
    assert parsed.papers[1].organization == "Org Name"


def test_truncated_trailing_title_is_not_a_paper() -> None:
    parsed = parse_text(HEADER + "T\n\nA\n\nDangling title with no abstract\n")
    assert [p.title for p in parsed.papers] == ["T"]
    assert "has no abstract" in parsed.warnings[0]


def test_truncated_metadata_block_does_not_swallow_a_paper() -> None:
    parsed = parse_text(HEADER + "T\n\nA\n\n  • 4 authors\n·\n\nU\n\nB\n")
    assert [p.title for p in parsed.papers] == ["T", "U"]
    assert parsed.papers[0].author_count is None
    assert parsed.warnings


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"\x00\x01\x02binary", "binary data"),
        (b"\xfa\xfb not utf8", "not UTF-8"),
        (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "HTML page"),
        (b'[{"paper": {"id": "2608.1', "truncated"),
        (b'{"error": "Invalid date"}', "Invalid date"),
        (b"['{\\'paper\\': 1}', 'x']", "not valid JSON"),
        (json.dumps(["{'paper': {'id': '1'}}", "{'x': 2}"]).encode(), "Python-repr"),
        # before: "none of the 2 items is a paper object (items are dict; a list of Python-repr
        # strings?)" for objects that are papers, each without a usable summary or title
        (
            json.dumps([{"paper": {"title": "T", "summary": None}}, {"paper": {"title": ""}}]),
            "none of the 2 items is a usable paper (item 0: paper 'T' has no summary, "
            "and 1 more like it)",
        ),
        (b"hello world\n\nnot a dump\n", "Daily Papers header"),
    ],
)
def test_malformed_inputs_get_one_clear_error(content: bytes | str, expected: str) -> None:
    with pytest.raises(DumpError) as info:
        parse_dump(
            content if isinstance(content, bytes) else content.encode(), "feeds/bad-input", CAPTURED
        )
    assert str(info.value).startswith("feeds/bad-input")
    assert expected in str(info.value)


# --- properties ---------------------------------------------------------------------------

_line = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
        min_size=1,
        max_size=80,
    )
    .map(lambda s: " ".join(s.split()))
    .filter(has_words)  # a title or abstract with no letter or digit is no paper (ATTACK5 #2)
)
_paper = st.builds(
    lambda t, a, n, up: (t, a, n, up),
    _line,
    _line,
    st.one_of(st.none(), st.integers(1, 400)),
    st.one_of(st.none(), st.integers(1, 999)),
)


def render_dump(papers: list[tuple[str, str, int | None, int | None]]) -> str:
    out = [HEADER.rstrip("\n")]
    for title, abstract, authors, upvotes in papers:
        out += [title, abstract]
        if authors is not None:
            out.append(f"  • {authors} authors\n·\nJun 17, 2024{f' {upvotes}' if upvotes else ''}")
    return "\n\n".join(out) + "\n"


@given(st.lists(_paper, max_size=20))
@settings(max_examples=150, deadline=None)
def test_rendered_dumps_parse_back_to_the_same_papers(papers) -> None:
    parsed = parse_text_dump(render_dump(papers), "gen.txt", CAPTURED)
    assert [(p.title, p.abstract) for p in parsed.papers] == [(t, a) for t, a, _, _ in papers]
    for paper, (_, _, authors, upvotes) in zip(parsed.papers, papers, strict=True):
        assert paper.author_count == authors
        assert paper.upvotes == (upvotes if authors is not None else None)
        assert paper.published == (date(2024, 6, 17) if authors is not None else None)


@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
@settings(max_examples=300, deadline=None)
def test_arbitrary_input_only_raises_dump_error(content: bytes) -> None:
    try:
        parsed = parse_dump(content, "fuzz", CAPTURED)
    except DumpError:
        return
    assert all(isinstance(p, Paper) and p.title and p.abstract for p in parsed.papers)


@given(st.text(max_size=60))
def test_title_key_ignores_case_space_and_punctuation(title: str) -> None:
    assert title_key(title) == title_key("  " + title.upper().replace(" ", "\n ") + "!")


_reports = st.lists(
    st.builds(
        lambda title, abstract, arxiv_id: Paper(title, abstract, arxiv_id=arxiv_id),
        st.sampled_from(["Efficient LLM Inference", "efficient llm inference!", "Other"]),
        st.sampled_from(["Abstract one.", "Abstract two."]),
        st.sampled_from([None, "2611.11111", "2611.22222", "2611.33333"]),
    ),
    max_size=12,
)


@given(_reports)
@settings(max_examples=300 if FULL_TESTS else 100, deadline=None)
def test_distinct_papers_merge_one_paper_and_never_two_arxiv_ids(reports) -> None:
    """Before: two arXiv ids with one title were merged into one paper (the second's
    abstract under the first's id). Now each id is one paper; a record without an id is
    merged into one with its title (or into another without an id)."""
    merged = distinct_papers(reports)
    ids = [p.arxiv_id for p in merged if p.arxiv_id]
    assert sorted(ids) == sorted({p.arxiv_id for p in reports if p.arxiv_id})
    for i, a in enumerate(merged):  # no two results could still be one paper
        for b in merged[i + 1 :]:
            assert a.key != b.key or (a.arxiv_id and b.arxiv_id and a.arxiv_id != b.arxiv_id)
    for paper in merged:  # an id's record holds that id's own report's text
        if paper.arxiv_id:
            texts = {(r.title, r.abstract) for r in reports if r.arxiv_id == paper.arxiv_id}
            assert (paper.title, paper.abstract) in texts


# --- round 2 of hostile dumps: encodings, truncation, size, regex blow-up ---------------


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-8-twice-bom":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode()
    if encoding == "utf-16-be":  # with its byte-order mark, as editors save it
        return b"\xfe\xff" + text.encode("utf-16-be")
    return text.encode(encoding)


@given(
    st.lists(_paper, min_size=1, max_size=8),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-8-twice-bom", "utf-16", "utf-16-be", "utf-32"]),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
@settings(max_examples=300 if FULL_TESTS else 60, deadline=None)
def test_encodings_and_line_ends_do_not_change_the_papers(papers, encoding, newline) -> None:
    """Before: UTF-16 (Windows "Unicode") was "binary data (NUL bytes)"; a BOM saved
    twice broke the header."""
    content = _encode(render_dump(papers).replace("\n", newline), encoding)
    parsed = parse_dump(content, "enc.txt", CAPTURED)
    assert [(p.title, p.abstract) for p in parsed.papers] == [(t, a) for t, a, _, _ in papers]


@given(st.lists(_paper, min_size=1, max_size=8), st.data())
@settings(max_examples=300 if FULL_TESTS else 80, deadline=None)
def test_a_dump_cut_anywhere_keeps_the_papers_before_the_cut(papers, data) -> None:
    """A dump cut at any byte after its header (mid-character too) yields the papers
    before the cut unchanged, and at most the last one shortened. Before: a cut inside a
    character refused the whole dump ("not UTF-8 text")."""
    content = render_dump(papers).encode()
    cut = data.draw(st.integers(len(HEADER.encode()), len(content)))
    parsed = parse_dump(content[:cut], "cut.txt", CAPTURED)
    got = [(p.title, p.abstract) for p in parsed.papers]
    wanted = [(t, a) for t, a, _, _ in papers]
    if got:
        assert got[:-1] == wanted[: len(got) - 1]
        title, abstract = got[-1]
        assert title == wanted[len(got) - 1][0]
        assert wanted[len(got) - 1][1].startswith(abstract)
    if content[:cut].decode("utf-8", "ignore").encode() != content[:cut]:
        assert any("middle of a character" in w for w in parsed.warnings)


def test_titles_and_abstracts_of_invisible_characters_are_missing_ones() -> None:
    """ATTACK5 #2: titles of blank Braille, Hangul fillers and zero-width spaces (and a
    summary of one ZWSP) were stored and mailed as blank cards; the Subject ended in ": "."""
    real = {"paper": {"id": "2611.00001", "title": "Agents that plan", "summary": "Real text."}}
    items = [
        {"paper": {"id": "2611.00002", "title": "\u2800\u3164\u200b", "summary": "Abstract."}},
        {"paper": {"id": "2611.00003", "title": "\u115f\u1160 \u2800", "summary": "Abstract."}},
        {"paper": {"id": "2611.00004", "title": "A title", "summary": "\u200b"}},
        real,
    ]
    parsed = parse_dump(json.dumps(items).encode(), "api.json", CAPTURED)
    assert [p.title for p in parsed.papers] == ["Agents that plan"]
    assert len(parsed.warnings) == 3
    text = HEADER + "\n\u3164\u2800\n\nAn abstract.\n\nReal title\n\nReal abstract.\n"
    parsed = parse_text_dump(text, "blank.txt", CAPTURED)
    assert [p.title for p in parsed.papers] == ["Real title"]
    assert any("no readable title" in w for w in parsed.warnings)


def test_c1_controls_never_reach_a_paper_or_a_terminal(tmp_path: Path) -> None:
    """Before: U+009B (a terminal's CSI, like ESC [) was kept, so `paperpost parse` printed
    "\\x9b2J" (clear the screen) and "\\x9b31m" (red) from a title to the operator's terminal."""
    from typer.testing import CliRunner

    from paperpost.cli import app

    dump = tmp_path / "c1.txt"
    dump.write_text(
        "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
        "byAK and the research community\n\nNov 24\n\n"
        "Evil \x9b2J\x9b31mRed\x85title\n\nAn abstract \x9b1;31m about agents.\n"
    )
    (paper,) = parse_dump(dump.read_bytes(), str(dump), CAPTURED).papers
    assert (paper.title, paper.abstract) == (
        "Evil 2J31mRed title",
        "An abstract 1;31m about agents.",
    )
    shown = CliRunner().invoke(app, ["parse", str(dump)]).output
    assert "Red title" in shown and not re.search("[\x80-\x9f\x1b]", shown)


def test_a_byte_that_is_not_utf8_is_located() -> None:
    content = (HEADER + "Title\n\nAbstract with \x93smart quotes\x94\n").encode("latin-1")
    with pytest.raises(DumpError) as info:
        parse_dump(content, "cp1252.txt", CAPTURED)
    assert str(info.value) == (
        "cp1252.txt:13: not UTF-8 text (byte 93 at column 15; Latin-1 or Windows-1252?); "
        "save the dump as UTF-8"
    )


def test_more_papers_than_a_listing_holds_is_refused_early() -> None:
    """Before: 18 MB of one-letter papers took over 300 s and 4 GB (killed); 700,000
    one-line API items 45 s and 580 MB, then went on to the database."""
    with pytest.raises(DumpError, match="more than 10,000 papers"):
        parse_dump((HEADER + "a\n\nb\n\n" * (MAX_PAPERS + 1)).encode(), "many.txt", CAPTURED)
    item = {"title": "a", "summary": "b"}
    with pytest.raises(DumpError, match="more than 10,000 papers"):
        parse_dump(json.dumps([item] * (MAX_PAPERS + 1)).encode(), "many.json", CAPTURED)
    assert len(parse_dump(json.dumps([item] * 3).encode(), "few.json", CAPTURED).papers) == 3


@contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) if the block runs longer than ``seconds``."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_an_organisation_line_full_of_spaces_is_read_in_linear_time() -> None:
    """Before: the organisation regex backtracked over the spaces: 17 s for a 50 KB line,
    quadratic (a 20 MB dump of such blocks: days)."""
    line = "a b" + " " * 200_000 + "x"
    text = HEADER + f"Title\n\nAbstract\n\n{line}\n·\nNov 3\n"
    with within(5):
        parsed = parse_dump(text.encode(), "org.txt", CAPTURED)
    assert parsed.papers[0].organization == "b x"  # spaces collapsed, as everywhere


@given(
    st.integers(0, 3000),
    st.integers(0, 30_000),
    st.integers(0, 3000),
    st.integers(0, 1500),
    st.integers(0, 100),
)
@settings(max_examples=100 if FULL_TESTS else 25, deadline=None)
def test_one_item_cannot_make_a_paper_huge(title, abstract, tldr, authors, keywords) -> None:
    """Before: one API item with a 2 MB title, 3.6 MB abstract and 200,000 authors made a
    4.2 MB digest (Gmail clips at 102 KB, hiding the unsubscribe link), a 10.8 MB
    database and a 31 s run."""
    item = {
        "paper": {
            "id": "2611.00001",
            "title": "Agents " + "plan " * title,
            "summary": "About agents. " * (abstract // 10 + 1),
            "ai_summary": "x " * tldr,
            "authors": [{"name": f"Author {i} " + "y" * (i % 300)} for i in range(authors)],
            "ai_keywords": ["k" * (i * 5) + "w" for i in range(keywords)],
        }
    }
    parsed = parse_dump(json.dumps([item]).encode(), "big.json", CAPTURED)
    (paper,) = parsed.papers
    assert len(paper.title) <= MAX_TITLE and len(paper.abstract) <= MAX_ABSTRACT
    assert len(paper.ai_summary or "") <= MAX_TEXT
    assert len(paper.authors or ()) <= MAX_NAMES and len(paper.ai_keywords) <= MAX_KEYWORDS
    assert all(len(n) <= MAX_NAME for n in (*(paper.authors or ()), *paper.ai_keywords))
    assert paper.title.startswith("Agents")
    if len(item["paper"]["title"].strip()) > MAX_TITLE:
        assert any("title of" in w and "cut to 500" in w for w in parsed.warnings)


@given(
    st.from_regex(r"\d{4}\.\d{4,5}|[a-z]{2,8}(-[a-z]{2})?/\d{7}", fullmatch=True),
    st.one_of(st.just(""), st.integers(1, 9999).map(lambda n: f"v{n}")),
    st.sampled_from(["", " ", "\n"]),
)
@settings(max_examples=300 if FULL_TESTS else 100, deadline=None)
def test_an_api_id_keeps_its_arxiv_id_without_the_version(base, version, space) -> None:
    """Before: `2611.90006v2` was not an arXiv id: the paper was stored title-only, with an
    arXiv title search for a link, and never matched its unversioned reports."""
    item = {"paper": {"id": space + base + version + space, "title": "T", "summary": "S."}}
    (paper,) = parse_dump(json.dumps([item]).encode(), "v.json", CAPTURED).papers
    assert paper.arxiv_id == base


def test_a_duplicate_id_in_one_api_file_is_reported() -> None:
    """Before: the later item silently replaced the earlier one."""
    items = [
        {"paper": {"id": "2611.00001", "title": "First", "summary": "One."}},
        {"paper": {"id": "2611.00002", "title": "Other", "summary": "Two."}},
        {"paper": {"id": "2611.00001v2", "title": "First, again", "summary": "One, again."}},
    ]
    parsed = parse_dump(json.dumps(items).encode(), "dup.json", CAPTURED)
    assert parsed.warnings == [
        "dup.json: item 2: arXiv id 2611.00001 again (item 0); the two are stored as one "
        "paper, the later item's details over the earlier's"
    ]
    assert [p.title for p in distinct_papers(parsed.papers)] == ["First, again", "Other"]
