"""SMTP throughput to a local sink (aiosmtpd in another process), in paired rounds.

    python benchmarks/deliver.py [--messages 1000] [--rounds 3] [--naive]

Messages are real digests (the shared papers, synthetic readers, ~33 KB). Cases, each run
once per round in the same order (A B A B ...), medians over rounds:

- ``one connection``: the strongest simple baseline: one smtplib connection reused for
  every message (with TCP_NODELAY, as paperpost sets it), no ledger (plain and STARTTLS);
- ``pool``: paperpost's SmtpPool with 1 and 4 connections, no ledger;
- ``pool + ledger``: the full ``send_batch`` at 4 connections: claims and settles in
  SQLite per group of ``GROUP``, the ``data-sent`` commit before every final dot (the
  database is created and migrated before the clock starts);
- with ``--naive``: a new connection (and STARTTLS) per message, for reference.

CPU seconds of this process and of the sink process are reported per case: on 2 cores the
sink competes with the sender, so a rate is only as good as the CPU left to the client.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from floor import EDITION, jobs

from common import cpu_of, report
from paperpost.delivery import SmtpPool, send_batch
from paperpost.render import Renderer
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
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port, tls_context=context, data_size_limit=0
    )
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also a connection per message")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pp-deliver-"))
    cert, key = self_signed(folder)
    port = free_port()
    ready, stop = mp.Event(), mp.Event()
    server = mp.Process(target=sink, args=(port, str(cert), str(key), ready, stop))
    server.start()
    ready.wait(30)

    renderer = Renderer()
    messages = [renderer.render(r, items, EDITION, 0, 300) for r, items in jobs(args.messages)]
    size_kb = statistics.median(len(m.data) for m in messages) / 1024
    context = ssl.create_default_context(cafile=str(cert))

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

    def connect() -> smtplib.SMTP:
        conn = smtplib.SMTP("127.0.0.1", port)
        # without it, Nagle's algorithm and delayed ACKs stall each TLS-wrapped command
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def one_connection(security: str, _connections: int, _round: int) -> None:
        with connect() as conn:
            if security == "starttls":
                conn.starttls(context=context)
            for m in messages:
                conn.sendmail("bench@example.org", [m.address], m.data)

    def naive(security: str, _connections: int, _round: int) -> None:
        for m in messages:
            with connect() as conn:
                if security == "starttls":
                    conn.starttls(context=context)
                conn.sendmail("bench@example.org", [m.address], m.data)

    def pooled(security: str, connections: int, _round: int) -> None:
        pool = SmtpPool(settings(security, connections))
        with ThreadPoolExecutor(connections) as threads:
            list(threads.map(pool.send, messages))
        pool.close()

    # each round's ledger database is made (and migrated) before the clock starts: a run
    # pays that once, not per message
    stores = {r: Store(f"sqlite:///{folder / f'ledger-{r}.db'}") for r in range(args.rounds)}

    def ledger(security: str, connections: int, round_: int) -> None:
        store = stores[round_]
        pool = SmtpPool(settings(security, connections))
        send_batch(store, pool, messages, run_id=1, workers=connections)
        pool.close()

    cases = [
        ("one connection", "none", 1, one_connection),
        ("one connection", "starttls", 1, one_connection),
        ("pool", "starttls", 1, pooled),
        ("pool", "starttls", 4, pooled),
        ("pool + ledger (SQLite)", "starttls", 4, ledger),
    ]
    if args.naive:
        cases.insert(0, ("connection per message", "starttls", 1, naive))
    samples: dict[int, list[tuple[float, float, float]]] = {i: [] for i in range(len(cases))}
    for round_ in range(args.rounds):
        for index, (_name, security, connections, fn) in enumerate(cases):
            cpu_client, cpu_sink = time.process_time(), cpu_of(server.pid)
            start = time.perf_counter()
            fn(security, connections, round_)
            elapsed = time.perf_counter() - start
            samples[index].append(
                (
                    args.messages / elapsed,
                    time.process_time() - cpu_client,
                    cpu_of(server.pid) - cpu_sink,
                )
            )
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    stop.set()
    server.join(10)
    rows = []
    for index, (name, security, connections, _) in enumerate(cases):
        rates = [s[0] for s in samples[index]]
        rows.append(
            [
                name,
                "plain" if security == "none" else security,
                connections,
                statistics.median(rates),
                statistics.median(s[1] for s in samples[index]),
                statistics.median(s[2] for s in samples[index]),
                ", ".join(f"{r:.0f}" for r in rates),
            ]
        )

    def ratio(a: int, b: int) -> tuple[float, list[float]]:
        pairs = [x[0] / y[0] for x, y in zip(samples[a], samples[b], strict=True)]
        return statistics.median(pairs), pairs

    base = len(cases) - 5  # index of the first "one connection" case
    comparisons = {
        "pool(4) ÷ one connection, STARTTLS": ratio(base + 3, base + 1),
        "pool(4) + ledger ÷ pool(4)": ratio(base + 4, base + 3),
        "pool(4) + ledger ÷ one connection, STARTTLS": ratio(base + 4, base + 1),
    }
    report(
        "deliver",
        ["path", "security", "connections", "msg/s", "client cpu s", "sink cpu s", "per round"],
        rows,
        {
            "messages": args.messages,
            "message_kb": size_kb,
            "ratios": {k: {"median": v[0], "pairs": v[1]} for k, v in comparisons.items()},
        },
    )
    for label, (median, pairs) in comparisons.items():
        print(f"{label}: {median:.2f} (rounds: {', '.join(f'{p:.2f}' for p in pairs)})")
    print(f"message size (median): {size_kb:.1f} KB")


if __name__ == "__main__":
    main()
