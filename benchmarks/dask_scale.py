"""The digest flow on a real Dask cluster vs on threads, both against the same PostgreSQL.

    python benchmarks/dask_scale.py --postgres postgresql+psycopg://user:pass@host/db
        [--sizes 100000] [--pairs 2] [--variants threads dask] [--batch-size 2000]

300 new papers (the first 300 of ../shared) and N generated subscribers in one list file
(1-4 tags each, all due), delivered to an outbox Maildir. Variants, in paired rounds
(A B A B ...), each on a freshly emptied database and outbox:

- ``threads``: the flow's batches on threads in the flow's process (the default runner);
- ``dask``: a ``dask scheduler`` and two ``dask worker`` processes (1 thread each, with their
  nannies), started afresh for the round as separate OS processes, the flow pointed at them
  with ``PAPERPOST_DASK_ADDRESS``. The workers read the database URL and the signing key from
  their own environment, as on other hosts.

Both report to one ``prefect server`` started here (its memory and CPU are reported once: every
variant shares it). Per process: peak RSS (``VmHWM``) and CPU seconds, summed over the
variant's processes; the flow's wall time; the cluster's start-up (until both workers are
registered) on its own. After each run the outbox and the ledger are counted: every due
subscriber has exactly one digest file and one ``sent`` ledger row claimed once, no address
has two. The load average is recorded before and after each run. The PostgreSQL schema's
tables are dropped before each run: use a database of its own (``?options=-csearch_path%3Dx``
picks a schema).
"""

from __future__ import annotations

import sys
import time

START = time.perf_counter()


