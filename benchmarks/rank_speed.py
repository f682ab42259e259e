"""Rank 300 new papers for 10,000 subscribers at once (target: under 2 s on 2 cores).

    python benchmarks/rank_speed.py [--subscribers 10000] [--papers 300] [--repeat 3]

Subscribers get 1-4 random tags from the vocabulary (some with their own keywords and
weights) and sometimes an exclusion; papers are the real ones from ../shared. "first" is the
first call (papers parsed, evidence computed); later calls reuse that, as a run's batches do.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rank_quality import shared_papers

from common import median_time, report
from paperpost.rank import Background, Interest, Profile, rank_many, vocabulary


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
    median, times = median_time(
        lambda: rank_many(papers, people, background=background), args.repeat
    )
    distinct = len({(i.tag, i.keywords) for p in people for i in p.interests})
    rows = [[args.subscribers, len(papers), distinct, times[0], median, args.subscribers / median]]
    report(
        "rank_speed",
        ["subscribers", "papers", "distinct interests", "first s", "median s", "subscribers/s"],
        rows,
        {"times": times},
    )


if __name__ == "__main__":
    main()
