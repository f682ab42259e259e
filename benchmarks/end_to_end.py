"""The whole job end to end, in paired runs: Prefect flow vs plain loop, before vs after.

    python benchmarks/end_to_end.py [--sizes 1000 10000] [--deliveries outbox smtp]
        [--engines plain flow] [--pairs 3] [--before /path/to/older/checkout] [--no-warm]

300 new papers (the shared dumps, first 300) and N synthetic subscribers in one list file
(1-4 tags each), rank → render → deliver to the outbox or to a local SMTP sink (aiosmtpd in
its own process; its CPU seconds are reported per case, since on 2 cores it competes with the
job). Digests are real size (10 cards, ~33 KB).

Variants are (code tree, engine) pairs; with ``--before`` the same cases also run against an
older checkout (imported through PYTHONPATH, checked). Every round runs every variant once,
in the same order (A B A B ...), each in a fresh process with a fresh database and outbox,
so drift on a shared machine hits all variants alike; medians and per-round ratios are
reported. Each process reports:

- ``import s``: interpreter start to the engine's modules imported (what every run pays; the
  plain engine imports no Prefect, checked);
- ``cold s``: the first job in the process (templates, premailer learning, engines), and
  its CPU seconds (``cold CPU s``, this process and its worker processes: much less
  sensitive to other load on the machine than wall time, but blind to time spent waiting
  on fsync);
- ``warm s``: a second job in the same process on a fresh database and outbox (what a
  long-lived worker pays per run);
- ``process s``: the parent's wall clock for the whole process (start-up + cold + warm + exit).

Engines ``cli-plain`` and ``cli-flow`` run ``paperpost run [--no-prefect] --json`` as one
process with no Prefect server configured: what a user pays, start-up included (for the
flow, the temporary Prefect API that run starts); their CPU is that process's and its
children's, ``cold s`` its wall time. The other flow cases talk to one ``prefect server``
started here; its start-up (paid by ``paperpost
run`` on every run without a configured server) is measured once and reported on its own.
"""

from __future__ import annotations

import sys
import time

START = time.perf_counter()


def child(engine: str, warm: bool) -> None:
    """Run the job once (cold) and optionally again (warm) and print one JSON line."""
    import json
    import os

    if engine == "flow":
        from flows.digest import digest
    else:
        from paperpost.pipeline import run_plain
    import paperpost
    from paperpost.settings import Settings

    imported = time.perf_counter() - START

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import family_usage

    def job() -> dict:
        # CPU and memory include paperpost's worker processes (ranking and rendering), if any
        clock, (cpu, _, _) = time.perf_counter(), family_usage()
        summary = digest() if engine == "flow" else run_plain(Settings()).to_json()
        seconds = time.perf_counter() - clock
        cpu_after, rss, workers_rss = family_usage()
        return {
            "seconds": seconds,
            "cpu_s": cpu_after - cpu,
            "sent": summary["digests_sent"],
            "stages": summary["stage_seconds"],
            "rss_mb": rss,
            "workers_rss_mb": workers_rss,
        }

    result = {"import_s": imported, "prefect_imported": "prefect" in sys.modules}
    result["cold"] = job()
    if warm:
        os.environ["PAPERPOST_DATABASE_URL"] += "-warm"
        os.environ["PAPERPOST_OUTBOX_DIR"] += "-warm"
        result["warm"] = job()
    result["paperpost_file"] = paperpost.__file__
    print(json.dumps(result))


if __name__ == "__main__" and "--case" in sys.argv:
    child(sys.argv[sys.argv.index("--case") + 1], "--warm" in sys.argv)
    sys.exit(0)

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import add_checkout_args, checkouts, cpu_of, report
from smtp_server import free_port

HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
HEADER += "byAK and the research community\n\nNov 24\n\n"


def sink(port: int, ready: mp.Event, stop: mp.Event) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=0)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def prepare(folder: Path, size: int) -> None:
    from rank_quality import shared_papers

    from paperpost.rank import vocabulary

    papers = shared_papers()[:300]
    (folder / "dumps").mkdir(parents=True)
    body = "\n\n".join(f"{p.title}\n\n{p.abstract}" for p in papers)
    (folder / "dumps" / "today.txt").write_text(HEADER + body + "\n")
    tags = sorted({t.id for t in vocabulary().values()})
    rng = random.Random(size)
    with (folder / "subscribers.yaml").open("w") as out:
        for i in range(size):
            chosen = ", ".join(rng.sample(tags, rng.randint(1, 4)))
            out.write(f"- email: reader{i}@example.org\n  tags: [{chosen}]\n")


