"""Rank 300 new papers for 10,000 subscribers at once (target: under 2 s on 2 cores).

    python benchmarks/rank_speed.py [--subscribers 10000] [--papers 300] [--repeat 3]
        [--pairs 3] [--before /path/to/older/checkout] [--after /path/to/snapshot]

Subscribers get 1-4 random tags from the vocabulary (some with their own keywords and
weights) and sometimes an exclusion; papers are the real ones from ../shared. Each round runs
every checkout (``before`` first when given) in a fresh process: "first" is the first call
(papers parsed, evidence computed into the run's MatchCache: what a run's first batch pays),
"later" the median of the ``--repeat`` - 1 calls after it, which reuse that cache as a run's
later batches do. Wall and process CPU seconds are given for both: CPU is what a shared,
loaded machine cannot inflate. The load average is taken before and after every round.

Same ranks: every process prints a digest of what it ranked (order, score, reason, evidence)
for the 10,000 readers, and one for every judged tag of benchmarks/data/relevance*.yaml as
a reader over all the papers of ../shared (at min_score 0 and at the default); the table
says whether before and after agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_checkout_args, checkouts, report, run_in_tree

DATA = Path(__file__).resolve().parent / "data"


def profiles(count: int, seed: int = 1) -> list:
    from paperpost.rank import Interest, Profile, vocabulary

    rng = random.Random(seed)
    tags = sorted({topic.id for topic in vocabulary().values()})
    out = []
    for _ in range(count):
        interests = []
        for tag in rng.sample(tags, rng.randint(1, 4)):
            keywords = (rng.choice(["draft model", "kv cache", "benchmark", "robot arm"]),)
            interests.append(
                Interest(tag, rng.choice([1.0, 1.0, 2.0]), keywords if rng.random() < 0.2 else ())
            )
        exclude = (rng.choice(tags),) if rng.random() < 0.3 else ()
        out.append(Profile(tuple(interests), exclude, max_items=rng.choice([5, 10, 20])))
    return out


def digest(rankings: list) -> str:
    """What was ranked, to the last character: order, score, reason and evidence."""
    h = hashlib.sha256()
    for items in rankings:
        h.update(b"\n")
        for it in items:
            fields = [it.paper.title, it.score, it.matched, it.why, it.evidence]
            h.update(json.dumps(fields, default=str).encode())
    return h.hexdigest()[:16]


def judged_tags() -> list[str]:
    tags: set[str] = set()
    for path in sorted(DATA.glob("relevance*.yaml")):
        tags.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return sorted(tags)


def child(args: argparse.Namespace) -> None:
    """Runs inside the checkout under test (its paperpost comes from PYTHONPATH)."""
    import paperpost
    from paperpost.rank import Background, Interest, MatchCache, Profile, rank_many

    assert Path(paperpost.__file__).resolve().is_relative_to(Path(args.tree).resolve())
    from rank_quality import shared_papers

    everything = shared_papers()
    papers = everything[: args.papers]
    people = profiles(args.subscribers)
    # the pipeline computes the word weights once per run, over the history
    background = Background.of(everything)
    cache = MatchCache()  # one per run, as the pipeline passes it
    walls, cpus, ranks = [], [], set()
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        ranked = rank_many(papers, people, background=background, cache=cache)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        ranks.add(digest(ranked))
    tags = judged_tags()
    readers = [Profile((Interest(t),), min_score=0.0, max_items=50) for t in tags]
    readers += [Profile((Interest(t),)) for t in tags]
    judged = digest(rank_many(everything, readers, background=background))
    distinct = len({(i.tag, i.keywords) for p in people for i in p.interests})
    print(
        json.dumps(
            {
                "walls": walls,
                "cpus": cpus,
                "ranks": sorted(ranks),
                "judged": judged,
                "tags": len(tags),
                "distinct": distinct,
            }
        )
    )


def run(tree: Path, args: argparse.Namespace) -> dict:
    argv = ["--child", "--tree", str(tree), "--subscribers", str(args.subscribers)]
    argv += ["--papers", str(args.papers), "--repeat", str(args.repeat)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
    return run_in_tree(__file__, tree, env, *argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    add_checkout_args(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    trees = checkouts(args)
    results: dict[str, list[dict]] = {name: [] for name in trees}
    loads = []
    for _ in range(args.pairs):
        before = os.getloadavg()[0]
        for name, tree in trees.items():
            out = results[name]
            out.append(run(tree, args))
            print(
                f"{name}: first {out[-1]['walls'][0]:.2f} s "
                f"(CPU {out[-1]['cpus'][0]:.2f}), load {os.getloadavg()[0]:.1f}"
            )
        loads.append((before, os.getloadavg()[0]))
    rows = []
    for name, out in results.items():
        first = [o["walls"][0] for o in out]
        later = [statistics.median(o["walls"][1:] or o["walls"]) for o in out]
        first_cpu = [o["cpus"][0] for o in out]
        later_cpu = [statistics.median(o["cpus"][1:] or o["cpus"]) for o in out]
        ratio = ""
        if "before" in results and name == "after":
            pairs = [
                statistics.median(b["cpus"][1:] or b["cpus"])
                / statistics.median(a["cpus"][1:] or a["cpus"])
                for a, b in zip(out, results["before"], strict=True)
            ]
            ratio = f"{statistics.median(pairs):.2f}x ({', '.join(f'{p:.2f}' for p in pairs)})"
        same = ""
        if "before" in results:
            ranks = {r for o in results.values() for d in o for r in d["ranks"]}
            judged = {d["judged"] for o in results.values() for d in o}
            same = f"{'yes' if len(ranks) == 1 else 'NO'} / {'yes' if len(judged) == 1 else 'NO'}"
        rows.append(
            [
                name,
                args.subscribers,
                args.papers,
                out[0]["distinct"],
                statistics.median(first),
                statistics.median(first_cpu),
                statistics.median(later),
                statistics.median(later_cpu),
                ", ".join(f"{x:.2f}" for x in later),
                ratio,
                same,
                ", ".join(f"{a:.1f}-{b:.1f}" for a, b in loads),
            ]
        )
    report(
        "rank_speed",
        [
            "checkout",
            "subscribers",
            "papers",
            "distinct interests",
            "first s",
            "first CPU s",
            "later s",
            "later CPU s",
            "later s per round",
            "before/after later CPU (per round)",
            "same ranks / judged tags",
            "load per round",
        ],
        rows,
        {"results": results, "loads": loads, "trees": {k: str(v) for k, v in trees.items()}},
    )


if __name__ == "__main__":
    main()
