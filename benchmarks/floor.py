"""This machine's floor for a digest's work, stage by stage, beside what paperpost costs.

    python benchmarks/floor.py [--messages 2000] [--subscribers 5000] [--group 500]
        [--postgres postgresql+psycopg://paperpost:paperpost@127.0.0.1:5432/paperpost_perf]

Every figure is milliseconds per digest, the median of ``--repeat`` rounds; within a round
the floor and paperpost run back to back on the same messages (A B A B), so load from
other processes hits both alike. The messages are paperpost's own (the shared papers,
synthetic readers, ~33 KB each).

Floors (the least this machine needs for the same output at the same durability):

- **render**: join per-paper HTML/text fragments made once, quoted-printable encode both
  parts (binascii), prepend headers: the same bytes-per-digest as paperpost's messages.
- **outbox file**: Maildir-style: write ``tmp/<name>``, fsync, rename into ``new/`` (one
  fsync per file, one after another); and grouped: write and fsync a group's files
  on ``WRITER_THREADS`` threads (as the outbox does, so the file system commits them
  together), rename them, fsync ``new/`` once (group durability).
- **ledger**: the ledger's own statements in the driver directly (sqlite3 / psycopg), same
  schema and durability (SQLite WAL, synchronous=NORMAL): claim (INSERT ``sending``) and
  settle (UPDATE ``sent`` + cursor upsert), one commit each per message; and grouped: one
  multi-row transaction per group for each of the two. The outbox needs no ``data-sent``
  mark (its files tell whether a digest went out), so neither side writes one.
  PostgreSQL with ``--postgres``. paperpost's side is what ``send_batch`` does for the
  outbox: ``claim_group`` and ``settle_group`` per group of ``GROUP``.
- **pipeline**: render + outbox file + ledger floors, per message (an fsync and a
  commit each) and grouped (the outbox's contract: group durability, then one settle);
  paperpost's figure is ``run_plain`` on ``--subscribers`` readers (its stage clocks for
  rank, render and send; batches overlap, ranked and rendered in worker processes, so the
  stage clocks are each batch's time in the stage, added up, and can exceed the run).

Ranking has no floor here (the rank helper's benchmarks cover it); its cost is shown.
"""

from __future__ import annotations

import argparse
import html
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from binascii import b2a_qp
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from end_to_end import prepare
from rank_quality import shared_papers
from rank_speed import profiles

from common import report
from paperpost.delivery import GROUP, WRITER_THREADS, Outbox
from paperpost.models import Paper
from paperpost.rank import Ranked, rank_many
from paperpost.render import Edition, Outgoing, Reader, Renderer
from paperpost.store import Settlement, Store, Wanted

EDITION = Edition(
    "paperpost <digest@example.org>", "key", "https://pp.example.org", date(2026, 11, 25), 300
)
STYLE = (
    "margin:0 0 12px 0;padding:16px;border:1px solid #e5e7eb;border-radius:10px;"
    "font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;"
    "font-size:15px;line-height:1.5;color:#111827;background:#ffffff"
)


def per_ms(seconds: float, count: int) -> float:
    return 1000 * seconds / count


def timed(fn: Callable[..., object], *args: object) -> float:
    clock = time.perf_counter()
    fn(*args)
    return time.perf_counter() - clock


# --- messages ------------------------------------------------------------------------------


def jobs(count: int) -> list[tuple[Reader, list[Ranked]]]:
    papers = shared_papers()[:300]
    people = profiles(count * 2)
    out = []
    for i, (person, items) in enumerate(zip(people, rank_many(papers, people), strict=True)):
        if items:
            tags = tuple(x.tag for x in person.interests)
            out.append((Reader(f"reader{i}@example.org", f"Reader {i}", tags), items))
    return out[:count]


