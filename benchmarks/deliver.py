"""SMTP throughput to a local sink (aiosmtpd in another process), pool vs naive, one run.

    python benchmarks/deliver.py [--messages 1000]

Rows: the naive path (a new smtplib connection, EHLO, STARTTLS, AUTH-less, per message)
and paperpost's SmtpPool with 1, 4 and 8 connections, plain and STARTTLS; plus the full
``send_batch`` (ledger writes in SQLite around every message) at 4 connections. CPU
seconds of this process and of the sink process are reported per row, to show which side
is saturated (2 cores here: one process at ~100% of a core is the bound).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import smtplib
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import report
from paperpost.delivery import SmtpPool, send_batch
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Edition, Reader, Renderer
from paperpost.settings import Settings
from paperpost.store import Store
from smtp_server import free_port, self_signed


def sink(port: int, cert: str, key: str, ready: mp.Event, stop: mp.Event) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, clock ticks


def own_cpu() -> float:
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    cert, key = self_signed(folder)
    port = free_port()
    ready, stop = mp.Event(), mp.Event()
    server = mp.Process(target=sink, args=(port, str(cert), str(key), ready, stop))
    server.start()
    ready.wait(30)

    papers = [Paper(f"Agents for task {i}", "LLM agents use tools to act.") for i in range(5)]
    items = rank(papers, Profile((Interest("agents"),)))
    renderer = Renderer()
    edition = Edition("bench <bench@example.org>", "k", None, date(2026, 11, 25), 5)
    messages = [
        renderer.render(Reader(f"r{i}@example.org", None, ("agents",)), items, edition, 0, i + 1)
        for i in range(args.messages)
    ]
    size_kb = sum(len(m.data) for m in messages) / len(messages) / 1024

    def settings(security: str, connections: int) -> Settings:
        return Settings(
            delivery="smtp",
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_security=security,
            smtp_ca_file=cert,
            smtp_connections=connections,
            smtp_recycle_after=10_000,
            sender="bench <bench@example.org>",
        )

    def naive(security: str) -> None:
        context = ssl.create_default_context(cafile=str(cert))
        for m in messages:
            with smtplib.SMTP("127.0.0.1", port) as conn:
                if security == "starttls":
                    conn.starttls(context=context)
                conn.sendmail("bench@example.org", [m.address], m.data)

    def pooled(security: str, connections: int) -> None:
        pool = SmtpPool(settings(security, connections))
        with ThreadPoolExecutor(connections) as threads:
            list(threads.map(pool.send, messages))
        pool.close()

    def ledger(security: str, connections: int) -> None:
        store = Store(f"sqlite:///{folder / f'ledger-{security}.db'}")
        pool = SmtpPool(settings(security, connections))
        send_batch(store, pool, messages, run_id=1, workers=connections)
        pool.close()

    cases = [
        ("naive (connection per message)", "none", 1, naive),
        ("naive (connection per message)", "starttls", 1, naive),
    ]
    for security in ("none", "starttls"):
        for connections in (1, 4, 8):
            cases.append(("pool", security, connections, pooled))
    cases.append(("pool + ledger (SQLite)", "starttls", 4, ledger))
    rows = []
    for name, security, connections, fn in cases:
        cpu_client, cpu_sink = own_cpu(), cpu_of(server.pid)
        start = time.perf_counter()
        fn(security) if fn is naive else fn(security, connections)
        elapsed = time.perf_counter() - start
        rows.append(
            [
                name,
                "plain" if security == "none" else security,
                connections,
                args.messages / elapsed,
                own_cpu() - cpu_client,
                cpu_of(server.pid) - cpu_sink,
                elapsed,
            ]
        )
    stop.set()
    server.join(10)
    naive_tls = rows[1][3]
    best_tls = max(r[3] for r in rows if r[0] == "pool" and r[1] == "starttls")
    report(
        "deliver",
        ["path", "security", "connections", "msg/s", "client cpu s", "sink cpu s", "wall s"],
        rows,
        {
            "messages": args.messages,
            "message_kb": size_kb,
            "best_starttls_vs_naive": best_tls / naive_tls,
        },
    )
    print(
        f"best STARTTLS pool vs naive STARTTLS: {best_tls / naive_tls:.1f}x; "
        f"message size {size_kb:.1f} KB"
    )


if __name__ == "__main__":
    main()
