"""Backfills: the rank stage when many papers are new at once, in paired rounds.

    python benchmarks/backfill.py [--case 15000x200 --case 2000x10000] [--pairs 3]
        [--history 10000] [--before /path/to/older/checkout] [--after /path/to/snapshot]

Two cases by default: 15,000 new papers for 200 subscribers, and 2,000 new papers for
10,000 subscribers, each on top of a 10,000-paper history (SQLite). Papers are generated
(paperpost.synthetic, one theme per vocabulary topic, abstracts ~1,000 characters, AI
keywords and TL;DR on half of them); subscribers follow 1-4 tags: vocabulary topics and
aliases, composed tags (a topic with a qualifier, two topics), words the vocabulary does not
know, some with their own keywords, weights, an exclusion and various min_score.

What is timed is the rank stage of a run (``pipeline.rank_stage`` over batches of 2,000
subscribers, as the run does it) in a fresh process; the render and send stages are not.
Variants, each in its own process on its own copy of the prepared database:

* ``cold``: this checkout with the evidence cache empty;
* ``backfill``: this checkout with the history's records stored by an earlier run and the
  new papers never seen (what a real backfill meets);
* ``warm``: this checkout again on the database the ``backfill`` run left (a second run);
* ``before cold`` and ``before warm``: an older checkout (``--before``, one with the evidence
  cache, from 0c8801b on), cold and then a second run on what its cold run left.

Every round runs every variant (before's first); the table gives medians and the per-round
ratio of before's CPU seconds to this checkout's, cold to cold and warm to warm.
Ranks of cold, backfill and warm are compared (they must be identical), and before's with
them (they differ only when the ranker's scoring changed between the checkouts). The load
average is printed with every run and kept in the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_checkout_args, checkouts, report, run_in_tree

# (checkout, variant) in the order each round runs them
VARIANTS = [
    ("before", "cold"),
    ("before", "warm"),
    ("after", "cold"),
    ("after", "backfill"),
    ("after", "warm"),
]
QUALIFIERS = ["efficient", "multilingual", "robust", "long", "small", "open", "medical"]
UNKNOWN = ["protein-design", "zyxt-retrieval", "weather-forecasting", "legal-nlp", "chip-design"]
KEYWORDS = ["draft model", "kv cache", "benchmark", "robot arm", "low-rank", "preference data"]


def subscribers_yaml(count: int, seed: int = 1) -> str:
    """``count`` subscribers as one list file, with realistic mixes of tags."""
    from paperpost.rank import vocabulary

    rng = random.Random(seed)
    names = sorted(vocabulary())  # ids and aliases, as slugs
    topics = sorted({t.id for t in vocabulary().values()})
    entries = []
    for n in range(count):
        tags = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.55:
                tag = rng.choice(topics)
            elif kind < 0.65:
                tag = rng.choice(names).replace(" ", "-")
            elif kind < 0.8:
                tag = f"{rng.choice(QUALIFIERS)}-{rng.choice(topics)}"
            elif kind < 0.9:
                tag = f"{rng.choice(topics)}-for-{rng.choice(topics)}"
            else:
                tag = rng.choice(UNKNOWN)
            entry = {"tag": tag, "weight": rng.choice([1.0, 1.0, 2.0])}
            if rng.random() < 0.15:
                entry["keywords"] = rng.sample(KEYWORDS, rng.randint(1, 2))
            tags.append(entry)
        sub = {"email": f"reader{n}@example.org", "tags": tags}
        if rng.random() < 0.3:
            sub["exclude"] = [rng.choice(topics)]
        sub["min_score"] = rng.choice([0.3, 0.4, 0.4, 0.5])
        sub["max_items"] = rng.choice([5, 10, 20])
        entries.append(sub)
    return json.dumps(entries)  # JSON is YAML


def child(args: argparse.Namespace) -> None:
    """Runs inside the checkout under test (its paperpost comes from PYTHONPATH)."""
    import paperpost
    from paperpost.models import Paper
    from paperpost.pipeline import rank_stage
    from paperpost.store import Store
    from paperpost.subscribers import iter_subscribers

    assert Path(paperpost.__file__).resolve().is_relative_to(Path(args.tree).resolve())
    store = Store(f"sqlite:///{args.db}")
    if args.child == "prepare":
        lines = Path(args.papers).read_text().splitlines()
        papers = [Paper.from_json(json.loads(line)) for line in lines]
        store.ingest("history", papers[: args.history])
        run_id = store.start_run()
        plan = store.plan_run(run_id)
        if args.warm_history:  # an earlier run that ranked the history (stores its records)
            readers = list(iter_subscribers(Path(args.subscribers), []))[:200]
            rank_stage(store, plan, readers, _today(), True)
            with store.engine.begin() as conn:  # they were only there to rank the history
                conn.exec_driver_sql("DELETE FROM subscriber_state")
        store.finish_run(run_id, "finished", {})
        store.ingest("backfill", papers[args.history :])
        return
    readers = list(iter_subscribers(Path(args.subscribers), []))
    run_id = store.start_run()
    plan = store.plan_run(run_id)
    digest = hashlib.sha256()
    start = time.perf_counter()
    cpu = time.process_time()
    for lo in range(0, len(readers), 2000):
        ranked = rank_stage(store, plan, readers[lo : lo + 2000], _today(), True)
        for job in ranked.jobs:
            digest.update(job.reader.email.encode())
            for item in job.items:
                digest.update(f"{item.paper.title}\0{item.score}\0{item.why}\n".encode())
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu": time.process_time() - cpu,
                "window": plan.high_water - plan.low_water,
                "ranks": digest.hexdigest()[:16],
            }
        )
    )


def _today() -> date:
    return date(2026, 11, 25)


def run(tree: Path, env: dict[str, str], *argv: str) -> dict:
    return run_in_tree(__file__, tree, env, "--tree", str(tree), *argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="NEWxSUBSCRIBERS, e.g. 15000x200")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--history", type=int, default=10_000)
    add_checkout_args(parser)
    parser.add_argument("--child", choices=["prepare", "rank"], help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--papers", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", help=argparse.SUPPRESS)
    parser.add_argument("--warm-history", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from paperpost import synthetic

    trees = checkouts(args)
    cases = [tuple(int(x) for x in c.split("x")) for c in args.case or ["15000x200", "2000x10000"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
    work = Path(tempfile.mkdtemp(prefix="backfill-"))
    rows, raw = [], {}
    try:
        for new, readers in cases:
            case = f"{new:,} new x {readers:,} subscribers"
            folder = work / f"subs-{readers}"
            folder.mkdir(exist_ok=True)
            (folder / "list.yaml").write_text(subscribers_yaml(readers))
            themes = synthetic.vocabulary_themes()
            papers = synthetic.papers(args.history, 1, themes, prefix="h ")
            papers += synthetic.papers(new, 2, themes, prefix="n ")
            source = work / f"papers-{new}.jsonl"
            source.write_text("\n".join(json.dumps(p.to_json()) for p in papers))
            templates = {}
            for name, tree in trees.items():
                templates[name] = work / f"{name}-{new}-{readers}.db"
                common = ["--db", str(templates[name]), "--subscribers", str(folder)]
                run(
                    tree,
                    env,
                    "--child",
                    "prepare",
                    *common,
                    "--papers",
                    str(source),
                    "--history",
                    str(args.history),
                    "--warm-history",
                )
            times: dict[str, list[float]] = {}
            cpus: dict[str, list[float]] = {}
            ranks: dict[str, set[str]] = {}
            loads = []
            for _ in range(args.pairs):
                loads.append(os.getloadavg()[0])
                for name, variant in VARIANTS:
                    if name not in trees:
                        continue
                    label = variant if name == "after" else f"{name} {variant}"
                    db = work / f"{name}-{variant}.db"
                    if variant == "warm":  # a second run on what the first one left
                        db = work / f"{name}-{'backfill' if name == 'after' else 'cold'}.db"
                    else:
                        shutil.copy(templates[name], db)
                    if variant == "cold":
                        with sqlite3.connect(db) as conn:
                            conn.execute("DELETE FROM paper_evidence")
                    out = run(
                        trees[name],
                        env,
                        "--child",
                        "rank",
                        "--db",
                        str(db),
                        "--subscribers",
                        str(folder),
                    )
                    times.setdefault(label, []).append(out["seconds"])
                    cpus.setdefault(label, []).append(out["cpu"])
                    ranks.setdefault(label, set()).add(out["ranks"])
                    load = os.getloadavg()[0]
                    loads.append(load)
                    print(
                        f"{case}: {label} {out['seconds']:.1f} s, "
                        f"CPU {out['cpu']:.1f} s (load {load:.1f})"
                    )
            same = len(ranks["cold"] | ranks["backfill"] | ranks["warm"]) == 1
            same_before = "before cold" not in ranks or ranks["before cold"] == ranks["cold"]
            for label, values in times.items():
                ratio = ""
                if label in ("cold", "warm") and f"before {label}" in times:
                    pairs = [
                        b / a for a, b in zip(cpus[label], cpus[f"before {label}"], strict=True)
                    ]
                    ratio = (
                        f"{statistics.median(pairs):.2f}x ({', '.join(f'{p:.2f}' for p in pairs)})"
                    )
                rows.append(
                    [
                        case,
                        label,
                        statistics.median(values),
                        statistics.median(cpus[label]),
                        ", ".join(f"{v:.1f}" for v in values),
                        ratio,
                        "yes" if same else "NO",
                        "yes" if same_before else "NO",
                    ]
                )
            raw[case] = {
                "times": times,
                "cpu": cpus,
                "ranks": {k: sorted(v) for k, v in ranks.items()},
                "load": loads,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(
        "backfill",
        [
            "case",
            "variant",
            "median s",
            "median CPU s",
            "runs s",
            "before/after CPU (per round)",
            "same ranks cold/backfill/warm",
            "same ranks as before",
        ],
        rows,
        {"raw": raw, "trees": {k: str(v) for k, v in trees.items()}},
    )


if __name__ == "__main__":
    main()