class FloorRenderer:
    """Fragments per paper once; per reader only joins, QP encoding and headers."""

    def __init__(self, pad: int) -> None:
        self.html_card: dict[Paper, str] = {}
        self.text_card: dict[Paper, str] = {}
        self.shell = "<html><body><div style='" + STYLE + "'>" + "x" * max(pad, 0)

    def card(self, paper: Paper) -> tuple[str, str]:
        if paper not in self.html_card:
            title, abstract = html.escape(paper.title), html.escape(paper.abstract[:450])
            self.html_card[paper] = (
                f'<div style="{STYLE}"><a href="https://huggingface.co/papers" '
                f'style="{STYLE}">{title}</a><p style="{STYLE}">{abstract}</p></div>'
            )
            self.text_card[paper] = f"{paper.title}\n   {paper.abstract[:450]}\n\n"
        return self.html_card[paper], self.text_card[paper]

    def render(self, reader: Reader, items: Sequence[Ranked], lo: int, hi: int) -> bytes:
        cards = [self.card(item.paper) for item in items[:50]]
        text = "".join(c[1] for c in cards).replace("\n", "\r\n")
        page = self.shell + "".join(c[0] for c in cards) + "</div></body></html>"
        head = (
            f"To: {reader.name} <{reader.email}>\r\nSubject: {len(items)} new papers\r\n"
            f"Message-ID: <{reader.email}.{lo}-{hi}@example.org>\r\n"
            'Content-Type: multipart/alternative; boundary="=_b"\r\n\r\n'
        )
        return b"".join(
            (
                head.encode(),
                b"--=_b\r\n\r\n",
                b2a_qp(text.encode(), istext=True),
                b"\r\n--=_b\r\n\r\n",
                b2a_qp(page.encode(), istext=True),
                b"\r\n--=_b--\r\n",
            )
        )


# --- files -----------------------------------------------------------------------------------


def maildir_each(folder: Path, messages: Sequence[Outgoing]) -> None:
    """One fsync per file: tmp/ → new/ (the outbox's durability today)."""
    tmp, new = folder / "tmp", folder / "new"
    for m in messages:
        name = f"{m.address}_{m.digest}"
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, m.data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp / name, new / name)


def maildir_grouped(folder: Path, messages: Sequence[Outgoing], group: int) -> None:
    """Write and fsync a group's files on WRITER_THREADS threads (so the file system
    commits them together), rename them all, fsync new/ once."""
    tmp, new = folder / "tmp", folder / "new"

    def write(m: Outgoing) -> str:
        name = f"{m.address}_{m.digest}"
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, m.data)
        os.fsync(fd)
        os.close(fd)
        return name

    with ThreadPoolExecutor(WRITER_THREADS) as writers:
        for start in range(0, len(messages), group):
            for name in list(writers.map(write, messages[start : start + group])):
                os.rename(tmp / name, new / name)
            fd = os.open(new, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def fresh_maildir(root: Path, label: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=label, dir=root))
    (folder / "tmp").mkdir()
    (folder / "new").mkdir()
    return folder


# --- ledger ------------------------------------------------------------------------------------

CLAIM = (
    "INSERT INTO deliveries (address, digest, lo, hi, message_id, status, attempts, run_id,"
    " updated_at) VALUES ({p}, {p}, {p}, {p}, {p}, 'sending', 1, 1, {p})"
)
SETTLE = (
    "UPDATE deliveries SET status = 'sent', error = NULL, updated_at = {p}"
    " WHERE address = {p} AND digest = {p}"
)
CURSOR = (
    "INSERT INTO subscriber_state (address, cursor, last_digest_at) VALUES ({p}, {p}, {p})"
    " ON CONFLICT (address) DO UPDATE SET cursor = excluded.cursor,"
    " last_digest_at = excluded.last_digest_at WHERE subscriber_state.cursor < excluded.cursor"
)


def ledger_floor(connect: Callable[[], object], p: str, messages, group: int | None) -> None:
    """The ledger's statements straight through the driver; ``group`` None: per message."""
    conn = connect()
    stamp: object = datetime.now(UTC)
    if p == "?":
        stamp = stamp.isoformat(sep=" ")  # SQLAlchemy's SQLite format
    claim, settle, cursor = CLAIM.format(p=p), SETTLE.format(p=p), CURSOR.format(p=p)
    step = 1 if group is None else group
    for start in range(0, len(messages), step):
        part = messages[start : start + step]
        cur = conn.cursor()
        cur.executemany(
            claim, [(m.address, m.digest, m.lo, m.hi, m.message_id, stamp) for m in part]
        )
        conn.commit()
        cur.executemany(settle, [(stamp, m.address, m.digest) for m in part])
        cur.executemany(cursor, [(m.address, m.hi, stamp) for m in part])
        conn.commit()
    conn.close()


