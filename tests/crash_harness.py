"""SIGKILL `paperpost run` at random moments while it sends 200 digests, then run it again.

The mail server is a local SMTP sink (aiosmtpd, in this process) that logs every message
whose end-of-data it received and every message it accepted. Each trial kills the sending
process once, in one of three ways:

* ``dot``: when the k-th end-of-data arrives, the sink kills the client and then accepts the
  message (the server has it, the client never hears back: the nastiest moment);
* ``dot-refused``: the same, but the sink does not accept it;
* ``time``: a timer kills the client at a uniformly random moment of its sending phase
  (rendering, ledger commits, between SMTP commands, mid-body, ...);
* ``deferred`` (only when asked for, ``modes=DEFERRED_MODES``): as ``time``, while the sink
  refuses every reader at ``deferred.example`` (every 4th reader) by policy at RCPT, so the
  run defers that domain (docs/delivery.md); the second run finds the domain accepting.
  Readers refused before the deferral (up to 2: one reader's failure, as far as the run
  knew) are counted apart (``failed_refused``), not as missing; ``refused`` counts the
  refusals the sink gave in the killed runs (without the deferral: the domain's 50 readers
  before the kill).

A second, undisturbed run then finishes the job. Per trial the harness counts duplicates
(a Message-ID accepted twice), digests missing although their end-of-data never reached the
sink and that were not reported ambiguous, ambiguous digests (what the second run reports), how
many of those had in fact been accepted, and how many never got their end-of-data out (a kill
between recording ``data-sent`` and writing the dot: the one window a ledger cannot close).
Used by tests/test_crash.py (a short version by default, the full sweep with
PAPERPOST_FULL_TESTS=1) and benchmarks/crash_sweep.py (prints the tally, writes JSON).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path

from aiosmtpd.controller import Controller

from smtp_server import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
READERS = 200
MODES = ("dot", "time", "dot-refused", "time")
DEFERRED_MODES = ("deferred",)
DEFERRED = "deferred.example"
POLICY_REFUSAL = "554 5.7.1 Service unavailable; client host [192.0.2.1] blocked using zen"


def address(i: int) -> str:
    """Reader ``i``'s address: every 4th at DEFERRED, the others at example.org."""
    return f"reader{i}@{DEFERRED if i % 4 == 1 else 'example.org'}"


