"""Poison dumps: one hostile source is reported alone, stays due for a retry, and every
other source is still served. Scenarios from issue 13, then hypothesis-generated API
documents and text dumps, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from sqlalchemy import delete, select
from test_sanitize import EDITION, RENDERER, assert_only_our_headers_and_bodies
from werkzeug import Request, Response

from conftest import FULL_TESTS
from paperpost.dumps import MAX_COUNT, parse_dump
from paperpost.fetch import Fetched
from paperpost.models import Paper
from paperpost.pipeline import diff_stage, run_plain
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Reader
from paperpost.settings import Settings
from paperpost.store import Store, fetches, key_hash, papers

TODAY = date(2026, 11, 25)
HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
HEADER += "byAK and the research community\n\nNov 24\n\n"
GOOD_TITLES = ["Tool-using LLM agents", "Agents that plan", "Benchmarks for web agents"]
GOOD = (
    HEADER + "\n\n".join(f"{t}\n\nWe study {t.lower()} in depth." for t in GOOD_TITLES) + "\n"
).encode()


def api_item(title: str, arxiv_id: object = "2611.00001", **paper: object) -> dict:
    return {"paper": {"id": arxiv_id, "title": title, "summary": f"About {title}.", **paper}}


def api(*items: dict) -> bytes:
    return json.dumps(list(items)).encode()


# name -> (dump bytes, what the issue saw before the fix)
POISON = {
    "deep-nesting.json": b"[" * 100_000 + b"]" * 100_000,  # RecursionError
    "huge-int.json": b'[{"paper": {"id": "2611.00001", "title": "Agents", "summary": "S", '
    b'"upvotes": 1' + b"0" * 5000 + b"}}]",  # ValueError (int_max_str_digits)
    "above-2-63.json": api(api_item("Big agents", upvotes=2**63)),  # OverflowError / out of range
    "above-2-31.json": api(api_item("Bigger agents", upvotes=2**40)),  # PostgreSQL int4
    "shared-id.json": api(  # text-only paper + two API papers with one id: IntegrityError
        api_item("Shared agents", arxiv_id="not an id"),
        api_item("Other title of agents"),
        api_item("Shared agents"),
    ),
    "nul.json": api(api_item("NUL\u0000agents", authors=[{"name": "A\u0000B"}])),  # DataError
    "surrogate.json": api(api_item("Lone \ud800 agents")),  # UnicodeEncodeError
    "long-id.json": api(api_item("Long id agents", arxiv_id="a" * 100 + "/1234567")),
    "nul-late.txt": (HEADER + "x" * 70_000 + "\n\nAbstract\n\nNUL \x00 agents\n\nText.\n").encode(),
    "huge-meta.txt": (
        HEADER + "Meta agents\n\nText.\n\n  • " + "9" * 5000 + " authors\n·\nJun 17, 2024 "
        "9" + "9" * 5000 + "\n"
    ).encode(),
}


@pytest.fixture
def run_setup(tmp_path: Path, any_db_url: str):
    dumps, subs = tmp_path / "dumps", tmp_path / "subs"
    dumps.mkdir()
    subs.mkdir()
    (dumps / "good.txt").write_bytes(GOOD)
    (subs / "ann.yaml").write_text("email: ann@example.org\ntags: [agents]\n")
    settings = Settings(
        sources=[str(dumps)],
        subscribers_dir=subs,
        outbox_dir=tmp_path / "outbox",
        database_url=any_db_url,
        send_empty=True,
    )
    return settings, dumps


@pytest.mark.parametrize("name", sorted(POISON))
def test_a_poison_dump_fails_alone_and_is_retried(run_setup, name: str) -> None:
    settings, dumps = run_setup
    (dumps / name).write_bytes(POISON[name])
    first = run_plain(settings, TODAY)
    reports = {Path(r.source).name: r for r in first.sources}
    assert reports["good.txt"].status == "ingested" and reports["good.txt"].papers == 3
    assert first.digests_sent == 1 and first.status == "finished"
    poison = reports[name]
    if poison.status == "ingested":  # fixed at the root: the dump's papers are usable
        stored = Store(settings.db_url).papers_between(0, 10_000)
        assert all(_storable(p) for _, p in stored)
        return
    assert poison.status in {"invalid", "failed"} and poison.detail
    assert "\n" not in poison.detail
    again = run_plain(settings, TODAY)  # its fetch state was not saved: tried again
    assert {Path(r.source).name: r.status for r in again.sources}[name] == poison.status


def _refuse_titles(url: str, title: str) -> None:
    """A real database trigger that refuses one paper: a storage failure of one source
    that no parser fix prevents."""
    engine = Store(url).engine
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON papers "
                f"WHEN NEW.title = '{title}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.title = '{title}' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON papers "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )


def test_a_database_error_in_one_source_stops_only_that_source(run_setup) -> None:
    settings, dumps = run_setup
    refused_dump = api(api_item("Refused agents"), api_item("Fine agents", "2611.00002"))
    (dumps / "refused.json").write_bytes(refused_dump)
    _refuse_titles(settings.db_url, "Refused agents")
    first = run_plain(settings, TODAY)
    reports = {Path(r.source).name: r for r in first.sources}
    assert reports["good.txt"].status == "ingested" and first.digests_sent == 1
    refused = reports["refused.json"]
    assert refused.status == "failed" and "refused" in refused.detail
    assert "will retry next run" in refused.detail and "\n" not in refused.detail
    assert Store(settings.db_url).paper_count() == 3  # nothing of it half-stored
    engine = Store(settings.db_url).engine
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER refuse" + (" ON papers" if "postgres" in str(engine.url) else "")
        )
    second = run_plain(settings, TODAY)
    assert {Path(r.source).name: r.status for r in second.sources}["refused.json"] == "ingested"
    assert Store(settings.db_url).paper_count() == 5


def test_root_causes_are_fixed(tmp_path: Path) -> None:
    """Most poison is now ingested: numbers bounded, NUL and surrogates dropped, duplicates
    within a batch merged. Only a document that is not a list of papers is refused."""
    refused = {}
    for name, content in POISON.items():
        try:
            parsed = parse_dump(content, name, TODAY)
        except ValueError as exc:
            refused[name] = str(exc)
            continue
        assert parsed.papers and all(_storable(p) for p in parsed.papers), name
    assert list(refused) == ["deep-nesting.json"]
    assert "nested too deeply" in refused["deep-nesting.json"]
    shared = parse_dump(POISON["shared-id.json"], "shared-id.json", TODAY).papers
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    assert store.ingest("shared-id.json", shared).new == 1


def _storable(paper: Paper) -> bool:
    text = "".join([paper.title, paper.abstract, *(paper.authors or ()), paper.organization or ""])
    try:
        text.encode("utf-8")  # no lone surrogates
    except UnicodeEncodeError:
        return False
    return (
        not re.search("[\x00-\x1f\x7f-\x9f]", text)  # no C0 or C1 control (CSI: \x9b)
        and (paper.upvotes is None or 0 <= paper.upvotes <= MAX_COUNT)
        and (paper.author_count is None or 0 <= paper.author_count <= MAX_COUNT)
        and len(paper.arxiv_id or "") <= 64
    )


# --- hypothesis: hostile API documents and text dumps ----------------------------------------

HUGE = "__HUGE_INT__"
DEEP = "__DEEP__"
NASTY = "\x00\r\n\t\x0b\x1b\x7f\x85\x9b\u2028\u202e\ud800\udfff\ufeff=?"
hostile_text = st.text(alphabet=st.characters() | st.sampled_from(NASTY), max_size=40)
# Few distinct titles and ids, so that papers collide across items and formats.
titles = st.sampled_from(["Agents", "AGENTS!", "Tool use"]) | hostile_text
ids = (
    st.sampled_from(["2611.00001", "2611.00002", "not an id"])
    | st.sampled_from(["cs.ai/1234567", "a" * 100 + "/1234567", None, 2611.1])
    | hostile_text
)
numbers = st.one_of(
    st.just(HUGE),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -1, 2**70]),
    st.integers(),
    st.floats() | st.booleans() | st.none() | hostile_text,
)
junk = st.recursive(
    st.none() | st.booleans() | numbers | hostile_text | st.just(DEEP),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3)
    ),
    max_leaves=8,
)
urls = (
    st.sampled_from(
        [
            "https://github.com/a/b",
            "javascript:alert(1)",
            "https://x\u0000y",
            "https://" + "a" * 3000,
        ]
    )
    | hostile_text
)


@st.composite
def api_paper(draw: st.DrawFn) -> object:
    fields = {
        "id": draw(ids),
        "title": draw(titles | junk),
        "summary": draw(hostile_text | junk),
        "upvotes": draw(numbers),
        "authors": draw(st.lists(st.fixed_dictionaries({"name": hostile_text | junk}), max_size=3)),
        "ai_keywords": draw(st.lists(hostile_text | junk, max_size=3)),
        "githubRepo": draw(urls),
        "projectPage": draw(urls),
        "organization": draw(st.fixed_dictionaries({"fullname": hostile_text | junk})),
        "publishedAt": draw(st.sampled_from(["2026-11-24T00:00:00Z", "9999-99-99", ""]) | junk),
        "submittedOnDailyAt": draw(hostile_text),
    }
    keep = draw(st.sets(st.sampled_from(sorted(fields))))
    always = {"id", "title", "summary", "upvotes"}
    paper = {k: v for k, v in fields.items() if k in keep or k in always}
    return draw(st.sampled_from([{"paper": paper}, {"paper": paper}, paper, draw(junk)]))


@st.composite
def api_documents(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(api_paper(), max_size=6))
    document = draw(st.sampled_from(["list", "object", "truncated"]))
    text = json.dumps(items if document != "object" else {"error": items})
    text = text.replace(json.dumps(HUGE), "1" + "0" * 5000)
    text = text.replace(json.dumps(DEEP), "[" * 30_000 + "]" * 30_000)
    if document == "truncated":
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode("utf-8", "surrogatepass")


@st.composite
def text_dumps(draw: st.DrawFn) -> bytes:
    parts = [HEADER.rstrip("\n")]
    for _ in range(draw(st.integers(0, 5))):
        parts += [draw(titles), draw(hostile_text | st.just("About agents."))]
        if draw(st.booleans()):
            count = draw(st.sampled_from(["1", "10", str(2**31), str(2**63), "9" * 5000]))
            upvotes = draw(st.sampled_from(["", " 3", f" {2**63}", " " + "9" * 5000]))
            year = draw(st.sampled_from(["", ", 2024", ", 0000", ", 9999"]))
            parts.append(f"  • {count} authors\n·\nJun 17{year}{upvotes}")
    text = "\n\n".join(parts) + "\n"
    encoded = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # a NUL past the first 64 KB, where the binary check stops
        encoded = encoded + b"\n\npad" + b"x" * 70_000 + b"\n\nNUL\x00agents\n\nAbstract.\n"
    return encoded


# Plain items from three ids and three titles: the same paper under several ids and titles,
# with and without an id, in every order (merging must never leave two records that share
# an id or a folded title).
colliding_documents = st.lists(
    st.tuples(
        st.sampled_from(["2611.00001", "2611.00002", "not an id"]),
        st.sampled_from(["Agents", "AGENTS!", "Tool use"]),
    ),
    min_size=2,
    max_size=6,
).map(lambda pairs: api(*(api_item(title, arxiv_id) for arxiv_id, title in pairs)))


def _fetched(source: str, content: bytes) -> Fetched:
    return Fetched(source, "fetched", content, content_hash=key_hash(source + str(len(content))))


def _diff_invariants(store: Store, dumps: list[bytes]) -> None:
    with store.engine.begin() as conn:  # a fresh state for each example
        conn.execute(delete(papers))
        conn.execute(delete(fetches))
    items = [_fetched("good.txt", GOOD)]
    items += [_fetched(f"hostile-{n}", d) for n, d in enumerate(dumps)]
    reports = diff_stage(store, items, TODAY)  # never raises

    assert [r.source for r in reports] == [i.source for i in items]
    assert reports[0].status == "ingested" and reports[0].papers == len(GOOD_TITLES)
    states = store.fetch_states()
    for report, item in zip(reports, items, strict=True):
        # "invalid" only for a document that is not a dump at all (DumpError); a parser
        # crash or a value the database refuses would mean a root cause is back
        assert report.status in {"ingested", "invalid"}, report.detail
        assert "cannot parse this dump" not in report.detail
        if report.status == "ingested":
            assert states[item.source].content_hash == item.content_hash
        else:  # reported with a reason, and due for a retry
            assert item.source not in states
            assert report.detail and "\n" not in report.detail
    with store.engine.connect() as conn:
        rows = conn.execute(select(papers.c.key_hash, papers.c.arxiv_id, papers.c.data)).all()
    stored = [Paper.from_json(json.loads(r.data)) for r in rows]
    assert all(_storable(p) and p.title for p in stored)
    for title in GOOD_TITLES:  # everything the good source had is there
        assert key_hash(Paper(title, "").key) in {r.key_hash for r in rows}
    # the rest of the run: whatever was stored can be ranked and rendered into a digest
    # whose headers and parts are what paperpost writes
    items = rank(stored, Profile((Interest("agents"), Interest("tool use")), max_items=50))
    assert len(items) >= len(GOOD_TITLES)
    message = RENDERER.render(Reader("ann@example.org", "Ann", ("agents",)), items, EDITION, 0, 9)
    assert_only_our_headers_and_bodies(message.data, "ann@example.org")


SOURCES = st.lists(api_documents() | text_dumps() | colliding_documents, min_size=1, max_size=3)


@settings(
    max_examples=500 if FULL_TESTS else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(dumps=SOURCES)
def test_hostile_sources_never_stop_the_others(any_db_url: str, dumps: list[bytes]) -> None:
    _diff_invariants(Store(any_db_url), dumps)


def test_a_poison_api_day_over_http_is_retried_after_later_days(
    run_setup, httpserver: HTTPServer
) -> None:
    settings, dumps = run_setup
    (dumps / "good.txt").unlink()
    days = {
        "2026-11-23": POISON["deep-nesting.json"],
        "2026-11-24": api(api_item("Agents on Tuesday", "2611.00024")),
        "2026-11-25": api(api_item("Agents on Wednesday", "2611.00025")),
    }

    def handler(request: Request) -> Response:
        day = request.args["date"]
        body = days[day] if request.args.get("p", "0") == "0" else b"[]"
        return Response(body, headers={"ETag": '"' + "e" * 1000 + '"'})  # over the column size

    httpserver.expect_request("/api/daily_papers").respond_with_handler(handler)
    settings = settings.model_copy(update={"sources": [httpserver.url_for("/api/daily_papers")]})
    first = run_plain(settings, TODAY)
    status = {r.source.rsplit("date=", 1)[1][:10]: r for r in first.sources}
    assert status["2026-11-23"].status == "invalid"
    assert "nested too deeply" in status["2026-11-23"].detail
    assert status["2026-11-24"].status == status["2026-11-25"].status == "ingested"
    assert first.digests_sent == 1
    days["2026-11-23"] = api(api_item("Agents on Monday", "2611.00023"))  # the API is fixed
    second = run_plain(settings, TODAY)
    again = {r.source.rsplit("date=", 1)[1][:10]: r.status for r in second.sources}
    assert again["2026-11-23"] == "ingested"  # tried again although later days succeeded
    assert Store(settings.db_url).paper_count() == 3


def test_papers_added_to_a_fetched_day_later_still_arrive(
    run_setup, httpserver: HTTPServer
) -> None:
    """Before: the API range resumed the day after the latest fetched day, so a day fetched
    while the listing was still filling (a 07:00 run) was never fetched again and the papers
    added to it later were lost. Now the latest fetched day is fetched again."""
    from datetime import timedelta

    settings, dumps = run_setup
    (dumps / "good.txt").unlink()
    days = {TODAY.isoformat(): api(api_item("Agents in the morning", "2611.00031"))}

    def handler(request: Request) -> Response:
        page = request.args.get("p", "0")
        return Response(days.get(request.args["date"], b"[]") if page == "0" else b"[]")

    httpserver.expect_request("/api/daily_papers").respond_with_handler(handler)
    settings = settings.model_copy(update={"sources": [httpserver.url_for("/api/daily_papers")]})
    run_plain(settings, TODAY)
    assert Store(settings.db_url).paper_count() == 1
    days[TODAY.isoformat()] = api(  # the listing fills up after the morning run
        api_item("Agents in the morning", "2611.00031"),
        api_item("Agents in the afternoon", "2611.00032"),
    )
    tomorrow = TODAY + timedelta(days=1)
    run_plain(settings, tomorrow)
    assert Store(settings.db_url).paper_count() == 2
    fetched = [r.source.rsplit("date=", 1)[1][:10] for r in run_plain(settings, tomorrow).sources]
    assert fetched == [tomorrow.isoformat()]  # once today is fetched, it is the one fetched again
