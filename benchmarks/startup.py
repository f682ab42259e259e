"""Where `paperpost run`'s time goes, and how fast the other commands start.

    python benchmarks/startup.py [--cold 3] [--warm 5] [--cli 7]

1. `paperpost run` on the bundled examples, phase by phase, each run a fresh process:
   * before: Prefect's own temporary server (a child process Prefect starts on first use);
   * after: the Prefect API on a thread of the run's process (flows/local_api.py), the flow
     imported while it starts;
   * plain: `--no-prefect`, the same stages without Prefect;
   * command: the whole `paperpost run` command as a user runs it (the in-process API, and no
     interpreter teardown after the flow), wall and CPU only.
   Cold = an empty PREFECT_HOME (the first run on a machine: Prefect migrates its database);
   warm = the same PREFECT_HOME again. Runs alternate before/after so both see the same load.
   Wall seconds per phase (medians) and CPU seconds of the process and its children.
2. Start-up of commands that run no flow (`--help`, parse, rank, preview, subscribers ...):
   median wall seconds of the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def drive(mode: str) -> None:
    """One run in this process, timing its phases; prints them as JSON on the last line."""
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter()))

    from datetime import UTC, datetime

    import paperpost.cli  # noqa: F401  (what the command itself imports first)

    mark("import paperpost CLI")
    today = datetime.now(UTC).date()
    if mode == "plain":
        from paperpost.pipeline import run_plain
        from paperpost.settings import Settings

        run_plain(Settings(), today)
        mark("fetch → send (no Prefect)")
    elif mode == "migrate":
        import asyncio

        from prefect.server.database import provide_database_interface

        mark("import Prefect server")
        asyncio.run(provide_database_interface().create_db())
        mark("migrate an empty Prefect database")
    else:
        spent = {"artefacts": 0.0}
        import prefect.settings  # noqa: F401

        mark("import Prefect (client)")
        if mode == "after":
            from flows.local_api import LocalAPI

            api = LocalAPI().start()
            import flows.digest as module

            mark("import flow (server starting)")
            api.wait_ready()
            mark("API ready")
        else:
            from prefect.server.api.server import SubprocessASGIServer

            import flows.digest as module

            mark("import flow")
            server = SubprocessASGIServer()
            server.start(timeout=300)  # what Prefect's client does on first use
            mark("API ready")
        for name in ("create_markdown_artifact", "create_table_artifact"):
            original = getattr(module, name)

            def timed(*args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
                clock = time.perf_counter()
                result = _original(*args, **kwargs)
                spent["artefacts"] += time.perf_counter() - clock
                return result

            setattr(module, name, timed)
        if mode == "after":
            with api.in_use():
                module.digest(today=today)
                mark("flow run: 6 tasks + 2 artefacts")
            mark("drain logs and events")
            api.stop()
        else:
            module.digest(today=today)  # the server stops at exit, as Prefect arranges
            mark("flow run: 6 tasks + 2 artefacts")
        if mode == "after":
            mark("stop API")
    previous = start
    phases = {}
    for name, when in marks:
        phases[name] = when - previous
        previous = when
    if mode in {"before", "after"}:
        phases["  of which: artefacts"] = spent["artefacts"]
    phases["total in process"] = previous - start
    print(json.dumps(phases))


def measure(mode: str, home: Path, workdir: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPERPOST_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    shutil.rmtree(workdir / "state", ignore_errors=True)
    shutil.rmtree(workdir / "outbox", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    argv = [sys.executable, __file__, "--drive", mode]
    if mode == "command":
        argv = [str(Path(sys.executable).with_name("paperpost")), "run", "--json"]
    done = subprocess.run(
        argv,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    phases = json.loads(done.stdout.strip().splitlines()[-1]) if mode != "command" else {}
    if mode != "command":
        phases["interpreter start + exit"] = wall - phases["total in process"]
    phases["wall (whole process)"] = wall
    phases["CPU s (process + children)"] = (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime
    )
    return phases


def cli_startup(repeat: int) -> list[list[object]]:
    examples = ROOT / "examples"
    commands = [
        ["--help"],
        ["parse", str(examples / "dumps"), "--jsonl"],
        ["rank", "--tag", "agents", str(examples / "dumps")],
        ["preview", "alice@example.org", "--out", "{tmp}/p.html"],
        ["subscribers", "list"],
        ["subscribers", "tags"],
        ["subscribers", "validate"],
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
        env["PAPERPOST_DATABASE_URL"] = f"sqlite:///{tmp}/pp.db"
        paperpost = str(Path(sys.executable).with_name("paperpost"))
        for args in commands:
            argv = [paperpost, *(a.replace("{tmp}", tmp) for a in args)]
            times, cpu = [], []
            for _ in range(repeat):
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                clock = time.perf_counter()
                subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120)
                times.append(time.perf_counter() - clock)
                now = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
            name = "paperpost " + " ".join(a for a in args[:2] if not a.startswith("/"))
            rows.append([name, statistics.median(times), min(times), statistics.median(cpu)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--drive", choices=["before", "after", "plain", "migrate"], help=argparse.SUPPRESS
    )
    parser.add_argument("--cold", type=int, default=3, help="cold runs of each mode")
    parser.add_argument("--warm", type=int, default=5, help="warm runs of each mode")
    parser.add_argument("--cli", type=int, default=7, help="runs of each CLI command")
    args = parser.parse_args()
    if args.drive:
        drive(args.drive)
        return

    from common import report

    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        homes = {mode: Path(tmp) / f"home-{mode}" for mode in ("before", "after", "command")}
        for _ in range(args.cold):
            for mode, home in homes.items():
                shutil.rmtree(home, ignore_errors=True)
                results.setdefault(f"{mode} cold", []).append(measure(mode, home, workdir))
            scratch = Path(tmp) / "home-migrate"
            shutil.rmtree(scratch, ignore_errors=True)
            results.setdefault("migrate", []).append(measure("migrate", scratch, workdir))
        for _ in range(args.warm):
            for mode, home in homes.items():
                results.setdefault(f"{mode} warm", []).append(measure(mode, home, workdir))
            results.setdefault("plain", []).append(measure("plain", homes["after"], workdir))
    names: list[str] = []
    for runs in results.values():
        names += [name for name in runs[0] if name not in names]
    columns = list(results)
    rows = [
        [name, *(statistics.median(r.get(name, 0.0) for r in results[c]) for c in columns)]
        for name in names
    ]
    print(f"`paperpost run` on the examples, median seconds ({os.cpu_count()} CPUs):\n")
    report("startup_run", ["phase", *columns], rows, {"runs": results})
    print("\ncommands that run no flow, seconds:\n")
    report("startup_cli", ["command", "median", "min", "CPU s"], cli_startup(args.cli), {})


if __name__ == "__main__":
    main()