def child() -> None:
    """Run the flow once in this process (the runner comes from the environment)."""
    import json
    import resource

    from flows.digest import digest

    clock, cpu = time.perf_counter(), time.process_time()
    summary = digest()
    result = {
        "seconds": time.perf_counter() - clock,
        "cpu_s": time.process_time() - cpu,
        "sent": summary["digests_sent"],
        "skipped": summary["digests_skipped"],
        "stages": summary["stage_seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))
    sys.stdout.flush()
    import os

    os._exit(0)  # as `paperpost run` does after a flow: Prefect's teardown is not measured


if __name__ == "__main__" and "--case" in sys.argv:
    child()

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from dask_cluster import DaskCluster, tally
from end_to_end import prepare, start_prefect

from common import report
from smtp_server import free_port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """A process and its descendants (a dask worker is a nanny and its worker process)."""
    import psutil

    top = psutil.Process(pid)
    return [top.pid, *(p.pid for p in top.children(recursive=True))]


def measure(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Peak RSS and CPU of each named process tree (read while they still run)."""
    out = {}
    for name, pid in pids.items():
        for member in tree(pid):
            label = name if member == pid else f"{name}/child{member}"
            out[label] = {"peak_rss_mb": peak_rss_mb(member), "cpu_s": cpu_s(member)}
    return out


def reset(url: str) -> None:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)
    engine.dispose()


def check_once(url: str, outbox: Path, expected: int) -> dict[str, object]:
    """Every due subscriber has one digest file and one ledger row, sent and claimed once."""
    counts = tally(url, outbox)
    counts["leftover_tmp"] = len(list((outbox / "tmp").iterdir()))
    counts["exactly_once"] = (
        counts["files"] == counts["addresses"] == expected == counts["ledger"].get("sent")
        and counts["ledger"] == {"sent": expected}
        and counts["file_duplicates"] == counts["ledger_duplicates"] == 0
        and counts["claimed_twice"] == counts["leftover_tmp"] == 0
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=os.environ.get("PAPERPOST_BENCH_POSTGRES_URL"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["threads", "dask"])
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--name", default="dask_scale", help="results/<name>.json")
    args = parser.parse_args()
    if not args.postgres:
        parser.error(
            "give --postgres URL (or PAPERPOST_BENCH_POSTGRES_URL): its tables are dropped"
        )
    root = Path(tempfile.mkdtemp(prefix="pp-dask-"))
    api_port = free_port()
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
        "PAPERPOST_DATABASE_URL": args.postgres,
        "PAPERPOST_SECRET_KEY": "benchmark-only-key-0123456789abcdef0123456789",
        "PAPERPOST_DELIVERY": "outbox",
        "PAPERPOST_BATCH_SIZE": str(args.batch_size),
    }
    base.pop("PAPERPOST_DASK_ADDRESS", None)
    server, server_start = start_prefect(base, api_port, timeout=900)  # a busy machine
    runs: list[dict] = []
    try:
        for size in args.sizes:
            data = root / f"data-{size}"
            prepare(data, size)
            for round_ in range(args.pairs):
                for variant in args.variants:
                    runs.append(one_run(args, base, root, data, size, variant, round_))
                    r = runs[-1]
                    print(
                        f"{size} {variant} round {round_}: {r['flow']['seconds']:.1f} s, "
                        f"sum peak RSS {r['sum_peak_rss_mb']:.0f} MB, "
                        f"CPU {r['sum_cpu_s']:.0f} s, load {r['load_before']}->"
                        f"{r['load_after']}, once {r['check']['exactly_once']}",
                        flush=True,
                    )
                    (HERE / "results").mkdir(exist_ok=True)
                    (HERE / "results" / f"{args.name}.partial.json").write_text(
                        json.dumps(runs, indent=2, default=str)
                    )
        server_mem = measure({"prefect-server": server.pid})
    finally:
        server.terminate()
        server.wait(60)
    rows, ratios = tables(runs, args)
    report(
        args.name,
        [
            "subscribers",
            "variant",
            "flow s",
            "digests/s",
            "cluster start s",
            "flow RSS MB",
            "scheduler RSS MB",
            "workers RSS MB (each, nanny+worker)",
            "sum RSS MB",
            "sum CPU s",
            "load before→after",
            "exactly once",
        ],
        rows,
        {
            "runs": runs,
            "ratios": ratios,
            "prefect_server": server_mem,
            "prefect_server_start_s": server_start,
        },
    )
    print()
    for line in ratios:
        print(line)
    print(f"prefect server (shared by every run): {server_mem}")


def one_run(args, base, root, data, size, variant, round_) -> dict:  # type: ignore[no-untyped-def]
    work = root / f"{size}-{variant}-{round_}"
    env = {
        **base,
        "PAPERPOST_SOURCES": json.dumps([str(data / "dumps")]),
        "PAPERPOST_SUBSCRIBERS_DIR": str(data / "subscribers.yaml"),
        "PAPERPOST_OUTBOX_DIR": str(work / "outbox"),
    }
    reset(args.postgres)
    cluster, cluster_start = None, 0.0
    if variant == "dask":
        cluster = DaskCluster(env, work / "dask")
        cluster_start = cluster.start()
        env["PAPERPOST_DASK_ADDRESS"] = cluster.address
    load_before = os.getloadavg()[0]
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--case"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        load_after = os.getloadavg()[0]
        if done.returncode:
            raise RuntimeError(f"{variant} at {size} failed:\n{done.stderr[-3000:]}")
        flow = json.loads(done.stdout.strip().splitlines()[-1])
        processes = {"flow": {"peak_rss_mb": flow["peak_rss_mb"], "cpu_s": flow["cpu_s"]}}
        if cluster is not None:
            processes |= measure({name: p.pid for name, p in cluster.procs.items()})
    finally:
        if cluster is not None:
            cluster.stop()
    check = check_once(args.postgres, work / "outbox", flow["sent"])
    check["sent_plus_skipped"] = flow["sent"] + flow["skipped"]
    return {
        "size": size,
        "variant": variant,
        "round": round_,
        "flow": flow,
        "cluster_start_s": cluster_start,
        "processes": processes,
        "sum_peak_rss_mb": sum(p["peak_rss_mb"] for p in processes.values()),
        "sum_cpu_s": sum(p["cpu_s"] for p in processes.values()),
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
        "check": check,
    }


def tables(runs: list[dict], args) -> tuple[list[list[object]], list[str]]:  # type: ignore[no-untyped-def]
    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows, ratios = [], []
    for size in args.sizes:
        for variant in args.variants:
            mine = [r for r in runs if (r["size"], r["variant"]) == (size, variant)]

            def rss(r: dict, prefix: str) -> float:
                return sum(
                    p["peak_rss_mb"] for n, p in r["processes"].items() if n.startswith(prefix)
                )

            workers = [
                f"{rss(r, 'worker-1'):.0f} + {rss(r, 'worker-2'):.0f}"
                for r in mine
                if variant == "dask"
            ]
            rows.append(
                [
                    size,
                    variant,
                    med([r["flow"]["seconds"] for r in mine]),
                    mine[0]["flow"]["sent"] / med([r["flow"]["seconds"] for r in mine]),
                    med([r["cluster_start_s"] for r in mine]),
                    max(r["processes"]["flow"]["peak_rss_mb"] for r in mine),
                    max(rss(r, "scheduler") for r in mine) if variant == "dask" else "",
                    "; ".join(workers),
                    max(r["sum_peak_rss_mb"] for r in mine),
                    med([r["sum_cpu_s"] for r in mine]),
                    "; ".join(f"{r['load_before']}→{r['load_after']}" for r in mine),
                    all(r["check"]["exactly_once"] for r in mine),
                ]
            )
        if {"threads", "dask"} <= set(args.variants):
            for key, label in (("seconds", "wall"), ("cpu", "CPU")):
                pairs = []
                for round_ in range(args.pairs):
                    a, b = (
                        next(r for r in runs if (r["size"], r["variant"], r["round"]) == k)
                        for k in ((size, "dask", round_), (size, "threads", round_))
                    )
                    if key == "seconds":
                        pairs.append(a["flow"]["seconds"] / b["flow"]["seconds"])
                    else:
                        pairs.append(a["sum_cpu_s"] / b["sum_cpu_s"])
                ratios.append(
                    f"{size} {label}: dask ÷ threads = {med(pairs):.3f} (pairs: "
                    + ", ".join(f"{p:.3f}" for p in pairs)
                    + ")"
                )
    return rows, ratios


if __name__ == "__main__":
    main()
