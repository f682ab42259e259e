"""This machine's floor for a digest's work, stage by stage and for the whole pipeline,
beside what paperpost costs: wall and CPU milliseconds per digest, and their ratio.

    python benchmarks/floor.py [--messages 2000] [--sizes 5000 20000] [--repeat 3]
        [--before OLD_CHECKOUT] [--after CHECKOUT] [--postgres postgresql+psycopg://...]

Rounds are paired: in each round every checkout (``--before`` first, if given) runs the
stage block once in a fresh process (each floor right before paperpost's same stage, on the
same inputs), then a whole ``run_plain`` in a fresh process at each of ``--sizes``. CPU is
user + system time of every thread (and, for a whole run, of its worker processes); it is
the comparable figure under load. The load average is recorded before and after each round.

Floors (the least this machine needs for the same output at the same durability):

- **read**: the subscriber list file parsed by libyaml (``yaml.CSafeLoader``), nothing
  validated; paperpost: ``iter_subscribers`` (line numbers, pydantic, address checks).
- **rank**: the same scoring arithmetic as ``rank_many`` in its most direct vectorised form:
  from the per-tag × paper scores paperpost's cache holds (computed untimed on both sides:
  per-paper work, kept in the database across runs), each distinct reader setting's
  weighted noisy-or, exclusions, ``min_score`` bar and order key as whole-matrix numpy
  operations, its best ``max_items`` by ``argpartition`` + a sort of those, and each
  reader's passing papers and scores as arrays (no reasons, no near-duplicate pass).
  paperpost: ``rank_many`` on the same papers and readers, its cache warm.
- **render**: join per-paper HTML/text fragments made once, quoted-printable encode both
  parts (binascii), prepend headers: the same bytes per digest as paperpost's messages.
- **outbox file**: Maildir: ``tmp/`` → fsync → rename into ``new/``, one fsync per file
  one after another ("each"); and grouped: a group's files written and synced on
  ``WRITER_THREADS`` threads (so the file system commits them together), renamed, ``new/``
  synced once (the outbox's durability). paperpost: ``Outbox.stage``/``flush`` per group.
- **ledger**: the ledger's own statements in the driver (sqlite3 / psycopg), same schema
  and durability: claim (INSERT ``sending``), settle (UPDATE ``sent`` + cursor upsert), a
  commit each per message ("each") or one transaction each per group ("grouped").
  paperpost: ``claim_group`` + ``settle_group`` per group of ``GROUP``.
- **whole pipeline**: the sum of the read, rank, render, file and ledger (SQLite) floors,
  grouped (paperpost's durability) and each. paperpost: ``run_plain`` on ``--sizes``
  generated subscribers in a fresh process (interpreter start, imports and worker process
  start-up included: what a user pays), wall time of the process and CPU of it and its
  workers. Per digest "all in" is that cost ÷ digests sent; the **marginal** cost per
  digest is the slope between the smallest and the largest size ((cost₂ − cost₁) ÷
  (digests₂ − digests₁)), and the fixed cost of a run is what is left at zero digests.
  The floor has no fixed cost here, so the marginal ratio is the per-digest comparison
  and the all-in ratio includes each run's start-up.

Not in any floor: fetching and parsing the dumps, the diff, per-paper ranking evidence,
bounces (per-run work, in paperpost's fixed cost).
"""

from __future__ import annotations

import argparse
import html
import json
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

from common import add_checkout_args, checkouts, report, run_in_tree
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


# --- read and rank --------------------------------------------------------------------------


def read_floor(path: Path) -> int:
    """The list file parsed by libyaml: entries, nothing validated."""
    import yaml

    return len(yaml.load(path.read_text(), Loader=yaml.CSafeLoader))


def read_paperpost(path: Path) -> int:
    from paperpost.subscribers import SubscriberError, iter_subscribers

    errors: list[SubscriberError] = []
    return sum(1 for _ in iter_subscribers(path, errors))


