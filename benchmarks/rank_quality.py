"""Ranking quality on the shared papers: paperpost vs BM25 (stemmed) vs substring.

    python benchmarks/rank_quality.py [--no-blind] [--sweep] [--semantic]
    python benchmarks/rank_quality.py --judged FILE.yaml [--judged FILE2.yaml ...]

``--semantic`` turns the semantic signal on (paperpost[semantic]; the papers' vectors are
computed once per process, about 35 CPU seconds for the 368 shared papers).

``--judged`` measures only the given relevance files (any path, the format of data/*.yaml:
tag -> grade -> paper titles): per tag and mean NDCG@10, P@10, P@min(10,R) for paperpost,
BM25+Snowball and substring, then the replay (delivered precision, recall, one-word share)
for one default reader per tag of each file. This is how a new blind set is measured once.

The judged sets (how each was made is written at the top of its file):
  blind6     data/relevance_blind6.yaml: round 6's blind tags, judged in full by three
             independent judges; measured blind once in session 6, a development set since
  blind5     data/relevance_blind5.yaml: round 5's blind tags, judged in full by three
             independent judges; measured blind once in session 5, a development set since
  blind4     data/relevance_blind4.yaml: round 4's blind tags, judged in full by three
             independent judges; measured blind once in session 4, a development set since
  blind3     data/relevance_blind3.yaml: round 3's blind tags, judged in full by three
             independent judges; measured blind once in session 3, a development set since
  blind2     data/relevance_blind2.yaml: round 2's blind tags (not vocabulary entries), judged
             by independent judges before the round-2 changes (every paper read); spent
  round1     data/relevance_round1.yaml: round 1's blind tags, judged the same way; measured
             blind once in round 1, a development set since
  leave-out  data/relevance.yaml with each tag's vocabulary entry (id and aliases) removed
  existing   data/relevance.yaml as it is
  dev        data/relevance_dev.yaml: compound tags the developer judged and tuned on (not blind)
  full       data/relevance_full.yaml: the existing tags judged in full by two judges (not blind)
Prints NDCG@10, P@10 and P@min(10,R) (R = the tag's judged-relevant papers: P@10 cannot
reach 1 when R < 10) per tag and on average (tags with no relevant paper apart: NDCG is
undefined there, so they report how many papers a default reader would get instead), a
calibration table (share of judged-relevant papers per score band) and the delivered-
precision replay: ../shared day by day with default settings, one reader per judged tag.
Writes results/rank_quality.json. Works against older versions of paperpost too (the
"before" figures are this script run against the original code).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import re
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import bm25s
import Stemmer
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paperpost.rank as rank_module
from common import report
from paperpost.dumps import distinct_papers, parse_dump
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, rank_many

SHARED = HERE.parent.parent / "shared"
DATA = HERE / "data"
K = 10
Judged = dict[str, dict[str, int]]  # tag -> paper key -> grade


def sources() -> list[Path]:
    """The shared dumps in replay order: the page dumps, then the API days."""
    return sorted((SHARED / "dumps").glob("*.txt")) + sorted((SHARED / "hf_api").glob("*.json"))


def day_papers() -> list[list[Paper]]:
    return [
        distinct_papers(parse_dump(path.read_bytes(), str(path), date(2026, 11, 25)).papers)
        for path in sources()
    ]


def shared_papers() -> list[Paper]:
    return distinct_papers(p for day in day_papers() for p in day)


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def judgments(papers: list[Paper], name: str | Path = "relevance.yaml") -> Judged:
    """Grades by paper key; a listed title (or unique title prefix) must name one paper.

    ``name`` is a file of benchmarks/data or a path to any file of the same format."""
    path = Path(name) if Path(name).is_file() else DATA / name
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: Judged = {}
    for tag, grades in raw.items():
        out[tag] = {}
        for grade, titles in (grades or {}).items():
            for title in titles or []:
                folded = _fold(title)
                hits = [p.key for p in papers if _fold(p.title) == folded]
                if not hits:
                    hits = [p.key for p in papers if _fold(p.title).startswith(folded)]
                if len(hits) != 1:
                    raise SystemExit(f"{name}: {tag}: {title!r} matches {len(hits)} papers")
                out[tag][hits[0]] = max(int(grade), out[tag].get(hits[0], 0))
    return out


def ndcg(ranked: list[str], rel: dict[str, int]) -> float:
    dcg = sum((2 ** rel.get(pid, 0) - 1) / math.log2(i + 2) for i, pid in enumerate(ranked[:K]))
    ideal = sorted(rel.values(), reverse=True)[:K]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else float("nan")


def precision(ranked: list[str], rel: dict[str, int], k: int = K) -> float:
    return sum(1 for pid in ranked[:k] if rel.get(pid, 0) > 0) / k


def capped_precision(ranked: list[str], rel: dict[str, int]) -> float:
    """P@min(10, R): precision at the depth a perfect ranking could fill with relevant papers."""
    relevant = sum(1 for g in rel.values() if g > 0)
    return precision(ranked, rel, min(K, relevant)) if relevant else float("nan")


def _text(p: Paper) -> str:
    return " ".join([p.title, " ; ".join(p.ai_keywords), p.ai_summary or "", p.abstract])


def baselines(papers: list[Paper]) -> dict[str, Callable[[str], list[str]]]:
    """BM25 (bm25s, English stopwords, Snowball stemmer) and raw substring counts, both over
    the same text paperpost sees (title, AI keywords, TL;DR, abstract)."""
    corpus = [_text(p) for p in papers]
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )

    def bm25(tag: str, depth: int = K) -> list[str]:
        query = bm25s.tokenize(
            [tag.replace("-", " ")], stopwords="en", stemmer=stemmer, show_progress=False
        )
        ids, scores = retriever.retrieve(query, k=depth, show_progress=False)
        return [papers[int(i)].key for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def substring(tag: str) -> list[str]:
        needle = tag.replace("-", " ").lower()
        counted = [(text.lower().count(needle), i) for i, text in enumerate(corpus)]
        return [papers[i].key for c, i in sorted(counted, key=lambda x: (-x[0], x[1])) if c][:K]

    return {"bm25+stemmer": bm25, "substring": substring}


VECTORS = None  # paperpost.semantic.Vectors when the semantic signal is on (--semantic)


def use_semantic(on: bool = True) -> None:
    """Turn the semantic signal on (or off) for the rankings that follow."""
    global VECTORS
    if not on:
        VECTORS = None
    elif VECTORS is None:
        from paperpost.semantic import Vectors

        VECTORS = Vectors()


def _rank(papers: list[Paper], profiles: list[Profile], background: list[Paper]):  # type: ignore[no-untyped-def]
    """rank_many with the history as background when this version of paperpost has one."""
    if VECTORS is not None:
        cache = rank_module.MatchCache(vectors=VECTORS)
        history = rank_module.Background.of(background, cache)
        return rank_many(papers, profiles, background=history, cache=cache)
    if "background" in inspect.signature(rank_many).parameters:
        return rank_many(papers, profiles, background=rank_module.Background.of(background))
    return rank_many(papers, profiles)


def ours(papers: list[Paper], tags: list[str]) -> dict[str, list[str]]:
    """paperpost's top K per tag (ordering only: no min_score cut)."""
    profiles = [Profile((Interest(tag),), min_score=0.0, max_items=K) for tag in tags]
    rankings = _rank(papers, profiles, papers)
    return {
        tag: [r.paper.key for r in ranked if r.score > 0]
        for tag, ranked in zip(tags, rankings, strict=True)
    }


