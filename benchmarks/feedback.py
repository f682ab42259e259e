"""Reader feedback: a simulated reader study, ranking speed with votes, the vote endpoint.

    python benchmarks/feedback.py [study] [speed] [endpoint]     (default: all three)
    python benchmarks/feedback.py study --relevance FILE.yaml [--tags TAG[=WORD],...] [--semantic]
    python benchmarks/feedback.py all           (every spent set, term and semantic profiles)
    python benchmarks/feedback.py fewer         (readers who said only "fewer": demotion's bound)
    python benchmarks/feedback.py cv [--grid STRONG_TAG=0.7,1.0 ...]
    python benchmarks/feedback.py endpoint --postgres postgresql+psycopg://.../scratch_db

study     For each judged tag a reader starts from a deliberately vague one-word tag. With
          no flags: the tags of data/relevance.yaml and the words in VAGUE below (fixed
          before any measurement), split into DEV tags (the constants of paperpost/profile.py
          were chosen on them) and HELD-OUT tags (never tuned on). With --relevance, any
          file in the same format (tag -> grade -> titles of ../shared papers) and its tags
          (or those --tags names); a tag's vague word is the one after "=", else the tag's
          word most papers of ../shared use (a one-word tag is its own vague word).
          The papers of ../shared arrive day by day in the order of the dumps (dumps/ then
          hf_api/, each day only what earlier days had not shown). On the first VOTE_DAYS
          days the reader votes on their top 5: "more" on papers judged relevant (grade > 0),
          "fewer" on papers judged 0, until their budget of 0, 3, 5 or 10 votes is spent.
          NDCG@10 is then measured on the later days' papers ranked together, against the
          same reader with no feedback (budget 0). Prints the table per tag and the means.
          --semantic: the profile compares papers by the semantic extra's sentence embeddings.
all       The study on every spent judged set (benchmarks/data), once with the term-vector
          profile and once with the semantic one: per set the means, delta@5 and the tags
          worse than with no votes (and by how much); per tag delta@5 in the JSON.
fewer     The spent sets' readers who cast only "fewer" votes (3, 5, 10): NDCG@10 without votes,
          with the code's demotion, and the most any demotion of the papers close to the
          rejected ones could reach (an oracle threshold per reader; the best single one).
cv        The semantic profile's constants by cross-validation: every combination of the
          grid on every spent set; for each fold (relevance + full, dev, round1, blind2,
          blind3, blind4, blind5, blind6) the combination that makes the fewest readers of the other
          folds worse than without votes, then gains most there, measured on that fold.
speed     10,000 readers x 300 papers, each reader with 1-4 tags and 20 votes on papers of a
          2,000-paper history, in paired rounds: ranking with tags only, then with tags and
          votes (profiles built + ranking), with the term profile and the semantic one.
endpoint  `paperpost web` (uvicorn) on 127.0.0.1 with a fresh SQLite file (or, with
          --postgres, the given PostgreSQL database, whose tables are dropped and made
          afresh): 1,000 distinct votes from 50 concurrent clients, each recorded exactly
          once; then tampered, expired, cross-address and never-sent tokens, each expected to
          get 400 and record nothing.
Writes results/feedback_*.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rank_quality import SHARED, judgments, shared_papers
from rank_speed import profiles as tag_profiles

import paperpost.profile as profile_module
from common import RESULTS, report
from paperpost.dumps import parse_dump
from paperpost.models import Paper
from paperpost.profile import Taste, nudge
from paperpost.rank import (
    STOPWORDS,
    Background,
    Interest,
    MatchCache,
    Profile,
    rank_many,
    tokens,
)
from paperpost.semantic import DIM, Vectors
from paperpost.synthetic import papers as synthetic_papers

# One broad word per judged tag, chosen before measuring: none of them names the tag's
# own topic in the vocabulary.
VAGUE = {
    "speculative-decoding": "decoding",
    "text-to-speech": "speech",
    "diffusion": "generation",
    "mixture-of-experts": "experts",
    "bayesian-inference": "probabilistic",
    "agents": "tools",
    "quantization": "efficient",
    "llm-inference": "inference",
    "reasoning": "thinking",
    "retrieval": "knowledge",
    "rlhf": "feedback",
    "robotics": "control",
    "long-context": "context",
    "video-generation": "video",
}
DEV = list(VAGUE)[:7]
HELD_OUT = list(VAGUE)[7:]
BUDGETS = (0, 3, 5, 10)
VOTE_DAYS = 3
TOP = 5
K = 10


def days() -> list[tuple[str, list[Paper]]]:
    """The shared papers as they arrive: each file in order, only what is new that day."""
    seen: set[str] = set()
    out = []
    files = sorted((SHARED / "dumps").glob("*.txt")) + sorted((SHARED / "hf_api").glob("*.json"))
    for path in files:
        parsed = parse_dump(path.read_bytes(), str(path), date(2026, 11, 25)).papers
        new = []
        for paper in parsed:
            if paper.key not in seen:
                seen.add(paper.key)
                new.append(paper)
        out.append((path.name, new))
    return out


def ndcg(ranked: list[str], rel: dict[str, int], pool: set[str]) -> float:
    dcg = sum((2 ** rel.get(pid, 0) - 1) / math.log2(i + 2) for i, pid in enumerate(ranked[:K]))
    ideal = sorted((g for pid, g in rel.items() if pid in pool), reverse=True)[:K]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else float("nan")


def _context(arrivals, contexts: dict, day: int) -> tuple[Background, MatchCache]:
    """The history and ranker cache as of ``day`` (kept in ``contexts`` across readers: the
    tag scores of a day do not depend on the votes)."""
    if day not in contexts:
        seen = [p for _, papers in arrivals[: day + 1] for p in papers]
        contexts[day] = (Background.of(seen), MatchCache())
    return contexts[day]


def votes(
    vague: str,
    budget: int,
    arrivals,
    truth: dict[str, int],
    vectors: Vectors | None = None,
    contexts: dict | None = None,
) -> Taste:
    """What one simulated reader of tag ``vague`` votes on the first VOTE_DAYS days: "more"
    on the judged-relevant papers of their top 5, "fewer" on the others, ``budget`` in all
    (each day ranked with the votes cast so far)."""
    contexts = {} if contexts is None else contexts
    profile = Profile((Interest(vague),), max_items=K)
    liked: list[Paper] = []
    disliked: list[Paper] = []
    for day, (_, papers) in enumerate(arrivals[:VOTE_DAYS]):
        history, cache = _context(arrivals, contexts, day)
        taught = nudge(papers, [Taste(tuple(liked), tuple(disliked))], history, vectors)
        ranked = rank_many(papers, [profile], taught, history, cache)
        for item in ranked[0][:TOP]:
            if len(liked) + len(disliked) >= budget:
                break
            if truth.get(item.paper.key, 0) > 0:
                liked.append(item.paper)
            else:
                disliked.append(item.paper)
    return Taste(tuple(liked), tuple(disliked))


def reader(
    vague: str,
    budget: int,
    arrivals,
    truth: dict[str, int],
    vectors: Vectors | None = None,
    contexts: dict | None = None,
) -> tuple[float, int]:
    """One simulated reader of tag ``vague``: (NDCG@10 on the later days, votes cast).

    As in the pipeline, word statistics (the ranker's and the profile's) come from every
    paper seen so far, and judgments name papers by their key (the folded title). With
    ``vectors`` (the semantic extra) the profile compares papers by their embeddings.
    ``contexts`` keeps each day's history and ranker cache across readers (same results,
    faster).
    """
    contexts = {} if contexts is None else contexts
    taste = votes(vague, budget, arrivals, truth, vectors, contexts)
    profile = Profile((Interest(vague),), max_items=K)
    later = [p for _, papers in arrivals[VOTE_DAYS:] for p in papers]
    history, cache = _context(arrivals, contexts, len(arrivals) - 1)
    ranked = rank_many(later, [profile], nudge(later, [taste], history, vectors), history, cache)
    keys = [item.paper.key for item in ranked[0]]
    return ndcg(keys, truth, {p.key for p in later}), len(taste.liked) + len(taste.disliked)


def broadest_word(tag: str, papers: list[Paper]) -> str:
    """The word of ``tag`` that most papers use (its vague start when none is given)."""
    words = [w for w in re.findall(r"[a-z0-9]+", tag.lower()) if w not in STOPWORDS]
    background = Background.of(papers)
    return max(words, key=lambda w: (background.df.get(tokens(w)[0], 0), -words.index(w)))


def study(
    relevance: Path | None = None, wanted: list[str] | None = None, semantic: bool = False
) -> None:
    arrivals = days()
    everything = shared_papers()
    truth = judgments(everything, str(relevance.resolve()) if relevance else "relevance.yaml")
    if relevance is None:
        vague, groups = dict(VAGUE), {"dev": DEV, "held-out": HELD_OUT}
    else:
        vague = {}
        for item in wanted or list(truth):
            tag, _, word = item.partition("=")
            if tag not in truth:
                raise SystemExit(f"{relevance}: no judgments for tag {tag!r}")
            vague[tag] = word or broadest_word(tag, everything)
        groups = {relevance.name: list(vague)}
    vectors = _vectors(arrivals) if semantic else None
    later = {p.key for _, papers in arrivals[VOTE_DAYS:] for p in papers}
    rows: list[list[object]] = []
    results: dict[str, dict[int, float]] = {}
    skipped = []
    contexts: dict = {}
    for group, tags in groups.items():
        for tag in tags:
            if not any(truth[tag].get(pid, 0) > 0 for pid in later):
                skipped.append(tag)  # nothing relevant arrives later: NDCG undefined
                continue
            results[tag] = {}
            cast = []
            for budget in BUDGETS:
                score, votes = reader(vague[tag], budget, arrivals, truth[tag], vectors, contexts)
                results[tag][budget] = score
                cast.append(votes)
            scores = [results[tag][b] for b in BUDGETS]
            votes_cast = "/".join(map(str, cast[1:]))
            rows.append([tag, group, vague[tag], *scores, scores[2] - scores[0], votes_cast])
    for group, tags in groups.items():
        chosen = [t for t in tags if t in results]
        if not chosen:
            continue
        means = [statistics.fmean(results[t][b] for t in chosen) for b in BUDGETS]
        worse = sum(1 for t in chosen if any(results[t][b] < results[t][0] - 1e-9 for b in BUDGETS))
        delta = means[2] - means[0]
        rows.append([f"MEAN {group}", f"{len(chosen)} tags", f"{worse} worse", *means, delta, ""])
    headers = ["tag", "set", "vague tag", *(f"nDCG@10 {b} votes" for b in BUDGETS)]
    headers += ["delta@5", "votes cast (3/5/10)"]
    if skipped:
        print("skipped (nothing judged relevant arrives on the later days):", ", ".join(skipped))
    name = "feedback_study" + (f"_{relevance.stem}" if relevance else "")
    report(
        name + ("_semantic" if semantic else ""),
        headers,
        rows,
        {
            "vote_days": VOTE_DAYS,
            "top": TOP,
            "k": K,
            "days": [name for name, _ in arrivals],
            "relevance": str(relevance or "data/relevance.yaml"),
            "vague": vague,
            "skipped": skipped,
            "semantic": semantic,
        },
    )


def _vectors(arrivals) -> Vectors:
    """The semantic extra's vectors of every paper of the study: computed once, then kept in
    results/ (per model and text, as the database keeps them) for the next study."""
    from paperpost.semantic import MODEL_KEY, decode_vector

    papers = [p for _, day in arrivals for p in day]
    kept = RESULTS / f"feedback_vectors_{MODEL_KEY}.json"
    stored = json.loads(kept.read_text()) if kept.exists() else {}
    vectors = Vectors({k: decode_vector(bytes.fromhex(v)) for k, v in stored.items()})
    start = time.process_time()
    vectors.of(papers)
    changed = vectors.take_changed()
    if changed:
        print(f"embedded {len(changed)} papers in {time.process_time() - start:.1f} CPU s")
        stored.update({k: v.hex() for k, v in changed.items()})
        RESULTS.mkdir(exist_ok=True)
        kept.write_text(json.dumps(stored))
    return vectors


# Every judged set (all spent: development sets now). relevance.yaml keeps its two halves
# and its words; relevance_full.yaml is the same 14 tags judged in full, with the same words.
SPENT = {
    "relevance DEV": ("relevance.yaml", {t: VAGUE[t] for t in DEV}),
    "relevance HELD-OUT": ("relevance.yaml", {t: VAGUE[t] for t in HELD_OUT}),
    "full": ("relevance_full.yaml", dict(VAGUE)),
    "dev": ("relevance_dev.yaml", None),
    "round1": ("relevance_round1.yaml", None),
    "blind2": ("relevance_blind2.yaml", None),
    "blind3": ("relevance_blind3.yaml", None),
    "blind4": ("relevance_blind4.yaml", None),
    "blind5": ("relevance_blind5.yaml", None),
    "blind6": ("relevance_blind6.yaml", None),
}
# cross-validation folds: a setting is chosen on the other folds' readers (relevance.yaml
# and relevance_full.yaml share their tags, so they are held out together)
FOLDS = {
    "relevance + full": ["relevance DEV", "relevance HELD-OUT", "full"],
    "dev": ["dev"],
    "round1": ["round1"],
    "blind2": ["blind2"],
    "blind3": ["blind3"],
    "blind4": ["blind4"],
    "blind5": ["blind5"],
    "blind6": ["blind6"],
}
Results = dict[tuple[str, str], dict[int, float]]  # (set, tag) -> budget -> NDCG@10


def spent_readers(arrivals) -> list[tuple[str, str, str, dict[str, int]]]:
    """(set, tag, vague word, judgments) of every reader of the spent sets with something
    judged relevant on the later days."""
    everything = shared_papers()
    later = {p.key for _, papers in arrivals[VOTE_DAYS:] for p in papers}
    out = []
    for name, (file, words) in SPENT.items():
        truth = judgments(everything, file)
        for tag in words or truth:
            if any(truth[tag].get(pid, 0) > 0 for pid in later):
                word = words[tag] if words else broadest_word(tag, everything)
                out.append((name, tag, word, truth[tag]))
    return out


def measure(readers, arrivals, vectors: Vectors | None, contexts: dict) -> Results:
    return {
        (name, tag): {b: reader(word, b, arrivals, truth, vectors, contexts)[0] for b in BUDGETS}
        for name, tag, word, truth in readers
    }


def worse(result: dict[int, float]) -> bool:
    """Worse than without votes at any budget."""
    return any(result[b] < result[0] - 1e-9 for b in BUDGETS)


def set_row(results: Results, sets: list[str]) -> list[object]:
    """Means over the readers of ``sets``: NDCG@10 at each budget, delta@5, tags worse."""
    chosen = [r for (name, _), r in results.items() if name in sets]
    means = [statistics.fmean(r[b] for r in chosen) for b in BUDGETS]
    bad = [
        f"{tag} {min(r[b] for b in BUDGETS) - r[0]:+.3f}"
        for (name, tag), r in results.items()
        if name in sets and worse(r)
    ]
    return [len(chosen), *means, means[2] - means[0], len(bad), ", ".join(bad)]


def study_all() -> None:
    """Every spent set, with the term-vector profile and with the semantic one."""
    arrivals = days()
    readers = spent_readers(arrivals)
    contexts: dict = {}
    runs = {"terms": measure(readers, arrivals, None, contexts)}
    runs["semantic"] = measure(readers, arrivals, _vectors(arrivals), contexts)
    rows: list[list[object]] = []
    for name in SPENT:
        for profile, results in runs.items():
            rows.append([name, profile, *set_row(results, [name])])
    for profile, results in runs.items():
        every = [n for n in SPENT if n != "full"]  # full repeats relevance.yaml's tags
        rows.append(["ALL (without full)", profile, *set_row(results, every)])
    headers = ["set", "profile", "readers", *(f"{b} votes" for b in BUDGETS)]
    headers += ["delta@5", "tags worse", "which (worst budget)"]
    per_tag = [
        [name, tag, *(runs[p][name, tag][b] - runs[p][name, tag][0] for p in runs for b in (5,))]
        for name, tag, _, _ in readers
    ]
    report(
        "feedback_study_all",
        headers,
        rows,
        {
            "per_tag_delta5": {"columns": ["set", "tag", *runs], "rows": per_tag},
            "results": {p: {f"{n}:{t}": r for (n, t), r in res.items()} for p, res in runs.items()},
        },
    )


def fewer() -> None:
    """Readers who said only "fewer" (no judged-relevant paper in their first top 5s): what
    the code's demotion gives them, and the most any demotion by closeness to the rejected
    papers could. The oracle knows which papers are relevant and, per reader, pushes every
    found paper at least ``t`` close to a rejected one to the bottom, with the best ``t`` for
    that reader; "best single t" is the best one threshold for all of them (in-sample), with
    the readers it makes better / worse; the ceiling is the perfect reorder of what the tag
    found. Closeness: the term vectors' cosine to the nearest and to the second-nearest
    rejected paper (what the demotion uses), and the embeddings' cosine to the nearest."""
    arrivals = days()
    readers = [r for r in spent_readers(arrivals) if r[0] != "full"]
    vectors = _vectors(arrivals)
    contexts: dict = {}
    later = [p for _, papers in arrivals[VOTE_DAYS:] for p in papers]
    pool = {p.key for p in later}
    history, cache = _context(arrivals, contexts, len(arrivals) - 1)
    new_vectors = vectors.of(later)
    kinds = ["term nearest", "term 2nd", "embedding nearest"]
    rows: list[list[object]] = []
    for budget in (3, 5, 10):
        cases = []
        for _, _, word, truth in readers:
            taste = votes(word, budget, arrivals, truth, None, contexts)
            if taste.liked or not taste.disliked:
                continue
            everything = Profile((Interest(word),), max_items=len(later))
            order = [item.paper for item in rank_many(later, [everything], None, history, cache)[0]]
            index = {id(p): i for i, p in enumerate(later)}
            found = [index[id(p)] for p in order]
            terms = profile_module._term_similarity(taste.disliked, later, history)
            cosine = vectors.of(taste.disliked) @ new_vectors.T
            close = {
                "term nearest": terms.max(axis=0),
                "term 2nd": np.sort(terms, axis=0)[-2] if len(terms) > 1 else terms[0] * 0,
                "embedding nearest": cosine.max(axis=0),
            }
            code = reader(word, budget, arrivals, truth, None, contexts)[0]
            cases.append((truth, found, close, code))
        if not cases:
            continue

        def demoted(truth, found, closeness, t):
            keep = [i for i in found if closeness[i] < t] + [i for i in found if closeness[i] >= t]
            return ndcg([later[i].key for i in keep], truth, pool)

        base = np.array([demoted(c[0], c[1], c[2]["term nearest"], np.inf) for c in cases])
        ceiling = [
            ndcg(sorted((later[i].key for i in c[1]), key=lambda k: -c[0].get(k, 0)), c[0], pool)
            for c in cases
        ]
        row: list[object] = [budget, len(cases), base.mean(), statistics.fmean(c[3] for c in cases)]
        for kind in kinds:
            pooled = np.concatenate([c[2][kind][c[1][:40]] for c in cases])
            grid = np.quantile(pooled, np.linspace(0.5, 0.995, 40))
            table = np.array([[demoted(c[0], c[1], c[2][kind], t) for t in grid] for c in cases])
            single = table[:, table.mean(axis=0).argmax()]
            better, worse_ = int((single > base + 1e-9).sum()), int((single < base - 1e-9).sum())
            row += [table.max(axis=1).mean(), f"{single.mean():.3f} ({better}/{worse_})"]
        rows.append([*row, statistics.fmean(ceiling)])
    headers = ["votes", "'fewer'-only readers", "no votes", "code (terms)"]
    for kind in kinds:
        headers += [f"oracle t per reader: {kind}", f"best single t: {kind} (better/worse)"]
    report("feedback_fewer", [*headers, "ceiling (perfect reorder)"], rows, {"kinds": kinds})