class RankFloor:
    """rank_many's per-reader arithmetic, vectorised directly over the distinct settings.

    Built (untimed) from the per-tag × paper scores paperpost's cache holds; :meth:`run`
    is the timed part: noisy-or, exclusions, bar, order key, top ``max_items``, and per
    reader the indices and scores of its passing papers."""

    def __init__(self, papers: Sequence[Paper], people: Sequence, background, cache) -> None:
        import numpy as np

        from paperpost import rank

        readings: dict[tuple[str, tuple[str, ...]], int] = {}
        found = []

        def index(tag: str, keywords: tuple[str, ...] = ()) -> int:
            key = (tag, tuple(sorted(keywords)))
            if key not in readings:
                readings[key] = len(found)
                found.append(rank.read_tag(*key))
            return readings[key]

        rows = []
        for person in people:
            wanted = tuple((index(i.tag, i.keywords), i.weight) for i in person.interests)
            rows.append(
                (
                    wanted,
                    tuple(index(t) for t in person.exclude),
                    person.min_score,
                    person.max_items,
                )
            )
        scored = cache.scores(papers, found, background)
        pad = len(found)
        zero = np.zeros((1, len(papers)))
        self.log_miss = np.vstack([np.log1p(-np.clip(scored.score, 0, 0.999)), zero])
        self.log_pass = np.vstack([np.log1p(-np.clip(scored.order, 0, 0.999)), zero])
        self.literal = np.vstack([scored.literal, zero])
        about = (scored.about >= rank.EXCLUDE_MIN) | (
            (scored.about >= rank.EXCLUDE_WITH_WORDS) & (scored.literal >= rank.EXCLUDE_LITERAL)
        )
        self.about = np.vstack([about, zero.astype(bool)])
        upvotes = np.array([p.upvotes or 0 for p in papers], dtype=np.float64)
        self.prior = rank.POPULARITY_TIEBREAK * (1.0 - np.exp(-upvotes / 30.0))
        self.literal_weight = rank.LITERAL_WEIGHT
        width = max(len(w) for w, _, _, _ in rows)
        avoid = max(len(a) for _, a, _, _ in rows)
        picks = np.full((len(rows), width), pad)
        weights = np.zeros((len(rows), width))
        avoids = np.full((len(rows), max(avoid, 1)), pad)
        for r, (wanted, unwanted, _, _) in enumerate(rows):
            top = max(w for _, w in wanted)
            for k, (i, w) in enumerate(wanted):
                picks[r, k], weights[r, k] = i, w / top
            avoids[r, : len(unwanted)] = unwanted
        self.picks, self.weights, self.avoids = picks, weights, avoids
        self.min_score = np.array([m for _, _, m, _ in rows])
        self.max_items = np.array([m for _, _, _, m in rows])

    def run(self) -> list:
        import numpy as np

        key = np.hstack(
            [
                self.picks,
                self.weights,
                self.avoids,
                self.min_score[:, None],
                self.max_items[:, None],
            ]
        )
        _, first, which = np.unique(key, axis=0, return_index=True, return_inverse=True)
        picks, weights = self.picks[first], self.weights[first]
        log_sum = np.zeros((len(first), self.log_miss.shape[1]))
        log_order = np.zeros(log_sum.shape)
        literal = np.zeros(log_sum.shape)
        for k in range(picks.shape[1]):
            log_sum += weights[:, k, None] * self.log_miss[picks[:, k]]
            log_order += weights[:, k, None] * self.log_pass[picks[:, k]]
            np.maximum(literal, weights[:, k, None] * self.literal[picks[:, k]], out=literal)
        blocked = self.about[self.avoids[first]].any(axis=1)
        scores = 1.0 - np.exp(log_sum)
        order = (1.0 - np.exp(log_order)) * (1.0 + self.prior) + self.literal_weight * literal
        final = np.where((scores >= self.min_score[first, None]) & ~blocked, order, -1.0)
        depth = int(self.max_items.max())
        best = np.argpartition(-final, depth - 1, axis=1)[:, :depth]
        values = np.take_along_axis(final, best, 1)
        sort = np.argsort(-values, axis=1, kind="stable")
        best, values = np.take_along_axis(best, sort, 1), np.take_along_axis(values, sort, 1)
        shown = np.round(np.take_along_axis(scores, best, 1), 3)
        counts = np.minimum((values >= 0).sum(1), self.max_items[first])
        return [(best[s, : counts[s]], shown[s, : counts[s]]) for s in which.ravel()]


