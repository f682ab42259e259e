from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import API_DAYS, CAPTURED, DUMPS, EXAMPLE_API_DAY, EXAMPLE_DUMP
from paperpost.dumps import parse_dump
from paperpost.models import Paper
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


ABSTRACT = (
    "We study language model agents that plan several tool calls ahead, and show on three "
    "benchmarks that planning first makes them both cheaper and more accurate."
)


def test_a_reworded_title_is_the_same_paper_by_its_abstract(store: Store) -> None:
    store.ingest("t1", [Paper("LLM Agents that Plan", ABSTRACT)])
    ((seq, first),) = store.papers_between(0, 100)
    reworded = Paper("LLM Agents That Plan Ahead", " " + ABSTRACT.upper() + " ", upvotes=7)
    assert store.ingest("t2", [reworded]).new == 0
    ((_, kept),) = store.papers_between(0, 100)
    # same identity (title, id, vote links), newer facts
    assert (kept.title, kept.id, kept.upvotes) == (first.title, first.id, 7)
    # the API's report with the arXiv id and its own title is that paper too
    api = Paper("Agents That Plan Ahead", ABSTRACT, arxiv_id="2611.01234")
    assert store.ingest("api", [api]).new == 0
    ((same, known),) = store.papers_between(0, 100)
    assert (same, known.arxiv_id, known.title) == (seq, "2611.01234", api.title)
    # ... and a text dump after it, with yet another title
    assert store.ingest("t3", [Paper("Plan-Ahead Agents", ABSTRACT)]).new == 0
    assert store.paper_count() == 1


def test_abstracts_never_merge_two_arxiv_papers_or_short_placeholders(store: Store) -> None:
    store.ingest("api", [Paper("One", ABSTRACT, arxiv_id="2611.00001")])
    assert store.ingest("api2", [Paper("Two", ABSTRACT, arxiv_id="2611.00002")]).new == 1
    store.ingest("t", [Paper("Three", "No abstract available.")])
    assert store.ingest("t2", [Paper("Four", "No abstract available.")]).new == 1
    # one dump listing a paper twice under two titles: one paper
    twice = [Paper("Five", ABSTRACT + " Five."), Paper("Five, reworded", ABSTRACT + " Five.")]
    assert store.ingest("t3", twice).new == 1
    assert store.paper_count() == 5


OTHER_ABSTRACT = (
    "We quantise the key-value cache of large language models to two bits per value and "
    "recover the accuracy lost with a small calibration set, halving serving memory."
)


def test_two_arxiv_ids_with_one_title_stay_two_papers(store: Store) -> None:
    first = Paper("Efficient LLM Inference", ABSTRACT, arxiv_id="2611.11111", upvotes=1)
    second = Paper("Efficient LLM Inference", OTHER_ABSTRACT, arxiv_id="2611.22222", upvotes=2)
    assert store.ingest("day1", [first]).new == 1
    assert store.ingest("day2", [second]).new == 1
    stored = {p.arxiv_id: p for _, p in store.papers_between(0, 100)}
    assert stored["2611.11111"].abstract == ABSTRACT
    assert stored["2611.22222"].abstract == OTHER_ABSTRACT
    # both again, and the listing's text-only copy of the second: nothing new, nothing swapped
    listed = Paper("Efficient LLM inference", OTHER_ABSTRACT, upvotes=9)
    assert store.ingest("day3", [first, second, listed]).new == 0
    stored = {p.arxiv_id: p for _, p in store.papers_between(0, 100)}
    assert [stored[i].abstract for i in ("2611.11111", "2611.22222")] == [
        ABSTRACT,
        OTHER_ABSTRACT,
    ]
    assert stored["2611.22222"].upvotes == 9
    assert stored["2611.11111"].upvotes == 1
    # in one document (one API day) too
    assert (
        store.ingest(
            "day4", [replace(first, arxiv_id="2611.33333"), replace(second, arxiv_id="2611.44444")]
        ).new
        == 2
    )
    assert store.paper_count() == 4


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


