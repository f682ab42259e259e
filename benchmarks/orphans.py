"""SIGKILL `paperpost run` at random moments; count the processes it leaves behind.

    python benchmarks/orphans.py [--kills 10]

before: the flow with Prefect's own temporary server (a child process); after: `paperpost run`
(the Prefect API on a thread of its own process). Each run gets a marker in its environment,
which every process it starts inherits; 2 s after the kill, every process still carrying the
marker is an orphan: counted with its RSS, then killed. Kill moments are uniform over the
length of a warm run (measured first), so they land in start-up, server start and the flow.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def marked(token: str) -> list[tuple[int, int]]:
    """(pid, RSS kB) of every live process whose environment holds the marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"PAPERPOST_ORPHAN_PROBE={token}".encode() not in (entry / "environ").read_bytes():
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        rss = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0
        )
        found.append((int(entry.name), rss))
    return found


def command(mode: str) -> list[str]:
    if mode == "before":
        return [sys.executable, str(HERE / "startup.py"), "--drive", "before"]
    return [str(Path(sys.executable).with_name("paperpost")), "run"]


def launch(mode: str, workdir: Path, home: Path, token: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPERPOST_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(home), PAPERPOST_ORPHAN_PROBE=token, DO_NOT_TRACK="1")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    shutil.rmtree(workdir / "state", ignore_errors=True)
    shutil.rmtree(workdir / "outbox", ignore_errors=True)
    return subprocess.Popen(
        command(mode), cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per mode")
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args()
    from common import report

    rng = random.Random(args.seed)
    rows, details = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("before", "after"):
            workdir, home = Path(tmp) / f"work-{mode}", Path(tmp) / f"home-{mode}"
            workdir.mkdir()
            for _ in range(2):  # the first run migrates Prefect's database; time the second
                clock = time.perf_counter()
                launch(mode, workdir, home, "warm-up").wait(timeout=600)
                length = time.perf_counter() - clock
            kills = []
            for _ in range(args.kills):
                token = uuid.uuid4().hex
                at = rng.uniform(0.2, length)
                run = launch(mode, workdir, home, token)
                time.sleep(at)
                finished = run.poll() is not None
                run.send_signal(signal.SIGKILL)
                run.wait()
                time.sleep(2)
                left = marked(token)
                for pid, _ in left:
                    os.kill(pid, signal.SIGKILL)
                kills.append(
                    {
                        "at": round(at, 2),
                        "finished_first": finished,
                        "orphans": len(left),
                        "rss_mb": round(sum(kb for _, kb in left) / 1024, 1),
                    }
                )
            details[mode] = {"warm_run_seconds": length, "kills": kills}
            hit = [k for k in kills if k["orphans"]]
            rows.append(
                [
                    mode,
                    len(kills),
                    sum(k["finished_first"] for k in kills),
                    len(hit),
                    sum(k["orphans"] for k in kills),
                    sum(k["rss_mb"] for k in kills),
                    round(length, 1),
                ]
            )
    report(
        "orphans",
        ["mode", "kills", "run ended first", "kills leaving orphans", "orphans", "RSS MB", "run s"],
        rows,
        details,
    )


if __name__ == "__main__":
    main()