# --- the stage block (a child process per checkout and round) --------------------------------


def rusage() -> tuple[float, float]:
    """(wall, CPU) seconds now: CPU is user + system of every thread of this process."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), used.ru_utime + used.ru_stime


def stages_child(args: argparse.Namespace) -> None:
    from paperpost.rank import Background, MatchCache

    root = Path(tempfile.mkdtemp(prefix="pp-floor-stages-"))
    samples: dict[str, dict[str, float]] = {}

    def measure(key: str, fn: Callable[..., object], *fn_args: object, count: int = 0) -> None:
        wall, cpu = rusage()
        fn(*fn_args)
        wall_after, cpu_after = rusage()
        samples[key] = {
            "wall": per_ms(wall_after - wall, count or n),
            "cpu": per_ms(cpu_after - cpu, count or n),
        }

    papers = shared_papers()[:300]
    people = profiles(args.messages * 2)
    cache = MatchCache()
    background = Background.of(papers, cache)
    rank_many(papers, people, background=background, cache=cache)  # warm, untimed
    floor_rank = RankFloor(papers, people, background, cache)
    floor_rank.run()
    measure("rank floor", floor_rank.run, count=len(people))
    measure("rank paperpost", rank_many, papers, people, None, background, cache, count=len(people))

    prepare(root / "list", args.messages)
    listed = root / "list" / "subscribers.yaml"
    measure("read floor", read_floor, listed, count=args.messages)
    measure("read paperpost", read_paperpost, listed, count=args.messages)

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
    measure("render floor", lambda: [floor_renderer.render(r, i, 0, 300) for r, i in work])
    measure("render paperpost", lambda: [renderer.render(r, i, EDITION, 0, 300) for r, i in work])

    measure("file floor each", maildir_each, fresh_maildir(root, "each-"), messages)
    measure("file floor grouped", maildir_grouped, fresh_maildir(root, "group-"), messages, GROUP)
    outbox = Outbox(Path(tempfile.mkdtemp(prefix="outbox-", dir=root)))
    measure("file paperpost", send_grouped, outbox, messages)

    stores = {
        "SQLite": (f"sqlite:///{root / 'ledger.db'}", "?", sqlite_connect(root / "ledger.db"))
    }
    if args.postgres:
        stores["PostgreSQL"] = (args.postgres, "%s", pg_connect(args.postgres))
    for name, (url, p, connect) in stores.items():
        store = Store(url)
        for label, group in (("each", None), ("grouped", GROUP)):
            reset(store)
            seed_cursors(store, messages)
            measure(f"ledger {name} floor {label}", ledger_floor, connect, p, messages, group)
        reset(store)
        seed_cursors(store, messages)
        measure(f"ledger {name} paperpost", ledger_paperpost, store, messages)
    print(json.dumps({"samples": samples, "bytes": size, "floor_bytes": floor_size, "messages": n}))
    import shutil

    shutil.rmtree(root, ignore_errors=True)


# --- whole pipeline --------------------------------------------------------------------------

# The whole run in a fresh interpreter that imports nothing but paperpost (no benchmark
# module: worker processes must not import them either). It prints its own clock, its
# digests and the CPU of itself and every descendant (worker processes, a fork server),
# read from /proc while they are alive: live ones' own and reaped children's time.
PIPELINE_CHILD = """
import json, os, sys, time
from pathlib import Path

def cpu_tree(pid):
    total = 0.0
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                f = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(f[1]), []).append((int(entry), f))
    tick = os.sysconf("SC_CLK_TCK")
    stack = [pid]
    while stack:
        for child, f in kids.get(stack.pop(), []):
            total += sum(int(x) for x in f[11:15]) / tick
            stack.append(child)
    return total