def test_a_group_claim_takes_new_and_retried_digests_and_nothing_done_or_taken(
    store: Store,
) -> None:
    """One claim_group over digests in every ledger state: each gets the claim the
    contract gives it, in order, and the rows end as the claims say."""
    from paperpost.store import Settlement, Wanted

    def wanted(name: str) -> Wanted:
        return Wanted(f"{name}@example.org", "0-9", 0, 9, f"<{name}@example.org>")

    states = ["sent", "failed", "ambiguous", "sending", "data-sent", "retry", "released"]
    for name in states:
        store.claim_group([wanted(name)], run_id=1)
    store.settle_group(
        [Settlement(f"{n}@example.org", "0-9", n, 9) for n in states if n != "sending"]
    )
    store.mark_data_sent("data-sent@example.org", "0-9")
    group = [wanted(n) for n in ["fresh", *states, "fresh2"]]
    claims = store.claim_group(group, run_id=2)
    assert [(c.proceed, c.status) for c in claims] == [
        (True, "new"),
        (False, "sent"),
        (False, "failed"),
        (False, "ambiguous"),
        (False, "sending"),
        (False, "data-sent"),
        (True, "retry"),
        (True, "released"),
        (True, "new"),
    ]
    status = {w.address: store.delivery_status(w.address)[0][1] for w in group}
    assert status["retry@example.org"] == status["released@example.org"] == "sending"
    assert status["fresh@example.org"] == status["fresh2@example.org"] == "sending"
    assert status["sent@example.org"] == "sent"
    assert status["data-sent@example.org"] == "data-sent"
    # a second claim of the same group takes nothing: every row is now taken or done
    assert not any(c.proceed for c in store.claim_group(group, run_id=3))


def test_a_group_settle_records_in_order_and_moves_cursors_forward_only(store: Store) -> None:
    from paperpost.store import Settlement, Wanted

    people = [f"r{i}@example.org" for i in range(5)]
    store.advance_cursors([(people[0], 50), (people[1], 3)])  # r0 is already past 9
    store.advance_cursors([(people[1], 2), (people[2], 0)])  # never back; r2 is new
    assert store.cursors(people[:3]) == {
        people[0]: (50, None),
        people[1]: (3, None),
        people[2]: (0, None),
    }
    store.claim_group([Wanted(p, "0-9", 0, 9, f"<{p}>") for p in people], run_id=1)
    store.settle_group(
        [
            Settlement(people[0], "0-9", "sent", 9),
            Settlement(people[1], "0-9", "ambiguous", 9, "no reply"),
            Settlement(people[2], "0-9", "failed", 9, "550"),
            Settlement(people[3], "0-9", "failed", 9, "550"),
            Settlement(people[3], "0-9", "retry", 9, "server-wide"),  # the later one wins
        ],
        data_sent=(people[4], "0-9"),
    )
    assert [store.delivery_status(p)[0][1] for p in people] == [
        "sent",
        "ambiguous",
        "failed",
        "retry",
        "data-sent",
    ]
    cursors = store.cursors(people)
    assert cursors[people[0]][0] == 50  # not moved back to 9
    assert cursors[people[1]][0] == 9 and cursors[people[1]][1] is not None
    assert cursors[people[2]][0] == 0  # failed: still owed these papers
    assert people[3] not in cursors and people[4] not in cursors


def test_latest_papers_are_the_newest_up_to_a_sequence_number(store: Store) -> None:
    store.ingest("day", [Paper(f"Paper number {n}", f"Abstract {n} " * 5) for n in range(6)])
    titles = [p.title for p in store.latest_papers(3)]
    assert titles == ["Paper number 3", "Paper number 4", "Paper number 5"]
    assert [p.title for p in store.latest_papers(2, high=3)] == ["Paper number 1", "Paper number 2"]
    assert len(store.latest_papers(100)) == 6
