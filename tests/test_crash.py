"""Kill a real sending run with SIGKILL at many points; the rerun delivers each digest once.

The mail server is aiosmtpd in this process; it SIGKILLs the ``paperpost run`` process when
the k-th message arrives, either before accepting it or after (the nastiest point: the
server has the message, the client never hears back). The rerun must leave every
subscriber with exactly one digest, except the deliveries it reports as ambiguous.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path

from aiosmtpd.controller import Controller

from conftest import EXAMPLES
from smtp_server import free_port

SUBSCRIBERS = 200
TRIALS = 20


class KillingSink:
    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.kill_at = 0
        self.after_accept = True
        self.pid = 0

    async def handle_DATA(self, server, session, envelope):
        count = len(self.received) + 1
        msg = message_from_bytes(envelope.content, policy=email_policy.default)
        if count == self.kill_at and not self.after_accept and self.pid:
            os.kill(self.pid, signal.SIGKILL)
            return "451 server going away"
        self.received.append((envelope.rcpt_tos[0].lower(), msg["Message-ID"]))
        if count == self.kill_at and self.pid:
            os.kill(self.pid, signal.SIGKILL)
        return "250 OK"


def run(workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "paperpost", "run", "--no-prefect", "--json"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_during_sending_never_duplicates_or_loses(tmp_path: Path) -> None:
    sink = KillingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    rng = random.Random(20261125)
    tally = Counter()
    try:
        subs = tmp_path / "subscribers.yaml"
        subs.write_text(
            "".join(
                f"- email: reader{i}@example.org\n  tags: [agents, reasoning, diffusion]\n"
                f"  min_score: 0.1\n"
                for i in range(SUBSCRIBERS)
            )
        )
        for trial in range(TRIALS):
            workdir = tmp_path / f"trial{trial}"
            shutil.copytree(EXAMPLES / "dumps", workdir / "dumps")
            env = {
                **os.environ,
                "PAPERPOST_SOURCES": json.dumps([str(workdir / "dumps")]),
                "PAPERPOST_SUBSCRIBERS_DIR": str(subs),
                "PAPERPOST_DATABASE_URL": f"sqlite:///{workdir / 'pp.db'}",
                "PAPERPOST_DELIVERY": "smtp",
                "PAPERPOST_SMTP_HOST": "127.0.0.1",
                "PAPERPOST_SMTP_PORT": str(controller.port),
                "PAPERPOST_SMTP_SECURITY": "none",
                "PAPERPOST_SMTP_CONNECTIONS": str(1 + trial % 3),
            }
            sink.received = []
            sink.kill_at = rng.randint(1, SUBSCRIBERS - 1)
            sink.after_accept = trial % 2 == 0
            first = run(workdir, env)
            sink.pid = first.pid
            first.wait(timeout=120)
            sink.pid = 0
            assert first.returncode == -signal.SIGKILL, first.stderr

            second = run(workdir, env)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 0, err
            summary = json.loads(out)
            ambiguous = {d["address"] for d in summary["deliveries"] if d["status"] == "ambiguous"}
            per_address = Counter(address for address, _ in sink.received)
            by_id = Counter(mid for _, mid in sink.received)
            duplicates = sum(1 for c in by_id.values() if c > 1)
            missing = [
                f"reader{i}@example.org"
                for i in range(SUBSCRIBERS)
                if per_address[f"reader{i}@example.org"] == 0
                and f"reader{i}@example.org" not in ambiguous
            ]
            tally.update(
                runs=2,
                kill_points=1,
                duplicates=duplicates,
                missing=len(missing),
                ambiguous=len(ambiguous),
            )
            assert duplicates == 0, (trial, sink.kill_at)
            assert missing == [], (trial, sink.kill_at)
            assert all(per_address[a] <= 1 for a in ambiguous)
            assert len(ambiguous) <= int(env["PAPERPOST_SMTP_CONNECTIONS"])
    finally:
        controller.stop()
    print(f"\ncrash test tally: {dict(tally)}")
    assert tally["kill_points"] == TRIALS