if __name__ == "__main__":
    clock = time.perf_counter()
    from paperpost.pipeline import run_plain
    from paperpost.settings import Settings

    data = Path(sys.argv[1])
    settings = Settings(
        sources=[str(data / "dumps")],
        subscribers_dir=data / "subscribers.yaml",
        database_url=f"sqlite:///{data / 'pp.db'}",
        outbox_dir=data / "outbox",
        delivery="outbox",
    )
    imported = time.perf_counter()
    summary = run_plain(settings)
    done = time.perf_counter()
    import resource
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime + cpu_tree(os.getpid())
    print(json.dumps({"import": imported - clock, "run": done - imported, "cpu": cpu,
                      "sent": summary.digests_sent, "stages": summary.stage_seconds}))
"""


def pipeline_child(tree: Path, template: Path, work: Path) -> dict:
    """One ``run_plain`` on a fresh copy of ``template`` with ``tree``'s paperpost."""
    import shutil
    import subprocess

    data = work / "run"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(template, data)
    clock = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE_CHILD, str(data)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - clock
    shutil.rmtree(data, ignore_errors=True)
    if done.returncode:
        raise SystemExit(f"{tree}: run_plain failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall": wall}


# --- the parent: paired rounds, the table ---------------------------------------------------


def ratio_row(label: str, floor: dict[str, float], paper: dict[str, float], note: str) -> list:
    return [
        label,
        floor["wall"],
        paper["wall"],
        paper["wall"] / floor["wall"],
        floor["cpu"],
        paper["cpu"],
        paper["cpu"] / floor["cpu"],
        note,
    ]


