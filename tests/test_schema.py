"""The schema is owned by Alembic revisions; concurrent first runs do not race."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from conftest import POSTGRES_URL, ROOT, reset_postgres, unavailable
from paperpost import schema
from paperpost.cli import app
from paperpost.store import Store, engine_for, metadata

runner = CliRunner()

# A child process: wait at the barrier (the "go" file), then use the database for the
# first time, as `paperpost run` does.
CHILD = """
import sys, time
from pathlib import Path
from paperpost.store import Store
url, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
print(Store(url).paper_count())
"""


def test_migrations_create_exactly_the_tables_the_code_uses(any_db_url: str) -> None:
    with engine_for(any_db_url).connect() as conn:
        assert schema.current(conn) == schema.head()
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert set(inspect(conn).get_table_names()) == {*metadata.tables, "alembic_version"}


def _first_runs_together(url: str, tmp_path: Path, count: int) -> list[subprocess.CompletedProcess]:
    go = tmp_path / "go"
    children = []
    for n in range(count):
        ready = tmp_path / f"ready-{n}"
        children.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, url, str(ready), str(go)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                ),
            )
        )
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready, _ in children):  # every child imported
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()
    results = []
    for _, child in children:
        stdout, stderr = child.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr))
    return results


def test_concurrent_first_runs_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'fresh.db'}"
    results = _first_runs_together(url, tmp_path, 3)
    assert [(r.returncode, r.stdout.strip(), r.stderr) for r in results] == [(0, "0", "")] * 3
    with create_engine(url).connect() as conn:
        assert schema.current(conn) == schema.head()


@pytest.mark.postgres
def test_concurrent_first_runs_on_an_empty_postgres_database(tmp_path: Path) -> None:
    if not POSTGRES_URL:
        unavailable(
            "PAPERPOST_REQUIRE_POSTGRES",
            "set PAPERPOST_TEST_POSTGRES_URL to test against PostgreSQL",
        )
    reset_postgres(POSTGRES_URL, migrate=False)
    results = _first_runs_together(POSTGRES_URL, tmp_path, 3)
    assert [(r.returncode, r.stdout.strip(), r.stderr) for r in results] == [(0, "0", "")] * 3
    reset_postgres(POSTGRES_URL)  # leave it migrated for the cached engine of this process


def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    # how paperpost made its tables before Alembic: the tables of revision 0001, unstamped
    with old.begin() as conn:
        command.upgrade(schema._config(conn), schema.INITIAL)
        conn.execute(text("DROP TABLE alembic_version"))
    with old.begin() as conn:
        conn.execute(metadata.tables["locks"].insert().values(name="x", owner="y", expires_at=1))
    old.dispose()
    store = Store(url)
    assert store.lock_owner("x") == "y"  # data kept
    with store.engine.connect() as conn:
        assert schema.current(conn) == schema.head()


def test_papers_stored_before_0005_are_found_by_their_abstract(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text

    from paperpost.models import Paper

    url = f"sqlite:///{tmp_path / 'at4.db'}"
    old = create_engine(url)
    with old.begin() as conn:
        command.upgrade(schema._config(conn), "0004")
        abstract = " ".join(f"word{i}" for i in range(30))
        data = Paper("Old Title", abstract).to_json()
        conn.execute(
            text(
                "INSERT INTO papers (key_hash, title, data, first_seen, last_seen) "
                "VALUES ('k', 'Old Title', :data, '2026-11-01', '2026-11-01')"
            ),
            {"data": __import__("json").dumps(data)},
        )
    old.dispose()
    store = Store(url)
    assert store.ingest("t", [Paper("New Title", abstract)]).new == 0
    ((_, paper),) = store.papers_between(0, 10)
    assert paper.title == "Old Title"


def test_db_upgrade_command(tmp_path: Path) -> None:
    target = tmp_path / "cli.db"
    first = runner.invoke(app, ["db", "upgrade", "--db", str(target)])
    assert first.exit_code == 0, first.output
    assert f"upgraded from empty to revision {schema.head()}" in first.stdout
    again = runner.invoke(app, ["db", "upgrade", "--db", str(target)])
    assert again.exit_code == 0, again.output
    assert f"already at revision {schema.head()}" in again.stdout


def test_every_migration_file_ships_in_the_package() -> None:
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["paperpost"]
    package = ROOT / "paperpost"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    files = {p for p in (package / "migrations").rglob("*") if p.is_file()}
    files = {p for p in files if "__pycache__" not in p.parts}
    assert files and files <= shipped


def test_the_revisions_are_one_linear_chain() -> None:
    """Two helpers adding revision 0004 on separate branches would make two heads: after a
    rebase, point your revision's down_revision at the current head (README: Development)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(schema._config())
    assert len(scripts.get_heads()) == 1, scripts.get_heads()
    assert len(scripts.get_bases()) == 1
    for script in scripts.walk_revisions():
        assert not script.is_branch_point and not script.is_merge_point, script.revision
