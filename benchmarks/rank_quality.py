"""Ranking quality on the shared papers: paperpost vs BM25 vs substring, side by side.

    python benchmarks/rank_quality.py

Judgments: benchmarks/data/relevance.yaml (how they were made is written at its top).
Prints NDCG@10 and precision@10 per tag and on average; writes results/rank_quality.json.
"""

from __future__ import annotations

import math
import sys
from datetime import date
from pathlib import Path

import bm25s
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import report
from paperpost.dumps import distinct_papers, parse_dump
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, rank_many

SHARED = HERE.parent.parent / "shared"
K = 10


def shared_papers() -> list[Paper]:
    papers = []
    for path in sorted((SHARED / "dumps").glob("*.txt")) + sorted(
        (SHARED / "hf_api").glob("*.json")
    ):
        papers += parse_dump(path.read_bytes(), str(path), date(2026, 11, 25)).papers
    return distinct_papers(papers)


def judgments(papers: list[Paper]) -> dict[str, dict[str, int]]:
    raw = yaml.safe_load((HERE / "data" / "relevance.yaml").read_text(encoding="utf-8"))
    out: dict[str, dict[str, int]] = {}
    for tag, grades in raw.items():
        out[tag] = {}
        for grade, prefixes in grades.items():
            for prefix in prefixes:
                hits = [p.id for p in papers if p.title.startswith(prefix)]
                if len(hits) != 1:
                    raise SystemExit(
                        f"relevance.yaml: {tag}: {prefix!r} matches {len(hits)} papers"
                    )
                out[tag][hits[0]] = int(grade)
    return out


def ndcg(ranked: list[str], rel: dict[str, int]) -> float:
    dcg = sum((2 ** rel.get(pid, 0) - 1) / math.log2(i + 2) for i, pid in enumerate(ranked[:K]))
    ideal = sorted(rel.values(), reverse=True)[:K]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def precision(ranked: list[str], rel: dict[str, int]) -> float:
    return sum(1 for pid in ranked[:K] if rel.get(pid, 0) > 0) / K


def evaluate() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, tuple[float, float]]]]:
    """Per system and tag: (nDCG@10, P@10); also returns the judgments."""
    papers = shared_papers()
    truth = judgments(papers)
    corpus = [f"{p.title} {p.abstract}" for p in papers]
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False
    )

    def bm25(tag: str) -> list[str]:
        query = bm25s.tokenize([tag.replace("-", " ")], stopwords="en", show_progress=False)
        ids, scores = retriever.retrieve(query, k=K, show_progress=False)
        return [papers[int(i)].id for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def substring(tag: str) -> list[str]:
        needle = tag.replace("-", " ").lower()
        counted = [(text.lower().count(needle), i) for i, text in enumerate(corpus)]
        return [papers[i].id for c, i in sorted(counted, key=lambda x: (-x[0], x[1])) if c][:K]

    tags = list(truth)
    rankings = rank_many(papers, [Profile((Interest(tag),), max_items=K) for tag in tags])
    by_tag = {tag: [r.paper.id for r in ranked] for tag, ranked in zip(tags, rankings, strict=True)}

    def ours(tag: str) -> list[str]:
        return by_tag[tag]

    systems = {"paperpost": ours, "bm25": bm25, "substring": substring}
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    for name, system in systems.items():
        scores[name] = {}
        for tag, rel in truth.items():
            ranked = system(tag)
            scores[name][tag] = (ndcg(ranked, rel), precision(ranked, rel))
    return truth, scores


def main() -> None:
    truth, scores = evaluate()
    rows: list[list[object]] = []
    for tag, rel in truth.items():
        row: list[object] = [tag, sum(1 for g in rel.values() if g == 2), len(rel)]
        for by_tag in scores.values():
            row += list(by_tag[tag])
        rows.append(row)
    mean: list[object] = ["MEAN", "", ""]
    for by_tag in scores.values():
        mean += [
            sum(v[0] for v in by_tag.values()) / len(truth),
            sum(v[1] for v in by_tag.values()) / len(truth),
        ]
    rows.append(mean)
    headers = ["tag", "central", "judged>0"]
    for name in scores:
        headers += [f"{name} nDCG@10", f"{name} P@10"]
    report("rank_quality", headers, rows, {"k": K})


if __name__ == "__main__":
    main()
