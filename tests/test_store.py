from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import API_DAYS, CAPTURED, DUMPS, EXAMPLE_API_DAY, EXAMPLE_DUMP
from paperpost.dumps import parse_dump
from paperpost.store import Store


def ingest_file(store: Store, path) -> tuple[int, int]:
    parsed = parse_dump(path.read_bytes(), str(path), CAPTURED)
    counts = store.ingest(str(path), parsed.papers)
    return counts.seen, counts.new


@pytest.fixture
def store(any_db_url: str) -> Store:
    return Store(any_db_url)


@pytest.mark.shared
def test_shared_dumps_in_order_report_only_unseen_papers(store: Store) -> None:
    news = [ingest_file(store, path)[1] for path in DUMPS]
    assert news[0] == 103
    assert all(n < seen for n, seen in zip(news[1:], (92, 93, 119), strict=True))
    assert sum(news) == store.paper_count() == 307
    # feeding them again finds nothing new
    assert [ingest_file(store, path)[1] for path in DUMPS] == [0, 0, 0, 0]


@pytest.mark.shared
def test_api_days_then_text_dumps_give_no_duplicates(store: Store) -> None:
    api_new = sum(ingest_file(store, path)[1] for path in API_DAYS)
    text_new = sum(ingest_file(store, path)[1] for path in DUMPS)
    assert api_new == 61
    assert text_new == 307
    assert store.paper_count() == 368


def test_changed_upvotes_or_relisting_is_not_new(store: Store) -> None:
    parsed = parse_dump(EXAMPLE_API_DAY.read_bytes(), "day", CAPTURED)
    store.ingest("day", parsed.papers)
    bumped = [replace(p, upvotes=(p.upvotes or 0) + 50) for p in parsed.papers]
    assert store.ingest("day-again", bumped).new == 0
    rows = store.papers_between(0, 10_000)
    assert [p.upvotes for _, p in rows] == [p.upvotes for p in bumped]


def test_title_only_paper_gains_its_arxiv_id_without_becoming_new(store: Store) -> None:
    parsed = parse_dump(EXAMPLE_API_DAY.read_bytes(), "day", CAPTURED).papers[:3]
    store.ingest("text", [replace(p, arxiv_id=None, title=p.title.upper() + " ") for p in parsed])
    assert store.ingest("api", parsed).new == 0
    stored = [p for _, p in store.papers_between(0, 100)]
    assert [p.arxiv_id for p in stored] == [p.arxiv_id for p in parsed]


def test_a_crashed_run_leaves_its_papers_new(store: Store) -> None:
    first = store.start_run()
    seen, new = ingest_file(store, EXAMPLE_DUMP)
    assert seen == new > 0
    plan = store.plan_run(first)
    assert (plan.low_water, plan.high_water) == (0, new)
    store.finish_run(first, "crashed", {})
    second = store.start_run()
    assert store.plan_run(second).low_water == 0  # the crashed run's papers are still news
    store.finish_run(second, "finished", {})
    third = store.start_run()
    assert store.plan_run(third).low_water == new


def test_lease_keeps_a_second_run_out(store: Store) -> None:
    from datetime import timedelta

    assert store.acquire_lock("run", "a", timedelta(minutes=5))
    assert not store.acquire_lock("run", "b", timedelta(minutes=5))
    store.release_lock("run", "a")
    assert store.acquire_lock("run", "b", timedelta(minutes=5))
    assert store.acquire_lock("expired", "a", timedelta(seconds=-1))
    assert store.acquire_lock("expired", "b", timedelta(minutes=5))