@contextlib.contextmanager
def without_topic(tag: str) -> Iterator[None]:
    """The vocabulary without the entry a tag resolves to (its id and every alias)."""
    full = rank_module.vocabulary()
    slug = rank_module._slug(tag)
    gone = full.get(slug)
    reduced = {k: v for k, v in full.items() if gone is None or v.id != gone.id}
    caches = [
        getattr(rank_module, n)
        for n in ("read_tag", "_vocabulary_words")
        if hasattr(getattr(rank_module, n, None), "cache_clear")
    ]
    original = rank_module.vocabulary
    rank_module.vocabulary = lambda path=None: reduced  # type: ignore[assignment]
    for c in caches:
        c.cache_clear()
    try:
        yield
    finally:
        rank_module.vocabulary = original
        for c in caches:
            c.cache_clear()


def scores_for(
    truth: Judged, rankings: dict[str, dict[str, list[str]]]
) -> dict[str, dict[str, tuple[float, float, float]]]:
    return {
        system: {
            tag: (
                ndcg(by_tag[tag], rel),
                precision(by_tag[tag], rel),
                capped_precision(by_tag[tag], rel),
            )
            for tag, rel in truth.items()
        }
        for system, by_tag in rankings.items()
    }


def evaluate_set(papers: list[Paper], truth: Judged, leave_out: bool = False):  # type: ignore[no-untyped-def]
    """Per system and tag: (NDCG@10, P@10, P@min(10,R))."""
    tags = list(truth)
    if leave_out:
        mine: dict[str, list[str]] = {}
        for tag in tags:
            with without_topic(tag):
                mine.update(ours(papers, [tag]))
    else:
        mine = ours(papers, tags)
    rankings = {"paperpost": mine}
    for name, system in baselines(papers).items():
        rankings[name] = {tag: system(tag) for tag in tags}
    return scores_for(truth, rankings)


