"""Helpers shared by the benchmarks: result tables and JSON output (generated papers come
from :mod:`paperpost.synthetic`)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = (
    "language model diffusion agent reasoning speculative decoding quantization sparse expert "
    "mixture routing retrieval speech synthesis vision transformer policy reward robot graph "
    "kernel attention cache memory latency throughput benchmark evaluation dataset training "
    "inference scaling law alignment preference safety image video audio token tokenizer "
    "multimodal embedding contrastive federated privacy causal bayesian posterior variational"
).split()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc), e.g. paperpost's worker processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def peak_rss_of(pid: int) -> float:
    """A live process's peak RSS in MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def family_usage() -> tuple[float, float, float]:
    """This process and its live children (paperpost's worker processes): CPU seconds of
    all of them, this process's peak RSS and the sum of the children's peak RSS, in MB."""
    me = os.getpid()
    children = children_of(me)
    cpu = cpu_of(me)
    rss = 0.0
    for pid in children:
        try:
            cpu += cpu_of(pid)
            rss += peak_rss_of(pid)
        except OSError:
            continue
    return cpu, peak_rss_mb(), rss


class FamilySampler:
    """Polls a process and every process descended from it (Linux /proc) every ``interval``
    seconds on a thread: the peak of their summed RSS (what the machine had to hold at once),
    the number of samples, and each process's own peak RSS (VmHWM) as last seen alive."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak_sum_mb = 0.0
        self.samples = 0
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FamilySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def family(self) -> list[int]:
        parents: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += parents.get(pid, [])
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0.0
            for pid in self.family():
                try:
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                except OSError:
                    continue
                fields = {line.split(":")[0]: line.split()[1:2] for line in status}
                if fields.get("VmRSS"):
                    total += int(fields["VmRSS"][0]) / 1024
                if fields.get("VmHWM"):
                    self.peaks[pid] = int(fields["VmHWM"][0]) / 1024
            self.samples += 1
            self.peak_sum_mb = max(self.peak_sum_mb, total)


def median_time(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def report(name: str, headers: list[str], rows: list[list[object]], extra: dict) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(" | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(_fmt(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"headers": headers, "rows": rows, **extra}, indent=2, default=str))
    print(f"\nwritten: {out}")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def add_checkout_args(parser: argparse.ArgumentParser) -> None:
    """--before (an older checkout) and --after (the one under test, default this one)."""
    parser.add_argument("--before", type=Path, help="an older checkout to compare against")
    parser.add_argument(
        "--after",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the checkout under test (default: this one)",
    )


def checkouts(args: argparse.Namespace) -> dict[str, Path]:
    """The checkouts to run, "before" first when given."""
    trees = {"after": args.after.resolve()}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    return trees


def run_in_tree(script: str, tree: Path, env: dict[str, str], *argv: str) -> dict:
    """Run ``script`` (a benchmark's child mode) with the checkout ``tree`` first on the
    path, and return the JSON of its last output line ({} if it printed nothing)."""
    done = subprocess.run(
        [sys.executable, script, *argv],
        env={**env, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(argv[:4])} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}
