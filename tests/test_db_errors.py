"""Database and file errors end as one line saying what to do, with their own exit code
(7 database, 8 file system), never a traceback: real locked, corrupted, read-only,
unreachable and too-new databases."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from conftest import EXAMPLES
from paperpost.cli import app
from paperpost.db import explain
from paperpost.exitcodes import ExitCode
from paperpost.store import Store

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAPERPOST_SOURCES", str(EXAMPLES / "dumps"))
    monkeypatch.setenv("PAPERPOST_OUTBOX_DIR", str(tmp_path / "outbox"))
    return tmp_path


def run(db: str, *options: str) -> tuple[int, str]:
    result = runner.invoke(app, ["run", *(options or ["--no-prefect"]), "--json", "--db", db])
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return result.exit_code, lines[0]


def test_a_corrupted_file(project: Path) -> None:
    (project / "pp.db").write_bytes(b"not a database, whatever the name says\n" * 100)
    code, line = run(str(project / "pp.db"))
    assert code == ExitCode.DATABASE
    assert f"{project / 'pp.db'} is not a readable SQLite database (corrupted?)" in line
    assert "restore it from a backup" in line


def test_the_prefect_path_fails_before_the_flow_starts(project: Path) -> None:
    """One line and no Prefect log lines or traceback around it (run() checks): the
    database is checked before the flow starts."""
    (project / "pp.db").write_bytes(b"not a database\n" * 100)
    code, line = run(str(project / "pp.db"), "--today", "2026-11-25")
    assert code == ExitCode.DATABASE and "is not a readable SQLite database" in line


def test_a_read_only_database(project: Path) -> None:
    Store(f"sqlite:///{project / 'pp.db'}")  # a good, migrated database
    code, line = run(f"sqlite:///file:{project / 'pp.db'}?mode=ro&uri=true")
    assert code == ExitCode.DATABASE
    assert "is read-only: make the file and its folder writable" in line


def test_an_unreachable_server_never_shows_the_password(project: Path) -> None:
    code, line = run("postgresql+psycopg://paperpost:hunter2-secret@127.0.0.1:1/paperpost")
    assert code == ExitCode.DATABASE
    assert "cannot connect to postgresql+psycopg://paperpost:***@127.0.0.1:1/paperpost" in line
    assert "hunter2" not in line


def test_a_server_that_never_answers_fails_after_the_connect_timeout(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port that accepts and then says nothing (a wedged server, a black-holing
    firewall): before, libpq waited forever and the run hung."""
    import socket

    from paperpost import db

    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 1)  # 10 s in use; the same code path
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        code, line = run(f"postgresql+psycopg://paperpost:pw@127.0.0.1:{port}/paperpost")
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert code == ExitCode.DATABASE
    assert f"cannot connect to postgresql+psycopg://paperpost:***@127.0.0.1:{port}" in line
    assert waited < 10


def test_a_database_from_a_newer_paperpost(project: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade", "--db", str(project / "pp.db")]).exit_code == 0
    with sqlite3.connect(project / "pp.db") as newer:
        newer.execute("UPDATE alembic_version SET version_num = '9999'")
    code, line = run(str(project / "pp.db"))
    assert code == ExitCode.DATABASE
    assert "is at schema revision 9999, which this version of paperpost does not know" in line


def test_a_locked_database_is_explained(tmp_path: Path) -> None:
    """The message for a real SQLite lock (a waiting time of 0 here; see the slow test)."""
    path = tmp_path / "pp.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with pytest.raises(OperationalError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    holder.rollback()
    assert "is locked: another process held its write lock for over 10 s" in explain(caught.value)


@pytest.mark.slow
def test_a_locked_database_ends_the_run_after_the_busy_timeout(project: Path) -> None:
    Store(f"sqlite:///{project / 'pp.db'}")
    holder = sqlite3.connect(project / "pp.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a stuck writer
    try:
        started = time.monotonic()
        code, line = run(str(project / "pp.db"))
        waited = time.monotonic() - started
    finally:
        holder.rollback()
    assert code == ExitCode.DATABASE and "pp.db is locked" in line
    assert 10 <= waited < 30


def test_every_command_reports_database_errors_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "pp.db").write_bytes(b"garbage\n" * 200)
    result = subprocess.run(
        [sys.executable, "-m", "paperpost", "subscribers", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PAPERPOST_DATABASE_URL": f"sqlite:///{tmp_path / 'pp.db'}"},
        timeout=120,
    )
    assert result.returncode == ExitCode.DATABASE
    assert result.stderr.strip().splitlines() == [
        f"database error {tmp_path / 'pp.db'} is not a readable SQLite database (corrupted?): "
        "restore it from a backup, or move it away to start afresh (every paper would then be "
        "news again)"
    ]