def summarize(
    stage_runs: dict[str, list[dict]], pipeline_runs: dict[str, dict], sizes: list[int]
) -> tuple[list[list[object]], dict[str, dict]]:
    """The table's rows and the medians behind them. Each checkout's paperpost figures are
    the medians of its own runs; the floors (the same code for every checkout) are the
    medians over every checkout's stage runs, so both are compared with one floor."""

    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    everyone = [run for runs in stage_runs.values() for run in runs]
    rows: list[list[object]] = []
    summary: dict[str, dict] = {}
    for name, runs in stage_runs.items():
        stage = {
            k: {
                c: med([r["samples"][k][c] for r in (everyone if " floor" in k else runs)])
                for c in ("wall", "cpu")
            }
            for k in runs[0]["samples"]
        }
        pairs = [
            ("read", "read floor", "read paperpost", "libyaml vs iter_subscribers"),
            ("rank", "rank floor", "rank paperpost", "per reader; cache warm on both sides"),
            (
                "render",
                "render floor",
                "render paperpost",
                f"{runs[0]['bytes'] / 1024:.1f} KB vs floor {runs[0]['floor_bytes'] / 1024:.1f} KB",
            ),
            ("outbox file", "file floor grouped", "file paperpost", f"groups of {GROUP}"),
            ("outbox file", "file floor each", "file paperpost", "floor: fsync per file"),
        ]
        for db in ("SQLite", "PostgreSQL"):
            if f"ledger {db} paperpost" in stage:
                pairs.append(
                    (
                        f"ledger {db}",
                        f"ledger {db} floor grouped",
                        f"ledger {db} paperpost",
                        f"commit per {GROUP}",
                    )
                )
                pairs.append(
                    (
                        f"ledger {db}",
                        f"ledger {db} floor each",
                        f"ledger {db} paperpost",
                        "floor: commit per message",
                    )
                )
        for label, floor_key, paper_key, note in pairs:
            rows.append(
                [
                    name,
                    *ratio_row(
                        f"{label} ({floor_key.rsplit(' ', 1)[-1]})",
                        stage[floor_key],
                        stage[paper_key],
                        note,
                    ),
                ]
            )
        parts = ("read floor", "rank floor", "render floor")
        floor = {
            kind: {
                c: sum(stage[k][c] for k in parts)
                + stage[f"file floor {kind}"][c]
                + stage[f"ledger SQLite floor {kind}"][c]
                for c in ("wall", "cpu")
            }
            for kind in ("grouped", "each")
        }
        per_size = {}
        for size in sizes:
            got = pipeline_runs[name][size]
            sent = med([r["sent"] for r in got])
            per_size[size] = {
                "sent": sent,
                "wall s": med([r["wall"] for r in got]),
                "cpu s": med([r["cpu"] for r in got]),
                "wall": med([per_ms(r["wall"], r["sent"]) for r in got]),
                "cpu": med([per_ms(r["cpu"], r["sent"]) for r in got]),
            }
            for kind in ("grouped", "each"):
                rows.append(
                    [
                        name,
                        *ratio_row(
                            f"whole pipeline, all in, {size:,} subscribers ({kind})",
                            floor[kind],
                            per_size[size],
                            f"{sent:.0f} sent; per run {per_size[size]['wall s']:.1f} s wall, "
                            f"{per_size[size]['cpu s']:.1f} CPU s",
                        ),
                    ]
                )
        lo, hi = per_size[sizes[0]], per_size[sizes[-1]]
        if len(sizes) > 1:
            marginal = {
                c: per_ms(hi[f"{c} s"] - lo[f"{c} s"], hi["sent"] - lo["sent"])
                for c in ("wall", "cpu")
            }
            fixed = {c: lo[f"{c} s"] - marginal[c] * lo["sent"] / 1000 for c in ("wall", "cpu")}
            for kind in ("grouped", "each"):
                rows.append(
                    [
                        name,
                        *ratio_row(
                            f"whole pipeline, marginal per digest ({kind})",
                            floor[kind],
                            marginal,
                            f"slope {sizes[0]:,} → {sizes[-1]:,}; fixed cost per run "
                            f"{fixed['wall']:.1f} s wall, {fixed['cpu']:.1f} CPU s",
                        ),
                    ]
                )
            per_size["marginal"] = marginal
            per_size["fixed"] = fixed
        summary[name] = {"stages": stage, "floor": floor, "pipeline": per_size}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL URL (ledger rows there are deleted)")
    parser.add_argument("--child-stages", action="store_true", help=argparse.SUPPRESS)
    add_checkout_args(parser)
    args = parser.parse_args()
    if args.child_stages:
        stages_child(args)
        return
    trees = checkouts(args)
    sizes = sorted(args.sizes)
    work = Path(tempfile.mkdtemp(prefix="pp-floor-"))
    templates = {}
    for size in sizes:
        templates[size] = work / f"data-{size}"
        prepare(templates[size], size)
    me = [sys.executable, str(Path(__file__).resolve()), "--child-stages"]
    me += ["--messages", str(args.messages)]
    if args.postgres:
        me += ["--postgres", args.postgres]
    stage_runs: dict[str, list[dict]] = {name: [] for name in trees}
    pipeline_runs: dict[str, dict[int, list[dict]]] = {n: {s: [] for s in sizes} for n in trees}
    loads = []
    for round_ in range(args.repeat):
        load_before = os.getloadavg()[0]
        for name, tree in trees.items():
            stage_runs[name].append(run_in_tree(me[1], tree, dict(os.environ), *me[2:]))
        for size in sizes:
            for name, tree in trees.items():
                pipeline_runs[name][size].append(pipeline_child(tree, templates[size], work))
        loads.append((load_before, os.getloadavg()[0]))
        print(f"round {round_ + 1}/{args.repeat} done, load {loads[-1]}", flush=True)

    rows, summary = summarize(stage_runs, pipeline_runs, sizes)
    headers = [
        "tree",
        "stage",
        "floor wall ms",
        "paperpost wall ms",
        "wall ratio",
        "floor CPU ms",
        "paperpost CPU ms",
        "CPU ratio",
        "notes",
    ]
    report(
        "floor",
        headers,
        rows,
        {
            "summary": summary,
            "stage_runs": stage_runs,
            "pipeline_runs": pipeline_runs,
            "loads": loads,
            "trees": {k: str(v) for k, v in trees.items()},
        },
    )
    print("load (before, after) per round:", [tuple(round(x, 1) for x in pair) for pair in loads])
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
