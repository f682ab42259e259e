"""Rank 300 new papers for 10,000 subscribers at once (target: under 2 s on 2 cores).

    python benchmarks/rank_speed.py [--subscribers 10000] [--papers 300] [--repeat 3]

Subscribers get 1-4 random tags from the vocabulary (some with their own keywords and
weights) and sometimes an exclusion; papers are the real ones from ../shared. "first" is the
first call (papers parsed, evidence computed into the run's MatchCache); later calls reuse that
cache, as a run's batches do. Prints process CPU seconds per call beside wall time: CPU is what
a shared, loaded machine cannot inflate.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rank_quality import shared_papers

from common import median_time, report
from paperpost.rank import Background, Interest, MatchCache, Profile, rank_many, vocabulary


def profiles(count: int, seed: int = 1) -> list[Profile]:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    papers = shared_papers()[: args.papers]
    people = profiles(args.subscribers)
    # the pipeline computes the word weights once per run, over the history
    background = Background.of(shared_papers())
    cache = MatchCache()  # one per run, as the pipeline passes it
    cpu: list[float] = []

    def call() -> None:
        start = time.process_time()
        rank_many(papers, people, background=background, cache=cache)
        cpu.append(time.process_time() - start)

    median, times = median_time(call, args.repeat)
    distinct = len({(i.tag, i.keywords) for p in people for i in p.interests})
    later = statistics.median(cpu[1:] or cpu)
    rows = [
        [
            args.subscribers,
            len(papers),
            distinct,
            times[0],
            median,
            cpu[0],
            later,
            os.getloadavg()[0],
        ]
    ]
    report(
        "rank_speed",
        [
            "subscribers",
            "papers",
            "distinct interests",
            "first s",
            "median s",
            "first CPU s",
            "later CPU s (median)",
            "load",
        ],
        rows,
        {"times": times, "cpu": cpu},
    )


if __name__ == "__main__":
    main()
