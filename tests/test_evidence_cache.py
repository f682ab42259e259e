"""Evidence computed once per paper and topic, and the cache that keeps it across runs."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update

from paperpost import rank as rank_module
from paperpost import synthetic
from paperpost.models import Paper
from paperpost.pipeline import _run_cache, profile_of, rank_stage
from paperpost.rank import (
    DUPLICATE_JACCARD,
    STOPWORDS,
    Background,
    Interest,
    MatchCache,
    Profile,
    Ranked,
    Record,
    _near_duplicates,
    rank_many,
    ranker_version,
    tokens,
    vocabulary,
)
from paperpost.store import RunPlan, Store, _evidence_checksum, paper_evidence
from paperpost.subscribers import iter_subscribers

TITLE_WORDS = st.sampled_from(
    "speculative decoding draft model large language models revisited sparse attention "
    "video diffusion the of for a benchmark agents".split()
)


def brute_force_duplicates(papers: list[Paper]) -> dict[int, set[int]]:
    """Every pair compared: what the prefix-filtered join must equal."""
    sets = [frozenset(tokens(p.title)) - STOPWORDS for p in papers]
    pairs: dict[int, set[int]] = {}
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            if i != j and a and b and len(a & b) / len(a | b) >= DUPLICATE_JACCARD:
                pairs.setdefault(i, set()).add(j)
    return pairs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(TITLE_WORDS, min_size=0, max_size=9).map(" ".join), max_size=40))
def test_near_duplicate_join_finds_exactly_the_similar_pairs(titles: list[str]) -> None:
    papers = [Paper(title=t, abstract="") for t in titles]
    assert _near_duplicates(papers) == brute_force_duplicates(papers)


# --- cached evidence ranks exactly as freshly computed evidence --------------------------

VOCABULARY_TAGS = sorted({topic.id for topic in vocabulary().values()})
COMPOSED_TAGS = [
    "protein-design",
    "gui-agents",
    "long-video-understanding",
    "efficient-llm-serving",
    "robot-learning-from-video",
    "quantization-for-diffusion",
    "zyxt-unheard-word",
    "graph neural networks",
]
tags = st.sampled_from(VOCABULARY_TAGS) | st.sampled_from(COMPOSED_TAGS)
interests = st.builds(
    Interest,
    tags,
    st.sampled_from([1.0, 2.0]),
    st.sampled_from([(), ("draft model",), ("kv cache", "robot arm")]),
)
profiles = st.builds(
    Profile,
    st.lists(interests, min_size=1, max_size=4).map(tuple),
    st.lists(tags, max_size=1).map(tuple),
    st.sampled_from([0.2, 0.35]),
    st.sampled_from([3, 10]),
)


def ranked(results: list[list[Ranked]]) -> list[list[tuple]]:
    return [[(r.paper, r.score, r.matched, r.why, r.evidence) for r in rs] for rs in results]


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    first=st.lists(profiles, min_size=1, max_size=6),
    second=st.lists(profiles, min_size=1, max_size=6),
    overlap=st.integers(0, 40),
)
def test_ranks_from_stored_records_equal_fresh_ones(seed, first, second, overlap) -> None:
    """A run whose records were stored by an earlier run (other papers, other tags, so
    some records are partial) ranks exactly as a run computing everything afresh."""
    papers = synthetic.papers(40, seed, synthetic.vocabulary_themes(), prefix="p ")
    background = Background.of(papers)
    earlier = MatchCache()
    rank_many(papers[:overlap], first, background=background, cache=earlier)
    stored = {key: Record.decode(record.encode()) for key, record in earlier.records.items()}
    fresh = rank_many(papers, second, background=background)
    cache = MatchCache(stored)
    assert ranked(rank_many(papers, second, background=background, cache=cache)) == ranked(fresh)
    cache.take_changed()
    # the records, now extended, hold everything these readers need: nothing is recomputed
    again = MatchCache({k: Record.decode(r.encode()) for k, r in cache.records.items()})
    assert ranked(rank_many(papers, second, background=background, cache=again)) == ranked(fresh)
    assert again.take_changed() == {}


@settings(max_examples=6, deadline=None)
@example(  # found by hypothesis: papers tied at a score cut went by the call's depth
    seed=1,
    first=[Profile((Interest("3d-vision"),), (), 0.2, 3)],
    second=[
        Profile((Interest("agents"),), (), 0.2, 3),
        Profile((Interest("3d-vision"),), (), 0.2, 10),
    ],
    block=1,
    min_score=0.0,
)
@given(
    seed=st.integers(0, 10_000),
    first=st.lists(profiles, min_size=1, max_size=4),
    second=st.lists(profiles, min_size=1, max_size=4),
    block=st.integers(1, 3),
    min_score=st.sampled_from([0.0, 0.35]),
)
def test_readers_rank_alike_alone_in_settings_blocks_and_later_batches(
    seed, first, second, block, min_score
) -> None:
    """However readers are grouped (the same settings repeated, blocks of any size, a later
    batch reusing the readings an earlier one scored), each gets what ranking them alone,
    with nothing cached, gives."""
    papers = synthetic.papers(24, seed, synthetic.vocabulary_themes(), prefix="p ")
    background = Background.of(papers)
    second = [*second, *second[:2], replace(second[0], min_score=min_score)]
    cache = MatchCache()
    rank_many(papers, first, background=background, cache=cache)
    cells = rank_module.BLOCK_CELLS
    rank_module.BLOCK_CELLS = block * len(papers)  # `block` settings per block
    try:
        blocked = rank_many(papers, second, background=background, cache=cache)
    finally:
        rank_module.BLOCK_CELLS = cells
    alone = [rank_many(papers, [reader], background=background)[0] for reader in second]
    assert ranked(blocked) == ranked(alone)


# --- the run path: records stored in the database, corrupt or stale ones never used ------

READERS = {
    "vocab.yaml": "email: v@example.org\ntags: [speculative-decoding, llm-inference]\n",
    "composed.yaml": "email: c@example.org\ntags: [quantization-for-diffusion, gui-agents]\n",
    "unknown.yaml": (
        "email: u@example.org\ntags:\n  - tag: zyxt-unheard-word\n  - tag: protein-design\n"
        "    keywords: [draft model]\nexclude: [reasoning]\nmin_score: 0.2\n"
    ),
}


def rank_window(url: str, folder: Path, run_id: int) -> list[list[tuple]]:
    """The rank stage of a run over every stored paper, as a fresh process would run it."""
    _run_cache.cache_clear()
    store = Store(url)
    plan = RunPlan(run_id, 0, store.paper_count())
    batch = list(iter_subscribers(folder, []))
    jobs = rank_stage(store, plan, batch, date(2026, 11, 25), send_empty=True).jobs
    return [[(r.paper.title, r.score, r.why, r.evidence) for r in job.items] for job in jobs]


def stored(url: str) -> dict[tuple[str, str], tuple[str, str]]:
    with Store(url).engine.connect() as conn:
        rows = conn.execute(select(paper_evidence))
        return {(r.version, r.text_key): (r.data, r.checksum) for r in rows}


def test_stored_records_corrupt_or_stale_never_change_ranks(any_db_url: str, tmp_path) -> None:
    folder = tmp_path / "subscribers"
    folder.mkdir()
    for name, text in READERS.items():
        (folder / name).write_text(text)
    store = Store(any_db_url)
    papers = synthetic.papers(60, 7, synthetic.vocabulary_themes(), prefix="p ")
    store.ingest("generated", papers)
    fresh = rank_many(papers, [profile_of(entry) for entry in iter_subscribers(folder, [])])
    expected = [[(r.paper.title, r.score, r.why, r.evidence) for r in rs] for rs in fresh]
    assert any(expected) and not all(expected[0] == e for e in expected[1:])

    assert rank_window(any_db_url, folder, 1) == expected  # cold: computes and stores
    rows = stored(any_db_url)
    version = ranker_version()
    assert {v for v, _ in rows} == {version} and len(rows) == len(papers)
    assert rank_window(any_db_url, folder, 2) == expected  # warm: reads them back

    keys = sorted(k for _, k in rows)
    wrong = Record({"speculative": 9}, {}).encode()  # would change ranks if it were read
    with store.engine.begin() as conn:
        for i, key in enumerate(keys):
            if i % 3 == 0:  # changed data that still reads as a record: the checksum tells
                values = {"data": wrong}
            elif i % 3 == 1:  # a checksum that matches, over data that is not a record
                data = '{"counts": "x:0", "found": []}'
                values = {"data": data, "checksum": _evidence_checksum(version, key, data)}
            else:
                continue
            conn.execute(
                update(paper_evidence)
                .where(paper_evidence.c.version == version, paper_evidence.c.text_key == key)
                .values(**values)
            )
        for key in keys:  # another ranker version's rows (stale vocabulary or code)
            conn.execute(
                insert(paper_evidence).values(
                    version="0" * 16,
                    text_key=key,
                    data=wrong,
                    checksum=_evidence_checksum("0" * 16, key, wrong),
                )
            )
    assert rank_window(any_db_url, folder, 3) == expected
    repaired = stored(any_db_url)
    assert {v for v, _ in repaired} == {version}  # the stale rows are gone
    assert all(Record.decode(data) for data, _ in repaired.values())