def send_each(outbox: Outbox, messages: Sequence[Outgoing]) -> None:
    for m in messages:
        outbox.send(m)


def send_grouped(outbox: Outbox, messages: Sequence[Outgoing]) -> None:
    """As send_batch drives the outbox: stage a group, flush it once."""
    for start in range(0, len(messages), GROUP):
        for m in messages[start : start + GROUP]:
            outbox.stage(m)
        outbox.flush()


def ledger_paperpost(store: Store, messages: Sequence[Outgoing]) -> None:
    """The ledger as send_batch drives it for the outbox: a claim and a settle per group."""
    for start in range(0, len(messages), GROUP):
        group = messages[start : start + GROUP]
        store.claim_group([Wanted(m.address, m.digest, m.lo, m.hi, m.message_id) for m in group], 1)
        store.settle_group([Settlement(m.address, m.digest, "sent", m.hi) for m in group])


def seed_cursors(store: Store, messages: Sequence[Outgoing]) -> None:
    """As in a run, the rank stage has already given new subscribers a cursor row."""
    store.advance_cursors([(m.address, 0) for m in messages])


def reset(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM deliveries")
        conn.exec_driver_sql("DELETE FROM subscriber_state")


def sqlite_connect(path: Path) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect


def pg_connect(url: str) -> Callable[[], object]:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return lambda: psycopg.connect(plain)


# --- whole pipeline ---------------------------------------------------------------------------


def pipeline_run(root: Path, subscribers: int) -> dict:
    from paperpost.pipeline import run_plain
    from paperpost.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="pipeline-", dir=root))
    prepare(data, subscribers)
    settings = Settings(
        sources=[str(data / "dumps")],
        subscribers_dir=data / "subscribers.yaml",
        database_url=f"sqlite:///{data / 'pp.db'}",
        outbox_dir=data / "outbox",
        delivery="outbox",
    )
    clock = time.perf_counter()
    summary = run_plain(settings)
    return {
        "seconds": time.perf_counter() - clock,
        "sent": summary.digests_sent,
        "stages": summary.stage_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--group", type=int, default=GROUP)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL URL (tables are dropped and made)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pp-floor-"))

    renderer = Renderer()
    work = jobs(args.messages)
    renderer.render(*work[0], EDITION, 0, 300)  # learn inline styles once, untimed
    messages = [renderer.render(r, items, EDITION, 0, 300) for r, items in work]
    size = statistics.median(len(m.data) for m in messages)
    bare = FloorRenderer(0)
    pad = int(size - statistics.median(len(bare.render(r, i, 0, 300)) for r, i in work))
    floor_renderer = FloorRenderer(pad)
    floor_size = statistics.median(len(floor_renderer.render(r, i, 0, 300)) for r, i in work)
    n = len(messages)

    stores = {"SQLite": (f"sqlite:///{root / 'ledger.db'}", "?")}
    if args.postgres:
        stores["PostgreSQL"] = (args.postgres, "%s")
    connects = {"SQLite": sqlite_connect(root / "ledger.db")}
    if args.postgres:
        connects["PostgreSQL"] = pg_connect(args.postgres)
    opened = {name: Store(url) for name, (url, _) in stores.items()}

    samples: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(per_ms(seconds, n))

    for round_ in range(args.repeat):
        add("render floor", timed(lambda: [floor_renderer.render(r, i, 0, 300) for r, i in work]))
        add(
            "render paperpost",
            timed(lambda: [renderer.render(r, i, EDITION, 0, 300) for r, i in work]),
        )
        folder = fresh_maildir(root, f"each-{round_}-")
        add("file floor each", timed(maildir_each, folder, messages))
        folder = fresh_maildir(root, f"group-{round_}-")
        add("file floor grouped", timed(maildir_grouped, folder, messages, args.group))
        outbox = Outbox(Path(tempfile.mkdtemp(prefix=f"outbox-{round_}-", dir=root)))
        add("file paperpost", timed(send_grouped, outbox, messages))
        outbox = Outbox(Path(tempfile.mkdtemp(prefix=f"outbox1-{round_}-", dir=root)))
        add("file paperpost one at a time", timed(send_each, outbox, messages))
        for name, (_, p) in stores.items():
            store = opened[name]
            for label, group in (("each", None), ("grouped", args.group)):
                reset(store)
                seed_cursors(store, messages)
                add(
                    f"ledger {name} floor {label}",
                    timed(ledger_floor, connects[name], p, messages, group),
                )
            reset(store)
            seed_cursors(store, messages)
            add(f"ledger {name} paperpost", timed(ledger_paperpost, store, messages))
        print(f"round {round_ + 1}/{args.repeat} done", flush=True)

    pipeline = [pipeline_run(root, args.subscribers) for _ in range(args.repeat)]
    med = {k: statistics.median(v) for k, v in samples.items()}
    sent = pipeline[0]["sent"]
    whole = statistics.median(per_ms(r["seconds"], r["sent"]) for r in pipeline)
    stage = {
        s: statistics.median(per_ms(r["stages"].get(s, 0.0), r["sent"]) for r in pipeline)
        for s in ("rank", "render", "send")
    }

    def row(stage_name: str, floor_key: str, paperpost: float, note: str = "") -> list[object]:
        floor = med[floor_key]
        return [
            stage_name,
            floor_key.replace(" floor", ""),
            floor,
            paperpost,
            paperpost / floor,
            note,
        ]

    rows = [
        row(
            "render",
            "render floor",
            med["render paperpost"],
            f"{size / 1024:.1f} KB vs floor {floor_size / 1024:.1f} KB",
        ),
        row(
            "outbox file",
            "file floor each",
            med["file paperpost"],
            f"floor: fsync per file; paperpost: send_batch's groups of {GROUP}",
        ),
        row(
            "outbox file",
            "file floor grouped",
            med["file paperpost"],
            f"floor: one sync pass per {args.group}",
        ),
        row(
            "outbox file, one at a time",
            "file floor each",
            med["file paperpost one at a time"],
            "Outbox.send alone (fsync per file)",
        ),
    ]
    for name in stores:
        paper = med[f"ledger {name} paperpost"]
        rows.append(row(f"ledger {name}", f"ledger {name} floor each", paper, "commit per message"))
        rows.append(
            row(f"ledger {name}", f"ledger {name} floor grouped", paper, f"commit per {args.group}")
        )
    floor_each = med["render floor"] + med["file floor each"] + med["ledger SQLite floor each"]
    floor_group = (
        med["render floor"] + med["file floor grouped"] + med["ledger SQLite floor grouped"]
    )
    med["pipeline floor each"], med["pipeline floor grouped"] = floor_each, floor_group
    rows.append(
        [
            "rank",
            "(no floor here)",
            "",
            stage["rank"],
            "",
            "run_plain's rank clock (batches overlap: stage clocks add up to more than the run)",
        ]
    )
    send_floor_each = med["file floor each"] + med["ledger SQLite floor each"]
    send_floor_group = med["file floor grouped"] + med["ledger SQLite floor grouped"]
    rows.append(
        [
            "send (run_plain)",
            "file+ledger each",
            send_floor_each,
            stage["send"],
            stage["send"] / send_floor_each,
            "SQLite, outbox",
        ]
    )
    rows.append(
        [
            "send (run_plain)",
            "file+ledger grouped",
            send_floor_group,
            stage["send"],
            stage["send"] / send_floor_group,
            "SQLite, outbox",
        ]
    )
    rows.append(
        [
            "whole pipeline",
            "pipeline each",
            floor_each,
            whole,
            whole / floor_each,
            f"run_plain, {args.subscribers} subscribers, {sent} sent",
        ]
    )
    rows.append(
        [
            "whole pipeline",
            "pipeline grouped",
            floor_group,
            whole,
            whole / floor_group,
            "floor with group fsync + grouped ledger",
        ]
    )
    report(
        "floor",
        ["stage", "floor", "floor ms/digest", "paperpost ms/digest", "ratio", "notes"],
        rows,
        {"samples_ms": samples, "pipeline": pipeline, "messages": n, "message_bytes": size},
    )


if __name__ == "__main__":
    main()