def evaluate() -> tuple[Judged, dict[str, dict[str, tuple[float, float, float]]]]:
    """The existing judged set (kept for the quality test)."""
    papers = shared_papers()
    truth = judgments(papers)
    return truth, evaluate_set(papers, truth)


def mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


# --- what readers receive ----------------------------------------

_QUOTED = re.compile(r'"([^"]+)"')


def evidence_words(item) -> set[str]:  # type: ignore[no-untyped-def]
    """Distinct evidence terms of a delivered item (stemmed, stopwords dropped)."""
    hits = getattr(item, "evidence", ())
    if hits:
        terms = {h["term"] for detail in hits for h in detail["hits"]}
    else:  # before: the reason was a field dump like title: "a", "b"; abstract: "c"
        terms = set(_QUOTED.findall(item.why))
    stops = rank_module.STOPWORDS
    return {" ".join(w for w in rank_module.tokens(t) if w not in stops) for t in terms} - {""}


def replay(
    truth: Judged, leave_out: bool = False, min_score: float | None = None
) -> dict[str, float]:
    """Replay ../shared day by day: each day's new papers, one default reader per tag.

    Returns delivered, relevant delivered, judged-relevant, one-word items (evidence is a
    single word) and precision/recall/one-word share.
    """
    seen: set[str] = set()
    history: list[Paper] = []
    delivered = relevant = one_word = 0
    reached: dict[str, set[str]] = {tag: set() for tag in truth}
    tags = list(truth)

    def profile(tag: str) -> Profile:
        if min_score is None:
            return Profile((Interest(tag),))
        return Profile((Interest(tag),), min_score=min_score)

    for day in day_papers():
        new = [p for p in day if p.key not in seen]
        seen |= {p.key for p in new}
        history += new
        if not new:
            continue
        if leave_out:
            rankings = []
            for tag in tags:
                with without_topic(tag):
                    rankings += _rank(new, [profile(tag)], history)
        else:
            rankings = _rank(new, [profile(tag) for tag in tags], history)
        for tag, items in zip(tags, rankings, strict=True):
            for item in items:
                delivered += 1
                if truth[tag].get(item.paper.key, 0) > 0:
                    relevant += 1
                    reached[tag].add(item.paper.key)
                words = evidence_words(item)
                if len(words) == 1 and " " not in next(iter(words)):
                    one_word += 1
    judged = sum(1 for rel in truth.values() for g in rel.values() if g > 0)
    found = sum(len(v) for v in reached.values())
    return {
        "delivered": delivered,
        "relevant": relevant,
        "judged_relevant": judged,
        "reached": found,
        "precision": relevant / delivered if delivered else float("nan"),
        "recall": found / judged if judged else float("nan"),
        "one_word_share": one_word / delivered if delivered else float("nan"),
    }