def start_prefect(
    env: dict[str, str], port: int, timeout: float = 120.0
) -> tuple[subprocess.Popen, float]:
    import requests

    clock = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while time.perf_counter() - clock < timeout:
        try:
            requests.get(f"{env['PREFECT_API_URL']}/health", timeout=1).raise_for_status()
            return server, time.perf_counter() - clock
        except requests.RequestException:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"prefect server did not start within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--deliveries", nargs="+", default=["outbox", "smtp"])
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["plain", "flow"],
        choices=["plain", "flow", "cli-plain", "cli-flow"],
        help="cli-*: `paperpost run [--no-prefect] --json` timed as a whole process",
    )
    parser.add_argument("--pairs", type=int, default=3)
    add_checkout_args(parser)
    parser.add_argument("--no-warm", action="store_true", help="skip the warm second job")
    parser.add_argument("--name", default="end_to_end", help="results/<name>.json")
    args = parser.parse_args()
    trees = checkouts(args)
    variants = [(tree, engine) for engine in args.engines for tree in trees]
    root = Path(tempfile.mkdtemp(prefix="pp-e2e-"))
    api_port, smtp_port = free_port(), free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
    }
    needs_server = "flow" in args.engines
    server, server_start = start_prefect(env, api_port) if needs_server else (None, 0.0)
    ready, stop = mp.Event(), mp.Event()
    smtp = mp.Process(target=sink, args=(smtp_port, ready, stop))
    smtp.start()
    ready.wait(30)
    runs: list[dict] = []
    try:
        for size in args.sizes:
            data = root / f"data-{size}"
            prepare(data, size)
            for delivery in args.deliveries:
                for round_ in range(args.pairs):
                    for tree, engine in variants:
                        work = root / f"{size}-{delivery}-{tree}-{engine}-{round_}"
                        case_env = {
                            **env,
                            "PYTHONPATH": str(trees[tree]),
                            "PAPERPOST_SOURCES": json.dumps([str(data / "dumps")]),
                            "PAPERPOST_SUBSCRIBERS_DIR": str(data / "subscribers.yaml"),
                            "PAPERPOST_DATABASE_URL": f"sqlite:///{work / 'pp.db'}",
                            "PAPERPOST_OUTBOX_DIR": str(work / "outbox"),
                            "PAPERPOST_SECRET_KEY": "benchmark-only-key-0123456789abcdef0123456789",
                            "PAPERPOST_DELIVERY": delivery,
                            "PAPERPOST_SMTP_HOST": "127.0.0.1",
                            "PAPERPOST_SMTP_PORT": str(smtp_port),
                            "PAPERPOST_SMTP_SECURITY": "none",
                        }
                        command = [sys.executable, __file__, "--case", engine]
                        command += [] if args.no_warm else ["--warm"]
                        if engine.startswith("cli-"):  # `paperpost run` as a user runs it
                            command = [sys.executable, "-m", "paperpost", "run", "--json"]
                            command += ["--no-prefect"] if engine == "cli-plain" else []
                            del case_env["PREFECT_API_URL"]
                            case_env["PREFECT_HOME"] = str(root / f"prefect-cli-{tree}")
                            # Prefect's 20 s default is too short on a loaded 2-core machine
                            case_env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
                        sink_cpu = cpu_of(smtp.pid)
                        children = resource.getrusage(resource.RUSAGE_CHILDREN)
                        clock = time.perf_counter()
                        done = subprocess.run(
                            command,
                            env=case_env,
                            capture_output=True,
                            text=True,
                            cwd=trees[tree],
                        )
                        wall = time.perf_counter() - clock
                        after = resource.getrusage(resource.RUSAGE_CHILDREN)
                        if done.returncode:
                            raise RuntimeError(f"{tree}/{engine} failed:\n{done.stderr[-3000:]}")
                        last = done.stdout.strip().splitlines()[-1]
                        if engine.startswith("cli-"):
                            summary = json.loads(last)
                            cpu = after.ru_utime + after.ru_stime
                            cpu -= children.ru_utime + children.ru_stime
                            result = {
                                "import_s": None,
                                "prefect_imported": None,
                                "cold": {
                                    "seconds": wall,
                                    "cpu_s": cpu,
                                    "sent": summary["digests_sent"],
                                    "stages": summary["stage_seconds"],
                                    "rss_mb": 0.0,
                                    "workers_rss_mb": 0.0,
                                },
                            }
                        else:
                            result = json.loads(last)
                            if not result["paperpost_file"].startswith(str(trees[tree])):
                                raise RuntimeError(f"{tree} imported {result['paperpost_file']}")
                        if engine == "plain" and result["prefect_imported"]:
                            print(f"note: {tree}/plain imported Prefect", flush=True)
                        result.update(
                            size=size,
                            delivery=delivery,
                            tree=tree,
                            engine=engine,
                            round=round_,
                            process_s=wall,
                            sink_cpu_s=cpu_of(smtp.pid) - sink_cpu,
                        )
                        runs.append(result)
                        warm = result.get("warm", {}).get("seconds", "")
                        print(
                            f"{size} {delivery} {tree}/{engine} round {round_}: "
                            f"cold {result['cold']['seconds']:.2f}s warm {warm} "
                            f"process {wall:.2f}s rss {result['cold']['rss_mb']:.0f} MB",
                            flush=True,
                        )
    finally:
        stop.set()
        smtp.join(10)
        if server is not None:
            server.terminate()
            server.wait(30)
    rows, ratios = tables(runs, variants, trees, args)
    report(
        args.name,
        [
            "subscribers",
            "delivery",
            "variant",
            "cold s",
            "warm s",
            "cold CPU s",
            "digests/s cold",
            "import s",
            "process s",
            "peak RSS MB",
            "workers' peak RSS MB",
            "sink CPU s",
            "sent",
        ],
        rows,
        {"runs": runs, "ratios": ratios, "prefect_server_start_s": server_start},
    )
    print()
    for line in ratios:
        print(line["text"])
    if server is not None:
        print(
            f"\nprefect server start (paid by every `paperpost run` without one): "
            f"{server_start:.1f} s"
        )