@contextlib.contextmanager
def constants(values: dict[str, float]) -> Iterator[None]:
    """``paperpost.profile``'s constants set to ``values`` for the block (then restored)."""
    saved = {name: getattr(profile_module, name) for name in values}
    try:
        for name, value in values.items():
            setattr(profile_module, name, type(saved[name])(value))
        yield
    finally:
        for name, value in saved.items():
            setattr(profile_module, name, value)


# the semantic profile's constants tried by ``cv`` (the code's are among them): where a lift
# stops (STRONG_TAG; 1.0 is plain noisy-or) and how much the likes may add
CV_GRID = {
    "STRONG_TAG": [0.7, 0.8, 0.9, 1.0],
    "LIKE_CAP": [0.7, 1.0],
}


def cv(grid: dict[str, list[float]]) -> None:
    """The semantic profile's constants by cross-validation: every combination of ``grid``
    is measured on every spent set; for each fold in turn, the combination taken is the one
    that, on the other folds' readers, leaves the fewest readers worse than without votes
    and then has the best mean delta@5 (the issue's target in its order: no tag worse, then
    the gain); its delta@5 on the held-out fold is reported beside the code's constants and
    the terms."""
    arrivals = days()
    readers = spent_readers(arrivals)
    vectors = _vectors(arrivals)
    contexts: dict = {}
    settings = [
        dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
    ]
    measured = []
    for setting in settings:
        with constants(setting):
            measured.append(measure(readers, arrivals, vectors, contexts))
        print(setting, " ".join(f"{n} {set_row(measured[-1], [n])[5]:+.3f}" for n in SPENT))
    current = measure(readers, arrivals, vectors, contexts)
    terms = measure(readers, arrivals, None, contexts)

    def pooled(results: Results, sets: list[str]) -> tuple[float, int]:
        chosen = [r for (name, _), r in results.items() if name in sets and name != "full"]
        if not chosen:  # the relevance + full fold scores on relevance.yaml's readers
            chosen = [r for (name, _), r in results.items() if name in sets]
        return statistics.fmean(r[5] - r[0] for r in chosen), sum(map(worse, chosen))

    rows: list[list[object]] = []
    for fold, sets in FOLDS.items():
        others = [n for f, names in FOLDS.items() if f != fold for n in names]
        best = max(
            range(len(settings)),
            key=lambda i: (-pooled(measured[i], others)[1], pooled(measured[i], others)[0]),
        )
        held = [pooled(res, sets) for res in (measured[best], current, terms)]
        setting = ", ".join(f"{k}={v}" for k, v in settings[best].items())
        rows.append([fold, setting, *(x for pair in held for x in pair)])
    mean_row: list[object] = ["MEAN over folds (worse: sum)", ""]
    for c in range(2, 8):  # delta@5 columns averaged, tags worse added up
        values = [row[c] for row in rows]
        mean_row.append(statistics.fmean(values) if c % 2 == 0 else sum(values))  # type: ignore[arg-type]
    rows.append(mean_row)
    headers = ["held-out fold", "chosen on the other folds", "delta@5 chosen", "worse"]
    headers += ["delta@5 code's constants", "worse", "delta@5 terms", "worse"]
    report(
        "feedback_cv",
        headers,
        rows,
        {
            "grid": grid,
            "settings": [
                {"setting": st, "sets": {n: set_row(res, [n]) for n in SPENT}}
                for st, res in zip(settings, measured, strict=True)
            ],
        },
    )


