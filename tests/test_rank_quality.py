"""The ranker keeps its measured quality on the judged development set (benchmarks/data)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from rank_quality import evaluate


def test_ranker_beats_bm25_and_substring_on_the_judged_set() -> None:
    truth, scores = evaluate()
    assert len(truth) >= 10

    def mean(system: str, metric: int) -> float:
        return sum(v[metric] for v in scores[system].values()) / len(truth)

    assert mean("paperpost", 0) >= 0.90  # nDCG@10
    assert mean("paperpost", 1) >= 0.85  # precision@10
    for metric in (0, 1):
        assert mean("paperpost", metric) >= mean("bm25", metric) + 0.08
        assert mean("paperpost", metric) > mean("substring", metric)