# --- report ----------------------------------------


def table_rows(
    name: str, truth: Judged, scores: dict[str, dict[str, tuple[float, float, float]]]
) -> list[list[object]]:
    rows: list[list[object]] = []
    with_relevant = [t for t, rel in truth.items() if any(g > 0 for g in rel.values())]
    for tag in with_relevant:
        rel = truth[tag]
        row: list[object] = [name, tag, sum(1 for g in rel.values() if g == 2)]
        row.append(sum(1 for g in rel.values() if g > 0))
        for by_tag in scores.values():
            row += list(by_tag[tag])
        rows.append(row)
    sizes = [sum(1 for g in truth[t].values() if g > 0) for t in with_relevant]
    ceiling = mean([min(K, r) / K for r in sizes])  # P@10 of a perfect ranking
    row = [name, f"MEAN ({len(with_relevant)} tags; P@10 ceiling {ceiling:.3f})", "", ""]
    for by_tag in scores.values():
        row += [mean([by_tag[t][i] for t in with_relevant]) for i in range(3)]
    rows.append(row)
    return rows


def calibration(papers: list[Paper], truth: Judged, leave_out: bool) -> list[list[object]]:
    """Share of judged-relevant papers per score band (every paper, every tag)."""
    bands = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.01]
    counts = [[0, 0] for _ in bands[:-1]]
    for tag, rel in truth.items():
        profile = Profile((Interest(tag),), min_score=0.0, max_items=len(papers))
        if leave_out:
            with without_topic(tag):
                (ranked,) = _rank(papers, [profile], papers)
        else:
            (ranked,) = _rank(papers, [profile], papers)
        for item in ranked:
            for i in range(len(bands) - 1):
                if bands[i] <= item.score < bands[i + 1]:
                    counts[i][0] += 1
                    counts[i][1] += rel.get(item.paper.key, 0) > 0
    return [
        [f"{bands[i]:.1f}-{min(bands[i + 1], 1.0):.1f}", n, r / n if n else float("nan")]
        for i, (n, r) in enumerate(counts)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--no-blind", action="store_true", help="Leave the blind3 and blind2 sets out."
    )
    parser.add_argument(
        "--sweep", action="store_true", help="Replay the dev sets at several min_score values."
    )
    parser.add_argument(
        "--judged",
        action="append",
        type=Path,
        metavar="FILE",
        help="Measure only this relevance file (same format as data/*.yaml); repeatable.",
    )
    parser.add_argument(
        "--semantic", action="store_true", help="Turn the semantic signal on (paperpost[semantic])."
    )
    args = parser.parse_args()
    use_semantic(args.semantic)
    papers = shared_papers()
    sets: list[tuple[str, Judged, bool]] = []
    if args.judged:
        for path in args.judged:
            if not path.is_file():
                parser.error(f"--judged {path}: no such file")
            sets.append((path.stem, judgments(papers, path), False))
    else:
        existing = judgments(papers)
        if not args.no_blind:
            sets.append(("blind6", judgments(papers, "relevance_blind6.yaml"), False))
            sets.append(("blind5", judgments(papers, "relevance_blind5.yaml"), False))
            sets.append(("blind4", judgments(papers, "relevance_blind4.yaml"), False))
            sets.append(("blind3", judgments(papers, "relevance_blind3.yaml"), False))
            sets.append(("blind2", judgments(papers, "relevance_blind2.yaml"), False))
        sets.append(("round1", judgments(papers, "relevance_round1.yaml"), False))
        sets += [("leave-out", existing, True), ("existing", existing, False)]
        full = judgments(papers, "relevance_full.yaml")
        sets += [("full-out", full, True), ("full", full, False)]
        sets.append(("dev", judgments(papers, "relevance_dev.yaml"), False))

    rows: list[list[object]] = []
    extra: dict[str, object] = {"k": K, "empty_tags": {}, "semantic": args.semantic}
    for name, truth, leave_out in sets:
        scores = evaluate_set(papers, truth, leave_out)
        rows += table_rows(name, truth, scores)
        empty = [t for t, rel in truth.items() if not any(g > 0 for g in rel.values())]
        if empty:  # NDCG is undefined: what would a default reader get?
            got = replay({t: truth[t] for t in empty}, leave_out)
            extra["empty_tags"][name] = {"tags": empty, "delivered": got["delivered"]}  # type: ignore[index]
    headers = ["set", "tag", "central", "judged>0"]
    for system in ("paperpost", "bm25+stemmer", "substring"):
        headers += [f"{system} NDCG", f"{system} P@10", f"{system} P@min(10,R)"]
    report("rank_quality", headers, rows, extra | {"note": "see replay below"})

    print("\nTags with no judged-relevant paper (NDCG undefined):")
    for name, info in extra["empty_tags"].items():  # type: ignore[union-attr]
        print(
            f"  {name}: {', '.join(info['tags'])}: "
            f"{info['delivered']} item(s) delivered in the replay"
        )

    print("\nCalibration: share of judged-relevant papers per score band")
    for name, truth, leave_out in sets:
        for band, n, share in calibration(papers, truth, leave_out):
            print(
                f"  {name:9} {band}: {n:5d} papers, {share:.2f} relevant"
                if n
                else f"  {name:9} {band}: 0"
            )

    print("\nWhat readers receive (replay of ../shared day by day, default settings):")
    replay_rows = []
    results = {}
    for name, truth, leave_out in sets:
        results[name] = replay(truth, leave_out)
        replay_rows.append(_replay_row(name, results[name]))
    if "round1" in results:
        results["existing+round1"] = _merge(results["round1"], results["existing"])
        replay_rows.append(_replay_row("existing+round1", results["existing+round1"]))
        results["full+round1"] = _merge(results["round1"], results["full"])
        replay_rows.append(_replay_row("full+round1", results["full+round1"]))
    if "blind2" in results:
        results["existing+blind2"] = _merge(results["blind2"], results["existing"])
        replay_rows.append(_replay_row("existing+blind2", results["existing+blind2"]))
    extra["replay"] = results
    if args.sweep:
        for threshold in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6):
            for name, truth, leave_out in sets:
                result = replay(truth, leave_out, threshold)
                replay_rows.append(_replay_row(f"{name} @ min_score {threshold}", result))
    report(
        "rank_quality_replay",
        ["readers", "delivered", "relevant", "precision", "recall", "one-word share"],
        replay_rows,
        extra,
    )


def _replay_row(name: str, r: dict[str, float]) -> list[object]:
    return [name, r["delivered"], r["relevant"], r["precision"], r["recall"], r["one_word_share"]]


def _merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    total = {k: a[k] + b[k] for k in ("delivered", "relevant", "judged_relevant", "reached")}
    one = a["one_word_share"] * a["delivered"] + b["one_word_share"] * b["delivered"]
    return total | {
        "precision": total["relevant"] / total["delivered"] if total["delivered"] else float("nan"),
        "recall": total["reached"] / total["judged_relevant"],
        "one_word_share": one / total["delivered"] if total["delivered"] else float("nan"),
    }


if __name__ == "__main__":
    main()
