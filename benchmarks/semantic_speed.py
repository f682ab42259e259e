"""What the semantic signal costs: encoding a day's papers, and ranking with it on.

    python benchmarks/semantic_speed.py [--papers 100] [--subscribers 10000] [--pairs 3]

Two measurements, each in fresh processes, run in pairs (A B A B ...) and reported as medians
with wall and process CPU seconds (CPU is what a shared, loaded machine cannot inflate) and
the load average before and after every pair:

- **encode**: load the model (weights read and SHA-256 checked) and compute the vectors of
  ``--papers`` papers of ../shared (title and abstract), as a run does for its new papers
  (issue #11: under 10 s a day for 100 papers on 2 cores). BLAS uses every core.
- **rank**: ``rank_many`` for ``--subscribers`` readers x 300 papers, the signal off (A) and on
  (B), with the paper vectors already computed (as the database gives them to a run: cached).
  Readers get 1-4 tags, a third of them tags that are not vocabulary topics (the judged blind
  tags of benchmarks/data, which the signal applies to). "first" is the first call (the tag
  vectors are computed there), "later" the median of the calls after it (issue #11: 10,000 x
  300 under 2 s).
Writes results/semantic_speed.json.

    python benchmarks/semantic_speed.py encode [--papers 100] [--pairs 3]

Only the encoding (fresh processes, model loaded and checked, ``--papers`` of ../shared), in
pairs: OpenBLAS's own threads (one per core, A) against one thread (B, ``OPENBLAS_NUM_THREADS=1``).
Wall, CPU and the load before and after each pair. Writes results/semantic_encode.json.

    python benchmarks/semantic_speed.py first-run --before OLD_CHECKOUT [--after CHECKOUT]
        [--new 100] [--readers 400] [--pairs 3]

A day's first run with the signal on (``run_plain``, worker processes: batches of 200
readers, so every batch is ranked in a worker), before/after in pairs, each in a fresh
process on a fresh copy of one database: the shared papers but the last ``--new`` as the
history, their vectors stored (earlier runs computed them), then the ``--new`` papers the
run's batches rank, with no vectors yet; ``--readers`` readers of 1-3 tags, a third not
vocabulary topics. CPU is the whole family's (the run and its worker processes, from
``getrusage(RUSAGE_CHILDREN)``); one BLAS thread per process. Writes
results/semantic_first_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, add_checkout_args, checkouts, report, run_in_tree

DATA = HERE / "data"


def blind_tags() -> list[str]:
    tags: set[str] = set()
    for name in ("round1", "blind2", "blind3", "blind4"):
        path = DATA / f"relevance_{name}.yaml"
        tags.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return sorted(tags)


def profiles(count: int, seed: int = 1) -> list:
    from paperpost.rank import Interest, Profile, vocabulary

    rng = random.Random(seed)
    known = sorted({topic.id for topic in vocabulary().values()})
    unknown = blind_tags()
    out = []
    for _ in range(count):
        tags = [rng.choice(unknown if rng.random() < 1 / 3 else known) for _ in range(4)]
        chosen = list(dict.fromkeys(tags))[: rng.randint(1, 4)]
        interests = tuple(Interest(tag, rng.choice([1.0, 1.0, 2.0])) for tag in chosen)
        out.append(Profile(interests, max_items=rng.choice([5, 10, 20])))
    return out


def child_encode(args: argparse.Namespace) -> dict:
    from rank_quality import shared_papers

    from paperpost import semantic

    papers = shared_papers()[: args.papers]
    wall, cpu = time.perf_counter(), time.process_time()
    encoder = semantic.encoder()
    loaded = (time.perf_counter() - wall, time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    encoder.encode([semantic.paper_text(p) for p in papers])
    pieces = sum(len(p) for p in encoder.pieces([semantic.paper_text(p) for p in papers]))
    return {
        "load": loaded,
        "encode": (time.perf_counter() - wall, time.process_time() - cpu),
        "pieces": pieces,
    }


def child_rank(args: argparse.Namespace) -> dict:
    from rank_quality import shared_papers

    from paperpost.rank import Background, MatchCache, rank_many

    everything = shared_papers()
    papers = everything[:300]
    people = profiles(args.subscribers)
    vectors = None
    if args.on:  # the papers' vectors as the database holds them for a run: computed before
        from paperpost import semantic

        stored = np.load(args.vectors)
        keys = stored["keys"].tolist()
        vectors = semantic.Vectors(dict(zip(keys, stored["vectors"], strict=True)))
    cache = MatchCache(vectors=vectors)
    background = Background.of(everything, cache)
    walls, cpus = [], []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        rank_many(papers, people, background=background, cache=cache)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"walls": walls, "cpus": cpus}


def child_first_run_template(args: argparse.Namespace) -> dict:
    """The database a day's first run starts from (see the module's docstring)."""
    from rank_quality import shared_papers

    from paperpost import semantic
    from paperpost.rank import vocabulary
    from paperpost.store import Store

    papers = shared_papers()
    history, new = papers[: -args.new], papers[-args.new :]
    stored = np.load(args.vectors)
    vectors = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))
    store = Store(f"sqlite:///{args.template}")
    store.ingest("history", history)
    keys = [semantic.text_key(p) for p in history]
    store.save_vectors(semantic.MODEL_KEY, {k: semantic.encode_vector(vectors[k]) for k in keys})
    run_id = store.start_run()
    store.finish_run(store.plan_run(run_id).run_id, "finished", {})
    store.ingest("today", new)
    rng = random.Random(2)
    known = sorted({topic.id for topic in vocabulary().values()})
    unknown = blind_tags()
    readers = []
    for n in range(args.readers):
        tags = [rng.choice(unknown if rng.random() < 1 / 3 else known) for _ in range(3)]
        readers.append({"email": f"r{n}@example.org", "tags": list(dict.fromkeys(tags))})
    (Path(args.work) / "readers.yaml").write_text(json.dumps(readers))  # JSON is YAML
    return {"history": len(history), "new": len(new)}


def child_first_run(args: argparse.Namespace) -> dict:
    """One day's first run on a fresh copy of the template (the tree's own paperpost)."""
    from datetime import date

    import paperpost
    from paperpost.pipeline import run_plain
    from paperpost.settings import Settings

    assert Path(paperpost.__file__).resolve().is_relative_to(Path(args.tree).resolve())
    work = Path(args.work)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    (run / "subscribers").mkdir(parents=True)
    (run / "no-dumps").mkdir()
    shutil.copy(work / "readers.yaml", run / "subscribers" / "readers.yaml")
    shutil.copy(args.template, run / "run.db")
    settings = Settings(
        database_url=f"sqlite:///{run / 'run.db'}",
        sources=[str(run / "no-dumps")],
        subscribers_dir=run / "subscribers",
        outbox_dir=run / "outbox",
        state_dir=run / "state",
        semantic=True,
        batch_size=200,
        _env_file=None,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    summary = run_plain(settings, date(2026, 11, 26))
    return {
        "wall": time.perf_counter() - wall,
        "cpu_run_process": time.process_time() - cpu,
        "sent": summary.digests_sent,
        "papers_new": summary.papers_new,
    }


def first_run(args: argparse.Namespace) -> None:
    trees = checkouts(args)
    if len(trees) < 2:
        raise SystemExit("first-run compares two checkouts: give --before")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    template = work / "template.db"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    common = ["--work", str(work), "--template", str(template), "--vectors", args.vectors]
    common += ["--new", str(args.new), "--readers", str(args.readers)]
    made = run_in_tree(__file__, trees["after"], env, "--child", "template", *common)
    results: dict[str, list[dict]] = {name: [] for name in trees}
    loads = []
    for _ in range(args.pairs):
        before = os.getloadavg()[0]
        for name, tree in trees.items():
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = run_in_tree(
                __file__, tree, env, "--child", "first-run", "--tree", str(tree), *common
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            done["cpu_family"] = (after.ru_utime + after.ru_stime) - (used.ru_utime + used.ru_stime)
            results[name].append(done)
            print(
                f"{name}: run {done['wall']:.1f} s wall, family {done['cpu_family']:.1f} CPU s, "
                f"{done['sent']} digests; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        loads.append((before, os.getloadavg()[0]))
    shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    ratios = [
        a["cpu_family"] / b["cpu_family"]
        for a, b in zip(results["after"], results["before"], strict=True)
    ]
    load_text = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in loads)
    rows: list[list[object]] = [
        [
            name,
            med([r["wall"] for r in runs]),
            med([r["cpu_family"] for r in runs]),
            med([r["cpu_run_process"] for r in runs]),
            runs[0]["sent"],
            load_text,
        ]
        for name, runs in results.items()
    ]
    rows.append(
        [
            "after/before, family CPU per pair",
            "",
            med(ratios),
            "",
            "",
            ", ".join(f"{r:.2f}" for r in ratios),
        ]
    )
    report(
        "semantic_first_run",
        [
            f"code ({made['history']} papers of history, {made['new']} new, {args.readers} "
            "readers)",
            "run wall s (median)",
            "family CPU s (median)",
            "run process CPU s",
            "digests",
            "load per pair",
        ],
        rows,
        {"results": results, "loads": loads, "trees": {k: str(v) for k, v in trees.items()}},
    )


def encode_pairs(args: argparse.Namespace) -> None:
    common = ["--papers", str(args.papers)]
    variants = {"BLAS threads: one per core": {}, "one BLAS thread": {"OPENBLAS_NUM_THREADS": "1"}}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    loads = []
    for _ in range(args.pairs):
        before = os.getloadavg()[0]
        for name, extra in variants.items():
            env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
            done = run_with(env | extra, "--child", "encode", *common)
            results[name].append(done)
            print(
                f"{name}: encode {done['encode'][0]:.2f} s wall, {done['encode'][1]:.2f} CPU s "
                f"(load {done['load'][0]:.2f} s); load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        loads.append((before, os.getloadavg()[0]))
    med = statistics.median
    load_text = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in loads)
    rows: list[list[object]] = []
    for name, runs in results.items():
        rows.append(
            [
                name,
                med([r["encode"][0] for r in runs]),
                med([r["encode"][1] for r in runs]),
                med([r["load"][0] + r["encode"][0] for r in runs]),
                med([r["load"][1] + r["encode"][1] for r in runs]),
                load_text,
            ]
        )
    first, second = results.values()
    ratios = [a["encode"][0] / b["encode"][0] for a, b in zip(first, second, strict=True)]
    rows.append(
        ["wall ratio per pair (A/B)", ", ".join(f"{r:.2f}" for r in ratios), "", "", "", ""]
    )
    report(
        "semantic_encode",
        [
            f"encode {args.papers} papers ({results[next(iter(results))][0]['pieces']} pieces)",
            "wall s (median)",
            "CPU s (median)",
            "with model load: wall s",
            "CPU s",
            "load per pair",
        ],
        rows,
        {"results": results, "loads": loads},
    )


def run_with(env: dict[str, str], *argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["all", "encode", "first-run"], default="all")
    parser.add_argument("--papers", type=int, default=100)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--readers", type=int, default=400)
    parser.add_argument("--work", default="/tmp/pp-semantic-first-run")
    parser.add_argument("--template", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    add_checkout_args(parser)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--child", choices=["encode", "rank", "template", "first-run"], help=argparse.SUPPRESS
    )
    parser.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", default=str(RESULTS / "semantic_vectors.npz"))
    args = parser.parse_args()
    if args.child:
        fn = {
            "encode": child_encode,
            "rank": child_rank,
            "template": child_first_run_template,
            "first-run": child_first_run,
        }[args.child]
        print(json.dumps(fn(args)))
        return
    if args.what == "encode":
        encode_pairs(args)
        return
    vectors = Path(args.vectors)
    if not vectors.exists():  # the shared papers' vectors, once (the database's role)
        from rank_quality import shared_papers

        from paperpost import semantic

        papers = shared_papers()
        found = semantic.Vectors()
        vectors.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            vectors,
            keys=np.array([found.key(p) for p in papers]),
            vectors=found.of(papers),
        )
    if args.what == "first-run":
        first_run(args)
        return
    common = ["--papers", str(args.papers), "--subscribers", str(args.subscribers)]
    common += ["--repeat", str(args.repeat), "--vectors", str(vectors)]
    encodes, off, on, loads = [], [], [], []
    for _ in range(args.pairs):
        before = os.getloadavg()[0]
        encodes.append(run("--child", "encode", *common))
        off.append(run("--child", "rank", *common))
        on.append(run("--child", "rank", "--on", *common))
        loads.append((before, os.getloadavg()[0]))
        print(
            f"encode {encodes[-1]['encode'][0]:.2f} s (CPU {encodes[-1]['encode'][1]:.2f}); "
            f"rank later off {statistics.median(off[-1]['walls'][1:]):.2f} s, "
            f"on {statistics.median(on[-1]['walls'][1:]):.2f} s; load {os.getloadavg()[0]:.1f}"
        )

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def later(o: dict, key: str) -> float:
        return med(o[key][1:] or o[key])

    load_text = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in loads)
    rows: list[list[object]] = [
        [
            f"load model + encode {args.papers} papers",
            med([e["load"][0] + e["encode"][0] for e in encodes]),
            med([e["load"][1] + e["encode"][1] for e in encodes]),
            f"encode alone {med([e['encode'][0] for e in encodes]):.2f} s wall, "
            f"{med([e['encode'][1] for e in encodes]):.2f} CPU s; "
            f"{encodes[0]['pieces']} word pieces",
            load_text,
        ]
    ]
    for name, runs in (("signal off", off), ("signal on", on)):
        rows.append(
            [
                f"rank {args.subscribers} x 300, {name}, first call",
                med([o["walls"][0] for o in runs]),
                med([o["cpus"][0] for o in runs]),
                "",
                load_text,
            ]
        )
        ratio = ""
        if runs is on:
            pairs = [later(b, "cpus") / later(a, "cpus") for a, b in zip(off, on, strict=True)]
            ratio = "on/off CPU per pair: " + ", ".join(f"{p:.2f}" for p in pairs)
        rows.append(
            [
                f"rank {args.subscribers} x 300, {name}, later calls",
                med([later(o, "walls") for o in runs]),
                med([later(o, "cpus") for o in runs]),
                ratio,
                load_text,
            ]
        )
    report(
        "semantic_speed",
        ["what", "wall s (median)", "CPU s (median)", "notes", "load per pair"],
        rows,
        {"encode": encodes, "off": off, "on": on, "loads": loads},
    )


if __name__ == "__main__":
    main()
