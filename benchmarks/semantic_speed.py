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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, report

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


def run(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--child", choices=["encode", "rank"], help=argparse.SUPPRESS)
    parser.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", default=str(RESULTS / "semantic_vectors.npz"))
    args = parser.parse_args()
    if args.child:
        fn = child_encode if args.child == "encode" else child_rank
        print(json.dumps(fn(args)))
        return
    vectors = Path(args.vectors)
    if not vectors.exists():  # the shared papers' vectors, once (the database's role)
        from rank_quality import shared_papers

        from paperpost import semantic

        papers = shared_papers()
        found = semantic.Vectors()
        np.savez(
            vectors,
            keys=np.array([found.key(p) for p in papers]),
            vectors=found.of(papers),
        )
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
