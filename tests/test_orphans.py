"""SIGKILL `paperpost run` (the Prefect path): nothing it started may outlive it.

Every process the run starts inherits a marker in its environment; after the kill no live
process may carry it. The default run kills once while the flow runs; the sweep (marked slow)
kills at random moments from start-up to the end. benchmarks/orphans.py measures the same
against Prefect's own temporary server, which a SIGKILL leaves running.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="finds processes through /proc (Linux)"
)


def survivors(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            mine = entry.name.isdigit() and token.encode() in (entry / "environ").read_bytes()
            if mine and "State:\tZ" not in (entry / "status").read_text():  # not a zombie
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def start_run(tmp_path: Path, prefect_harness: Path):
    """Start `paperpost run` on the examples with its own Prefect API, on a copy of the
    session's migrated Prefect database (a cold one would spend ~10 s migrating)."""
    database = tmp_path / "prefect.db"
    with sqlite3.connect(prefect_harness) as source, sqlite3.connect(database) as copy:
        source.backup(copy)
    started: list[subprocess.Popen[str]] = []

    def start(token: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPERPOST_", "PREFECT_"))}
        env.update(
            PAPERPOST_ORPHAN_PROBE=token,
            PAPERPOST_DATABASE_URL=f"sqlite:///{tmp_path / token / 'pp.db'}",
            PAPERPOST_OUTBOX_DIR=str(tmp_path / token / "outbox"),
            PREFECT_HOME=str(tmp_path / "prefect-home"),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{database}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        run = subprocess.Popen(
            [sys.executable, "-m", "paperpost", "run"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
        run.wait()


def kill_and_count(run: subprocess.Popen[str], token: str) -> list[int]:
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(1)
    left = survivors(token)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def test_sigkill_while_the_flow_runs_leaves_nothing(start_run) -> None:
    token = uuid.uuid4().hex
    run = start_run(token)
    assert run.stderr is not None
    for line in run.stderr:  # Prefect logs the flow run's start once its API answers
        if "Beginning flow run" in line:
            break
    else:
        pytest.fail(f"the run ended before its flow began (exit {run.wait()})")
    assert survivors(token) == [run.pid]
    assert kill_and_count(run, token) == []


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_nothing(start_run) -> None:
    rng = random.Random(20261125)
    for _ in range(10):
        token = uuid.uuid4().hex
        run = start_run(token)
        time.sleep(rng.uniform(0.1, 8.0))
        assert kill_and_count(run, token) == []