def tables(runs: list[dict], variants, trees, args) -> tuple[list[list[object]], list[dict]]:
    def med(values: list[float]) -> float | str:
        return statistics.median(values) if values else ""

    rows: list[list[object]] = []
    ratios: list[dict] = []
    for size in args.sizes:
        for delivery in args.deliveries:
            picked: dict[tuple[str, str], list[dict]] = {}
            for tree, engine in variants:
                mine = [
                    r
                    for r in runs
                    if (r["size"], r["delivery"], r["tree"], r["engine"])
                    == (size, delivery, tree, engine)
                ]
                picked[tree, engine] = mine
                cold = [r["cold"]["seconds"] for r in mine]
                rows.append(
                    [
                        size,
                        delivery,
                        f"{tree}/{engine}",
                        med(cold),
                        med([r["warm"]["seconds"] for r in mine if "warm" in r]),
                        med([r["cold"]["cpu_s"] for r in mine]),
                        mine[0]["cold"]["sent"] / statistics.median(cold),
                        med([r["import_s"] for r in mine if r["import_s"] is not None]),
                        med([r["process_s"] for r in mine]),
                        max(r.get("warm", r["cold"])["rss_mb"] for r in mine) or "",
                        max(r.get("warm", r["cold"]).get("workers_rss_mb", 0.0) for r in mine),
                        med([r["sink_cpu_s"] for r in mine]),
                        mine[0]["cold"]["sent"],
                    ]
                )
            comparisons = []
            if "before" in trees:
                comparisons += [(("after", e), ("before", e)) for e in args.engines]
            for flow, plain in (("flow", "plain"), ("cli-flow", "cli-plain")):
                if {flow, plain} <= set(args.engines):
                    comparisons += [((t, flow), (t, plain)) for t in trees]
            for a, b in comparisons:
                for phase, key in (("cold", "seconds"), ("warm", "seconds"), ("cold", "cpu_s")):
                    pairs = [
                        x[phase][key] / y[phase][key]
                        for x, y in zip(picked[a], picked[b], strict=True)
                        if phase in x and phase in y
                    ]
                    if not pairs:
                        continue
                    measure = "CPU" if key == "cpu_s" else "wall"
                    text = (
                        f"{size} {delivery} {phase} {measure}: {'/'.join(a)} ÷ {'/'.join(b)} = "
                        f"{statistics.median(pairs):.3f} (pairs: "
                        + ", ".join(f"{p:.3f}" for p in pairs)
                        + ")"
                    )
                    ratios.append(
                        {
                            "size": size,
                            "delivery": delivery,
                            "phase": phase,
                            "measure": measure,
                            "a": a,
                            "b": b,
                            "pairs": pairs,
                            "text": text,
                        }
                    )
    return rows, ratios


if __name__ == "__main__":
    main()