def speed(readers: int = 10_000, count: int = 300, votes: int = 20, repeat: int = 5) -> None:
    """Paired rounds: tags only, tags + votes with the term profile, and with the semantic
    one. The semantic profile's vectors are stored ones (as a run loads them from the
    database): random unit vectors, since what they are does not change the arithmetic;
    encoding new papers is the semantic signal's own cost (benchmarks/README.md)."""
    papers = shared_papers()[:count]
    old = synthetic_papers(2_000, seed=7, prefix="history ")
    history = Background.of(old + papers)
    rng = random.Random(3)
    people = tag_profiles(readers)
    tastes = []
    for _ in range(readers):
        picked = rng.sample(old, votes)
        split = rng.randint(votes // 2, votes)
        tastes.append(Taste(tuple(picked[:split]), tuple(picked[split:])))
    noise = np.random.default_rng(5).standard_normal((len(old) + len(papers), DIM))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    stored = Vectors()
    stored.papers.update(
        {stored.key(p): v.astype(np.float32) for p, v in zip(old + papers, noise, strict=True)}
    )
    kinds = {"terms": None, "semantic": stored}
    for vectors in kinds.values():  # warm the caches
        rank_many(papers, people, nudge(papers, tastes, history, vectors), history)
    load_before = os.getloadavg()[0]
    plain: list[tuple[float, float]] = []  # (wall, CPU) seconds per round
    build: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    total: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        rank_many(papers, people, background=history)
        plain.append((time.perf_counter() - wall, time.process_time() - cpu))
        for kind, vectors in kinds.items():
            wall, cpu = time.perf_counter(), time.process_time()
            taught = nudge(papers, tastes, history, vectors)
            build[kind].append((time.perf_counter() - wall, time.process_time() - cpu))
            rank_many(papers, people, taught, history)
            total[kind].append((time.perf_counter() - wall, time.process_time() - cpu))
    load = os.getloadavg()[0]

    def median(runs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(run[i] for run in runs)

    ratios = {k: [t[1] / p[1] for t, p in zip(total[k], plain, strict=True)] for k in kinds}
    rows: list[list[object]] = [
        ["tags only", readers, len(papers), 0, median(plain, 0), median(plain, 1)]
    ]
    for kind in kinds:
        for what, runs in (("profiles built", build[kind]), ("total", total[kind])):
            row = [f"tags + votes ({kind}): {what}", readers, len(papers), votes]
            rows.append([*row, median(runs, 0), median(runs, 1)])
        label = f"ratio total ({kind}) / tags only, CPU (median of paired rounds)"
        rows.append([label, "", "", "", "", statistics.median(ratios[kind])])
    rows.append(["load average (1 min) before / after", "", "", "", load_before, load])
    report(
        "feedback_speed",
        ["ranking", "readers", "papers", "votes each", "median wall s", "median CPU s"],
        rows,
        {
            "plain": plain,
            "build": build,
            "total": total,
            "ratios_cpu": ratios,
            "load_before": load_before,
            "load_after": load,
        },
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def endpoint(count: int = 1_000, clients: int = 50, postgres: str | None = None) -> None:
    from sqlalchemy import MetaData, func, select

    from paperpost import schema
    from paperpost.feedback import (
        VoteLink,
        export_votes,
        make_vote_token,
        paper_ref,
        reader_ids,
        vote_expiry,
    )
    from paperpost.store import Store, engine_for, feedback

    key = secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="paperpost-votes-"))
    url = postgres or f"sqlite:///{work / 'paperpost.db'}"
    if postgres:  # a scratch database: every table dropped, then migrated afresh
        tables = MetaData()
        tables.reflect(engine_for(postgres))
        tables.drop_all(engine_for(postgres))
        schema.upgrade(engine_for(postgres))
    store = Store(url)
    papers = synthetic_papers(100, seed=11, prefix="endpoint ")
    store.ingest("bench", papers)
    addresses = [f"reader{i}@example.org" for i in range(count // len(papers))]
    ids = reader_ids(store, addresses)
    for address in addresses:  # the ledger: each reader was sent digest 0-100
        store.claim(address, "0-100", 0, 100, f"<0-100.{address}>", 1)
        store.settle(address, "0-100", "sent", 100, None)
    expires = vote_expiry(datetime.now(UTC).date())
    tokens = [
        make_vote_token(key, VoteLink(ids[a], paper_ref(p), "0-100", expires))
        for a in addresses
        for p in papers
    ][:count]
    port = _free_port()
    env = {
        "PAPERPOST_DATABASE_URL": url,
        "PAPERPOST_SECRET_KEY": key,
        "PATH": str(Path(sys.executable).parent),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "paperpost", "web", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        local = threading.local()

        def post(path: str) -> tuple[int, float]:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            start = time.perf_counter()
            status = session.post(f"{base}{path}", timeout=60).status_code
            return status, time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda t: post(f"/vote/more/{t}"), tokens))
        elapsed = time.perf_counter() - start
        with store.engine.connect() as conn:
            recorded = conn.execute(select(func.count()).select_from(feedback)).scalar_one()
        # every vote again, now "fewer": still one row each, and the last vote counts
        with ThreadPoolExecutor(clients) as pool:
            again = list(pool.map(lambda t: post(f"/vote/fewer/{t}"), tokens))
        with store.engine.connect() as conn:
            after = conn.execute(
                select(func.count(), func.sum(feedback.c.vote)).select_from(feedback)
            ).one()

        good = tokens[0]
        body, tag = good.split(".")
        flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
        stranger = reader_ids(store, ["stranger@example.org"])["stranger@example.org"]
        bad = {
            "tampered": f"{flipped}.{tag}",
            "expired": make_vote_token(
                key, VoteLink(ids[addresses[0]], paper_ref(papers[0]), "0-1", 1)
            ),
            "cross-address (other reader id, same signature)": _swap_reader(good, stranger),
            "other key": make_vote_token(
                "not-the-key", VoteLink(stranger, paper_ref(papers[0]), "0-1", expires)
            ),
            "never sent (valid signature, no such digest in the ledger)": make_vote_token(
                key, VoteLink(stranger, paper_ref(papers[0]), "0-100", expires)
            ),
        }
        before_bad = list(export_votes(store))
        bad_status = {name: post(f"/vote/more/{t}")[0] for name, t in bad.items()}
        changed = len(set(export_votes(store)) ^ set(before_bad))
        with store.engine.connect() as conn:
            stranger_rows = conn.execute(
                select(func.count())
                .select_from(feedback)
                .where(feedback.c.address == "stranger@example.org")
            ).scalar_one()
    finally:
        server.terminate()
        server.wait(timeout=10)
    latencies = sorted(t for _, t in results)
    rows = [
        ["database", store.engine.dialect.name, ""],
        ["votes posted", count, f"{clients} concurrent clients"],
        ["HTTP 200", sum(1 for s, _ in results if s == 200), ""],
        ["rows recorded", recorded, "exactly once each" if recorded == count else "MISMATCH"],
        ["votes per second", round(count / elapsed), f"{elapsed:.2f} s in all"],
        [
            "median / p99 latency ms",
            round(statistics.median(latencies) * 1000),
            round(latencies[int(0.99 * len(latencies))] * 1000),
        ],
        ["same votes re-posted as 'fewer': 200", sum(1 for s, _ in again if s == 200), ""],
        ["rows after re-vote / sum of votes", after[0], after[1]],
    ]
    for name, status in bad_status.items():
        rows.append([f"{name}: HTTP status", status, ""])
    rows.append(
        ["rows added or changed by the bad tokens", changed, f"stranger rows {stranger_rows}"]
    )
    name = "feedback_endpoint" + ("_postgres" if postgres else "")
    report(name, ["measure", "value", "note"], rows, {})


def _swap_reader(token: str, reader_id: str) -> str:
    """The same token with another reader's id in its body (signature left as it was)."""
    from paperpost.feedback import _b64, _unb64

    body, tag = token.split(".")
    parts = _unb64(body).decode().split("\n")
    parts[0] = reader_id
    return f"{_b64(chr(10).join(parts).encode())}.{tag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", help="study, speed, endpoint (default: all three)")
    parser.add_argument("--relevance", type=Path, help="study: a judged YAML file")
    parser.add_argument("--tags", help="study: TAG[=VAGUE_WORD],... (default: every tag)")
    parser.add_argument("--rounds", type=int, default=5, help="speed: paired rounds")
    parser.add_argument("--postgres", help="endpoint: a scratch PostgreSQL URL (emptied)")
    parser.add_argument(
        "--semantic", action="store_true", help="study: the semantic profile (paperpost[semantic])"
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="cv: a constant of paperpost.profile and its values (repeatable)",
    )
    args = parser.parse_args()
    unknown = set(args.parts) - {"study", "all", "fewer", "cv", "speed", "endpoint"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    for part in args.parts or ["study", "speed", "endpoint"]:
        if part == "study":
            study(args.relevance, args.tags.split(",") if args.tags else None, args.semantic)
        elif part == "all":
            study_all()
        elif part == "fewer":
            fewer()
        elif part == "cv":
            grid = {
                n: [float(v) for v in vs.split(",")]
                for n, _, vs in (g.partition("=") for g in args.grid)
            }
            cv(grid or CV_GRID)
        elif part == "speed":
            speed(repeat=args.rounds)
        else:
            endpoint(postgres=args.postgres)


if __name__ == "__main__":
    main()
