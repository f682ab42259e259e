"""Cross-validated ranking settings: pick on the other spent blind rounds, check on the last.

    python benchmarks/rank_cv.py --grid ORDER_ABSTRACT_ONLY=0.6,0.75,0.9 \
        --grid ORDER_LEAD_TERM=0.7,1 \
        --reference ORDER_ABSTRACT_ONLY=0.6 --reference ORDER_LEAD_TERM=0.7
    python benchmarks/rank_cv.py --semantic --grid SEMANTIC_WEIGHT=0.1,0.3 ...

Every combination of the ``--grid`` values (numeric constants of ``paperpost.rank``, set for
the run only) is measured by NDCG@10 on each development set: the five spent blind rounds
(round 1 to 5), leave-topic-out on the pooled and the fully judged existing tags,
and the existing set. The reference is the current code, or the constants given by
``--reference``; with ``--semantic`` the grid is measured with the semantic signal on and the
reference without it. Then, for each round in turn, the setting with the best mean on the other
rounds is taken and its NDCG@10 on the held-out round is reported beside the reference's:
once among all settings, once among those that keep both leave-topic-out sets at least at the
reference's figure. The mean of the held-out figures estimates what tuning these
constants on the spent rounds gives on a new blind round; a gain there, not on the rounds a
setting was picked on, is what a change must show (benchmarks/README.md).

Also prints, per set, the P@10 ceiling (mean of min(10, R) / 10: tags with fewer than ten
judged-relevant papers cap it) and how many tags have few relevant papers.
Writes results/rank_cv.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rank_quality import Judged, evaluate_set, judgments, mean, shared_papers, use_semantic

import paperpost.rank as rank_module
from common import report

ROUNDS = {
    "round1": "relevance_round1.yaml",
    "round2": "relevance_blind2.yaml",
    "round3": "relevance_blind3.yaml",
    "round4": "relevance_blind4.yaml",
    "round5": "relevance_blind5.yaml",
    "round6": "relevance_blind6.yaml",
}
OTHERS = [  # (name, file, leave each tag's vocabulary entry out)
    ("leave-out", "relevance.yaml", True),
    ("full-out", "relevance_full.yaml", True),
    ("existing", "relevance.yaml", False),
]


@contextlib.contextmanager
def constants(values: dict[str, float]) -> Iterator[None]:
    """``paperpost.rank``'s constants set to ``values`` for the block (then restored)."""
    saved = {name: getattr(rank_module, name) for name in values}
    try:
        for name, value in values.items():
            setattr(rank_module, name, type(saved[name])(value))
        yield
    finally:
        for name, value in saved.items():
            setattr(rank_module, name, value)


def parse_grid(specs: list[str]) -> list[dict[str, float]]:
    """``NAME=v1,v2`` specs -> every combination, as {NAME: value}."""
    axes: dict[str, list[float]] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        current = getattr(rank_module, name, None)
        if not isinstance(current, int | float) or isinstance(current, bool) or not values:
            raise SystemExit(f"--grid {spec!r}: not NAME=v1,v2 with NAME a numeric rank constant")
        axes[name] = [float(v) for v in values.split(",")]
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def ceiling(truth: Judged) -> tuple[int, float, int, int]:
    """Tags with a relevant paper, the P@10 ceiling, tags with R < 10, tags with R <= 3."""
    sizes = [sum(1 for g in rel.values() if g > 0) for rel in truth.values()]
    sizes = [r for r in sizes if r]
    return (
        len(sizes),
        mean([min(10, r) / 10 for r in sizes]),
        sum(1 for r in sizes if r < 10),
        sum(1 for r in sizes if r <= 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=v1,v2,...",
        help="a numeric constant of paperpost.rank and the values to try; repeatable",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="compare against the code with this constant set (default: the current code)",
    )
    parser.add_argument(
        "--semantic",
        action="store_true",
        help="measure the grid with the semantic signal on; the reference stays without it",
    )
    args = parser.parse_args()
    settings = parse_grid(args.grid)
    (reference_values,) = parse_grid(args.reference) if args.reference else [{}]
    papers = shared_papers()
    sets: list[tuple[str, Judged, bool]] = [
        (name, judgments(papers, file), False) for name, file in ROUNDS.items()
    ]
    sets += [(name, judgments(papers, file), out) for name, file, out in OTHERS]

    def measure(values: dict[str, float]) -> dict[str, float]:
        with constants(values):
            result = {}
            for name, truth, out in sets:
                relevant = {t: rel for t, rel in truth.items() if any(rel.values())}
                scores = evaluate_set(papers, relevant, out)["paperpost"]
                result[name] = mean([v[0] for v in scores.values()])
            return result

    current = measure(reference_values)
    use_semantic(args.semantic)
    measured = [(values, measure(values)) for values in settings]
    label = {id(v): ", ".join(f"{k}={x:g}" for k, x in v.items()) for v, _ in measured}
    name = "reference: " + (", ".join(args.reference) or "current code")
    rows: list[list[object]] = [[name, *current.values()]]
    rows += [[label[id(v)], *m.values()] for v, m in measured]
    report("rank_cv", ["setting", *(name for name, _, _ in sets)], rows, {})

    keeps = [
        (values, m)
        for values, m in measured
        if all(m[s] >= current[s] - 1e-9 for s in ("leave-out", "full-out"))
    ]
    held: list[list[object]] = []
    for pool, name in ((measured, "any setting"), (keeps, "keeps leave-topic-out")):
        rows_of_pool: list[list[object]] = []
        for out in ROUNDS if pool else ():
            train = [r for r in ROUNDS if r != out]
            values, best = max(pool, key=lambda vm: sum(vm[1][r] for r in train))
            gain = best[out] - current[out]
            rows_of_pool.append([name, out, label[id(values)], best[out], current[out], gain])
        if rows_of_pool:
            picked = mean([float(h[3]) for h in rows_of_pool])  # type: ignore[arg-type]
            now = mean([current[r] for r in ROUNDS])
            rows_of_pool.append([name, "mean", "", picked, now, picked - now])
        held += rows_of_pool
    print(
        f"\nPicked on the other rounds, measured on the held-out one (NDCG@10); "
        f"{len(keeps)} of {len(measured)} settings keep both leave-topic-out sets:"
    )
    report(
        "rank_cv_heldout",
        ["picked among", "held-out round", "picked setting", "held-out NDCG", "reference", "diff"],
        held,
        {"grid": args.grid},
    )

    print("\nP@10 ceiling per set (tags with fewer than 10 relevant papers cap it):")
    report(
        "rank_cv_ceiling",
        ["set", "tags", "P@10 ceiling", "tags with R < 10", "tags with R <= 3"],
        [[name, *ceiling(truth)] for name, truth, _ in sets],
        {},
    )


if __name__ == "__main__":
    main()