class Sink:
    """An SMTP server that logs what it got and kills the client at the chosen moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self, pid: int = 0, mode: str = "", kill_at: int = 0, delay: float = 0.0) -> None:
        with self.lock:
            self.pid, self.mode, self.kill_at, self.delay = pid, mode, kill_at, delay
            self.data_seen: list[str] = []  # Message-IDs whose end-of-data arrived
            self.accepted: list[tuple[str, str]] = []  # (recipient, Message-ID) accepted
            self.first_data: float | None = None
            self.last_data: float | None = None
            self.killed = False
            self.refused: list[str] = []  # recipients refused at RCPT, each time

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.mode == "deferred" and address.lower().endswith("@" + DEFERRED):
            with self.lock:
                self.refused.append(address.lower())
            return POLICY_REFUSAL
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def kill(self) -> None:
        with self.lock:
            if self.pid and not self.killed:
                self.killed = True
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    self.killed = False  # it had already finished

    async def handle_DATA(self, server, session, envelope):
        message_id = message_from_bytes(envelope.content, policy=email_policy.default)["Message-ID"]
        with self.lock:
            self.data_seen.append(message_id)
            now = time.monotonic()
            if self.first_data is None:
                self.first_data = now
                if self.mode in {"time", "deferred"} and self.pid:
                    threading.Timer(self.delay, self.kill).start()
            self.last_data = now
            count = len(self.data_seen)
        if self.mode.startswith("dot") and count == self.kill_at:
            self.kill()
            if self.mode == "dot-refused":
                return "451 4.3.0 server going away"
        with self.lock:
            self.accepted.append((envelope.rcpt_tos[0].lower(), message_id))
        return "250 2.0.0 OK"


@dataclass
class Trial:
    path: str
    mode: str
    connections: int
    killed: bool
    kill_point: str
    duplicates: int
    missing: int
    missing_never_sent: int  # end-of-data never reached the server, not delivered, not reported
    ambiguous: int
    ambiguous_never_sent: int  # reported ambiguous although the end-of-data never arrived
    ambiguous_accepted: int
    ambiguous_over_connections: bool
    rerun_exit: int
    failed_refused: int = 0  # refused by the sink and failed (``deferred``): not missing
    refused: int = 0  # RCPTs the sink refused in the killed run (``deferred``)


@dataclass
class Sweep:
    trials: list[Trial] = field(default_factory=list)

    def tally(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for path in sorted({t.path for t in self.trials}):
            mine = [t for t in self.trials if t.path == path]
            counts = Counter()
            for t in mine:
                counts.update(
                    trials=1,
                    kills=int(t.killed),
                    duplicates=t.duplicates,
                    missing=t.missing,
                    missing_never_sent=t.missing_never_sent,
                    ambiguous=t.ambiguous,
                    ambiguous_never_sent=t.ambiguous_never_sent,
                    ambiguous_accepted=t.ambiguous_accepted,
                    ambiguous_over_connections=int(t.ambiguous_over_connections),
                    failed_refused=t.failed_refused,
                    refused=t.refused,
                    max_refused=0,
                    max_ambiguous=0,
                )
            counts["max_ambiguous"] = max((t.ambiguous for t in mine), default=0)
            counts["max_refused"] = max((t.refused for t in mine), default=0)
            out[path] = dict(counts)
        return out

    def to_json(self) -> dict[str, object]:
        return {"tally": self.tally(), "trials": [asdict(t) for t in self.trials]}


def write_readers(path: Path, readers: int) -> None:
    path.write_text(
        "".join(
            f"- email: {address(i)}\n  tags: [agents, reasoning, diffusion]\n  min_score: 0.1\n"
            for i in range(readers)
        )
    )


def environment(
    workdir: Path, readers: Path, port: int, connections: int, database_url: str | None = None
) -> dict[str, str]:
    env = {
        **os.environ,
        "PAPERPOST_SOURCES": json.dumps([str(workdir / "dumps")]),
        "PAPERPOST_SUBSCRIBERS_DIR": str(readers),
        "PAPERPOST_DATABASE_URL": database_url or _sqlite(workdir),
        "PAPERPOST_DELIVERY": "smtp",
        "PAPERPOST_SMTP_HOST": "127.0.0.1",
        "PAPERPOST_SMTP_PORT": str(port),
        "PAPERPOST_SMTP_SECURITY": "none",
        "PAPERPOST_SMTP_CONNECTIONS": str(connections),
        "PAPERPOST_SECRET_KEY": "crash-harness-key-0123456789abcdef",
        "PAPERPOST_SENDER": "paperpost <digest@example.org>",
    }
    env.pop("PAPERPOST_RESEND_AMBIGUOUS", None)
    return env


def start(workdir: Path, env: dict[str, str], prefect: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "paperpost", "run", "--json", "--today", "2026-11-25"]
    if not prefect:
        command.append("--no-prefect")
    return subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _sqlite(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'pp.db'}"


def prepare(workdir: Path, database_url: str | None = None) -> None:
    """A trial's dumps, and an empty database: a SQLite file of its own, or the PostgreSQL
    database with every table dropped (each run migrates it afresh)."""
    shutil.copytree(EXAMPLES / "dumps", workdir / "dumps")
    if database_url:
        from sqlalchemy import MetaData, create_engine

        engine = create_engine(database_url)
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
        engine.dispose()


def sweep(
    folder: Path,
    kills: int,
    prefect: bool,
    seed: int = 20261125,
    prefect_env: dict[str, str] | None = None,
    readers_count: int = READERS,
    database_url: str | None = None,
    modes: tuple[str, ...] = MODES,
) -> Sweep:
    """Run trials until ``kills`` of them killed the process mid-send; each trial on a fresh
    SQLite file, or on ``database_url`` (PostgreSQL) emptied first."""
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    rng = random.Random(seed)
    readers = folder / "readers.yaml"
    write_readers(readers, readers_count)
    path = "prefect" if prefect else "plain"
    result = Sweep()
    try:
        # calibration: one undisturbed run tells how long sending takes on this machine
        calib = folder / f"{path}-calibration"
        prepare(calib, database_url)
        env = {**environment(calib, readers, port, 2, database_url), **(prefect_env or {})}
        process = start(calib, env, prefect)
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
        assert len(sink.accepted) == readers_count, (len(sink.accepted), err[-2000:])
        sending = (sink.last_data or 0) - (sink.first_data or 0)
        trial = 0
        while sum(t.killed for t in result.trials) < kills and trial < 3 * kills:
            mode = modes[trial % len(modes)]
            connections = 1 + trial % 4
            workdir = folder / f"{path}-{trial}"
            prepare(workdir, database_url)
            env = {
                **environment(workdir, readers, port, connections, database_url),
                **(prefect_env or {}),
            }
            first = start(workdir, env, prefect)
            sink.reset(
                first.pid,
                mode,
                kill_at=rng.randint(1, readers_count - 1),
                delay=rng.uniform(0, 0.95 * sending),
            )
            first.communicate(timeout=600)
            killed = first.returncode == -signal.SIGKILL
            point = (
                f"end-of-data #{sink.kill_at}"
                if mode.startswith("dot")
                else f"{sink.delay:.2f}s into sending ({len(sink.data_seen)} received)"
            )
            data_seen_first = set(sink.data_seen)
            accepted = list(sink.accepted)
            refused_list = list(sink.refused)
            refused = set(refused_list)
            sink.reset()
            second = start(workdir, env, prefect)
            out, err = second.communicate(timeout=600)
            accepted += sink.accepted
            summary = json.loads(out) if out.strip() else {"deliveries": []}
            ambiguous = {d["address"] for d in summary["deliveries"] if d["status"] == "ambiguous"}
            per_address = Counter(address for address, _ in accepted)
            by_id = Counter(message_id for _, message_id in accepted)
            everyone = [address(i) for i in range(readers_count)]
            ids = _message_ids(database_url or _sqlite(workdir))
            failed = _failed(database_url or _sqlite(workdir)) & refused
            missing = [a for a in everyone if per_address[a] == 0 and a not in ambiguous | failed]
            never_sent = [a for a in everyone if ids.get(a) not in data_seen_first]
            result.trials.append(
                Trial(
                    path=path,
                    mode=mode,
                    connections=connections,
                    killed=killed,
                    kill_point=point,
                    duplicates=sum(1 for c in by_id.values() if c > 1),
                    missing=len(missing),
                    missing_never_sent=sum(
                        1 for a in never_sent if per_address[a] == 0 and a not in ambiguous | failed
                    ),
                    ambiguous=len(ambiguous),
                    ambiguous_never_sent=sum(1 for a in never_sent if a in ambiguous),
                    ambiguous_accepted=sum(1 for a in ambiguous if per_address[a] > 0),
                    ambiguous_over_connections=len(ambiguous) > connections,
                    rerun_exit=second.returncode,
                    failed_refused=len(failed),
                    refused=len(refused_list),
                )
            )
            trial += 1
    finally:
        controller.stop()
    return result


def _failed(database_url: str) -> set[str]:
    """The readers whose digest the ledger holds as failed for good."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT address FROM deliveries WHERE status = 'failed'"))
            return {address for (address,) in rows}
    finally:
        engine.dispose()


def _message_ids(database_url: str) -> dict[str, str]:
    """Each reader's digest Message-ID, from the ledger."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT address, message_id FROM deliveries"))
            return {address: message_id for address, message_id in rows}
    finally:
        engine.dispose()
