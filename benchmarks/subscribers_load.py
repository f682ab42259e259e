"""Load 100,000 subscribers: as 100,000 files, and as one list file (issue: under 30 s each).

python benchmarks/subscribers_load.py [--count 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORDS, peak_rss_mb, report
from paperpost.subscribers import load_subscribers

ENTRY = """email: reader{i}@example.org
name: Reader {i}
tags:
  - {a}
  - tag: {b}
    weight: 2
    keywords: [{c}]
exclude: [{d}]
cadence: {cadence}
max_items: {n}
"""


def entry(i: int) -> str:
    w = WORDS
    return ENTRY.format(
        i=i,
        a=w[i % len(w)],
        b=w[(i * 7) % len(w)],
        c=w[(i * 13) % len(w)],
        d=w[(i * 17) % len(w)],
        cadence="weekly" if i % 5 == 0 else "daily",
        n=5 + i % 20,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder, "files")
        files.mkdir()
        for i in range(args.count):
            (files / f"reader{i}.yaml").write_text(entry(i))
        start = time.perf_counter()
        loaded, errors = load_subscribers(files)
        rows.append(
            ["one file each", args.count, len(loaded), len(errors), time.perf_counter() - start]
        )
        listed = Path(folder, "list")
        listed.mkdir()
        text = "".join(
            "- " + entry(i).replace("\n", "\n  ").rstrip() + "\n" for i in range(args.count)
        )
        (listed / "everyone.yaml").write_text(text)
        start = time.perf_counter()
        loaded, errors = load_subscribers(listed)
        rows.append(
            ["one list file", args.count, len(loaded), len(errors), time.perf_counter() - start]
        )
    report(
        "subscribers_load",
        ["layout", "subscribers", "valid", "errors", "seconds"],
        rows,
        {"peak_rss_mb": peak_rss_mb()},
    )
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
