"""Parse and diff 100,000 synthetic papers against a 1,000,000-paper history (SQLite).

    python benchmarks/ingest.py [--history 1000000] [--batch 100000] [--overlap 0.3]

The history is built first (in its own process); the measured phase runs in a fresh process
so its peak memory is its own: render the batch as a text dump, parse it, ingest it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import peak_rss_mb, report
from paperpost.dumps import parse_dump
from paperpost.store import Store
from paperpost.synthetic import papers as synthetic_papers

HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
HEADER += "byAK and the research community\n\nNov 24\n\n"


def build_history(url: str, count: int) -> float:
    store = Store(url)
    start = time.perf_counter()
    step = 100_000
    for offset in range(0, count, step):
        store.ingest(
            f"history-{offset}", synthetic_papers(min(step, count - offset), offset, prefix="h ")
        )
    return time.perf_counter() - start


def measure(url: str, batch: int, overlap: float, queue: mp.Queue) -> None:
    old = synthetic_papers(int(batch * overlap), 0, prefix="h ")  # already in the history
    fresh = synthetic_papers(batch - len(old), 7, prefix="n ")
    dump = HEADER + "\n\n".join(f"{p.title}\n\n{p.abstract}" for p in old + fresh) + "\n"
    content = dump.encode()
    store = Store(url)
    start = time.perf_counter()
    parsed = parse_dump(content, "batch.txt", date(2026, 11, 25))
    parse_s = time.perf_counter() - start
    counts = store.ingest("batch.txt", parsed.papers)
    total_s = time.perf_counter() - start
    queue.put(
        {
            "parse_s": parse_s,
            "diff_s": total_s - parse_s,
            "total_s": total_s,
            "papers": len(parsed.papers),
            "new": counts.new,
            "dump_mb": len(content) / 1e6,
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--overlap", type=float, default=0.3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            build_s = pool.apply(build_history, (url, args.history))
        queue = ctx.Queue()
        child = ctx.Process(target=measure, args=(url, args.batch, args.overlap, queue))
        child.start()
        result = queue.get()
        child.join()
        db_mb = Path(folder, "bench.db").stat().st_size / 1e6
    rows = [
        ["history papers", args.history],
        ["history build (s)", build_s],
        ["batch papers", result["papers"]],
        ["of which new", result["new"]],
        ["dump size (MB)", result["dump_mb"]],
        ["parse (s)", result["parse_s"]],
        ["diff + store (s)", result["diff_s"]],
        ["parse + diff (s)", result["total_s"]],
        ["peak RSS of the measured process (MB)", result["peak_rss_mb"]],
        ["database size (MB)", db_mb],
    ]
    report("ingest", ["measure", "value"], rows, {"args": vars(args)})


if __name__ == "__main__":
    main()
