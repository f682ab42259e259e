"""Peak memory of the plain path against the size of the subscriber list.

    python benchmarks/memory.py [--sizes 10000 100000 1000000] [--due 0.01]
        [--mode run|load] [--before /path/to/older/checkout]

A generated list file of N subscribers (one file, 1-4 tags each); a share ``--due`` of them
is daily (gets a digest today), the rest weekly on another weekday (read, checked and
skipped), so a million-subscriber list can be measured without sending a million digests.
``--mode run`` runs ``run_plain`` (300 new papers, outbox, SQLite); ``--mode load`` only
reads the list the way the plain path does (the older checkout: ``load_subscribers``).
Each case runs in a fresh process; peak RSS is that process's ``ru_maxrss``, the workers'
column the sum of its worker processes' peaks (ranking and rendering run there), and "family
peak" the peak of the summed RSS of the process and all its descendants, polled from /proc
every 0.2 s by this script (the processes' peaks need not fall at the same moment, so it can
be lower than process + workers). CPU seconds are the family's (process and workers); the
load average is read before and after each case.
"""

from __future__ import annotations

import sys
import time

START = time.perf_counter()


def child(mode: str) -> None:
    import json
    import os
    import resource
    from pathlib import Path

    from paperpost import subscribers

    result: dict[str, object] = {"paperpost_file": subscribers.__file__}
    folder = Path(os.environ["PAPERPOST_SUBSCRIBERS_DIR"])
    clock = time.perf_counter()
    if mode == "load":
        if hasattr(subscribers, "iter_subscribers"):
            errors: list = []
            result["loaded"] = sum(1 for _ in subscribers.iter_subscribers(folder, errors))
            result["api"] = "iter_subscribers (streamed)"
        else:
            loaded, errors = subscribers.load_subscribers(folder)
            result["loaded"] = len(loaded)
            result["api"] = "load_subscribers (materialised)"
    else:
        from paperpost.pipeline import run_plain
        from paperpost.settings import Settings

        summary = run_plain(Settings())
        result["sent"] = summary.digests_sent
        result["skipped"] = summary.digests_skipped
    result["seconds"] = time.perf_counter() - clock
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import family_usage

    cpu, _, workers = family_usage()  # with the ranking and rendering processes
    result["workers_peak_rss_mb"] = workers
    result["cpu_seconds"] = cpu
    print(json.dumps(result))


if __name__ == "__main__" and "--case" in sys.argv:
    child(sys.argv[sys.argv.index("--case") + 1])
    sys.exit(0)

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from end_to_end import prepare

from common import FamilySampler, add_checkout_args, checkouts, report

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def write_list(path: Path, size: int, due: float) -> int:
    from paperpost.rank import vocabulary

    tags = sorted({t.id for t in vocabulary().values()})
    today = datetime.now(UTC).weekday()
    other = WEEKDAYS[(today + 3) % 7]
    rng = random.Random(size)
    daily = 0
    with path.open("w") as out:
        for i in range(size):
            chosen = ", ".join(rng.sample(tags, rng.randint(1, 4)))
            entry = f"- email: reader{i}@example.org\n  tags: [{chosen}]\n"
            if rng.random() < due:
                daily += 1
            else:
                entry += f"  cadence: weekly\n  weekday: {other}\n"
            out.write(entry)
    return daily


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--due", type=float, default=0.01, help="share of subscribers due today")
    parser.add_argument("--mode", choices=["run", "load"], default="run")
    add_checkout_args(parser)
    parser.add_argument("--name", default="memory", help="results/<name>.json")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the lists, databases and outboxes (deleted by default)",
    )
    args = parser.parse_args()
    trees = checkouts(args)
    root = Path(tempfile.mkdtemp(prefix="pp-memory-"))
    rows, runs = [], []
    for size in args.sizes:
        data = root / f"data-{size}"
        prepare(data, 1)  # the dumps (and a one-line list, replaced next)
        daily = write_list(data / "subscribers.yaml", size, args.due)
        for tree, path in trees.items():
            work = root / f"{size}-{tree}"
            env = {
                **os.environ,
                "PYTHONPATH": str(path),
                "PAPERPOST_SOURCES": json.dumps([str(data / "dumps")]),
                "PAPERPOST_SUBSCRIBERS_DIR": str(data / "subscribers.yaml"),
                "PAPERPOST_DATABASE_URL": f"sqlite:///{work / 'pp.db'}",
                "PAPERPOST_OUTBOX_DIR": str(work / "outbox"),
                "PAPERPOST_SECRET_KEY": "benchmark-only-key-0123456789abcdef0123456789",
                "PAPERPOST_DELIVERY": "outbox",
            }
            load_before = os.getloadavg()
            with (
                tempfile.TemporaryFile("w+") as out,
                tempfile.TemporaryFile("w+") as err,
            ):
                child = subprocess.Popen(
                    [sys.executable, __file__, "--case", args.mode],
                    env=env,
                    stdout=out,
                    stderr=err,
                    text=True,
                    cwd=path,
                )
                with FamilySampler(child.pid) as sampler:
                    child.wait()
                out.seek(0), err.seek(0)
                if child.returncode:
                    raise RuntimeError(f"{tree} at {size} failed:\n{err.read()[-3000:]}")
                result = json.loads(out.read().strip().splitlines()[-1])
            if args.mode == "run" and daily and not result["sent"]:
                raise RuntimeError(f"{tree} at {size} sent nothing: is ../shared there?")
            result["family_peak_rss_mb"] = sampler.peak_sum_mb
            result["samples"] = sampler.samples
            result["load"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            if not result["paperpost_file"].startswith(str(path)):
                raise RuntimeError(f"{tree} imported {result['paperpost_file']}")
            result.update(size=size, tree=tree, daily=daily, mode=args.mode)
            runs.append(result)
            rows.append(
                [
                    size,
                    daily,
                    tree,
                    args.mode,
                    result["peak_rss_mb"],
                    result.get("workers_peak_rss_mb", 0.0),
                    result["peak_rss_mb"] + result.get("workers_peak_rss_mb", 0.0),
                    result["family_peak_rss_mb"],
                    result["seconds"],
                    result.get("cpu_seconds", 0.0),
                    "-".join(str(x) for x in result["load"]),
                    result.get("sent", result.get("loaded", "")),
                ]
            )
            print(rows[-1], flush=True)
    report(
        args.name,
        [
            "subscribers",
            "due today",
            "code",
            "mode",
            "peak RSS MB",
            "workers' peak RSS MB",
            "summed MB",
            "family peak MB",
            "seconds",
            "CPU s",
            "load",
            "sent/loaded",
        ],
        rows,
        {"runs": runs, "due": args.due},
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
