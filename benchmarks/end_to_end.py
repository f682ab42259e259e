"""The whole job at 1,000 / 10,000 / 100,000 subscribers: Prefect flow vs plain loop.

    python benchmarks/end_to_end.py [--sizes 1000 10000 100000] [--deliveries outbox smtp]

300 new papers (the shared dumps, first 300) and N synthetic subscribers (1-4 tags each),
rank → render → deliver to the .eml outbox or to a local SMTP sink (aiosmtpd, another
process). Each case runs in a fresh process with a fresh database, so its peak RSS is its
own; flow cases talk to one `prefect server` started here (its startup is not timed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import report
from smtp_server import free_port

HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
HEADER += "byAK and the research community\n\nNov 24\n\n"


def sink(port: int, ready: mp.Event, stop: mp.Event) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
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
    lines = []
    for i in range(size):
        chosen = ", ".join(rng.sample(tags, rng.randint(1, 4)))
        lines.append(f"- email: reader{i}@example.org\n  tags: [{chosen}]\n")
    (folder / "subscribers.yaml").write_text("".join(lines))


def case(engine: str) -> None:
    """Child process: run the job once and print timing and peak RSS as JSON.

    Imports happen before the clock starts (Prefect's import alone takes seconds)."""
    from flows.digest import digest
    from paperpost.pipeline import run_plain
    from paperpost.settings import Settings

    start = time.perf_counter()
    summary = digest() if engine == "flow" else run_plain(Settings()).to_json()
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "sent": summary["digests_sent"],
                "skipped": summary["digests_skipped"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--deliveries", nargs="+", default=["outbox", "smtp"])
    parser.add_argument("--case", choices=["flow", "plain"])
    args = parser.parse_args()
    if args.case:
        case(args.case)
        return
    root = Path(tempfile.mkdtemp())
    api_port, smtp_port = free_port(), free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
    }
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
            str(api_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready, stop = mp.Event(), mp.Event()
    smtp = mp.Process(target=sink, args=(smtp_port, ready, stop))
    smtp.start()
    ready.wait(30)
    import requests

    for _ in range(120):
        try:
            requests.get(f"{env['PREFECT_API_URL']}/health", timeout=1).raise_for_status()
            break
        except requests.RequestException:
            time.sleep(1)
    rows = []
    try:
        for size in args.sizes:
            data = root / f"data-{size}"
            prepare(data, size)
            for delivery in args.deliveries:
                results = {}
                for engine in ("flow", "plain"):
                    work = root / f"{size}-{delivery}-{engine}"
                    case_env = {
                        **env,
                        "PAPERPOST_SOURCES": json.dumps([str(data / "dumps")]),
                        "PAPERPOST_SUBSCRIBERS_DIR": str(data / "subscribers.yaml"),
                        "PAPERPOST_DATABASE_URL": f"sqlite:///{work / 'pp.db'}",
                        "PAPERPOST_OUTBOX_DIR": str(work / "outbox"),
                        "PAPERPOST_DELIVERY": delivery,
                        "PAPERPOST_SMTP_HOST": "127.0.0.1",
                        "PAPERPOST_SMTP_PORT": str(smtp_port),
                        "PAPERPOST_SMTP_SECURITY": "none",
                    }
                    out = (
                        subprocess.run(
                            [sys.executable, __file__, "--case", engine],
                            env=case_env,
                            capture_output=True,
                            text=True,
                            check=True,
                            cwd=HERE.parent,
                        )
                        .stdout.strip()
                        .splitlines()[-1]
                    )
                    results[engine] = json.loads(out)
                    r = results[engine]
                    rows.append(
                        [
                            size,
                            delivery,
                            engine,
                            r["seconds"],
                            r["sent"] / r["seconds"],
                            r["peak_rss_mb"],
                            r["sent"],
                        ]
                    )
                    print(rows[-1], flush=True)
                rows.append(
                    [
                        size,
                        delivery,
                        "flow/plain",
                        results["flow"]["seconds"] / results["plain"]["seconds"],
                        "",
                        "",
                        "",
                    ]
                )
    finally:
        stop.set()
        smtp.join(10)
        server.terminate()
    report(
        "end_to_end",
        ["subscribers", "delivery", "engine", "wall s", "digests/s", "peak RSS MB", "sent"],
        rows,
        {},
    )


if __name__ == "__main__":
    main()
