"""Shared fixtures: the real data in ../shared, a temporary project state, one Prefect harness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DUMPS = sorted((SHARED / "dumps").glob("*.txt"))
API_DAYS = sorted((SHARED / "hf_api").glob("*.json"))
EXAMPLES = ROOT / "examples"
CAPTURED = date(2026, 11, 25)  # the day the shared dumps were captured


FULL_TESTS = os.environ.get("PAPERPOST_FULL_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long sweeps (marked `slow`) run in CI; the default run keeps their short versions."""
    if FULL_TESTS:
        return
    skip = pytest.mark.skip(reason="long sweep: set PAPERPOST_FULL_TESTS=1 to run it (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_papers():
    """Every paper in ../shared, parsed once for the session."""
    from paperpost.dumps import distinct_papers, parse_dump

    papers = []
    for path in DUMPS + API_DAYS:
        papers += parse_dump(path.read_bytes(), str(path), CAPTURED).papers
    return distinct_papers(papers)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'paperpost.db'}"


POSTGRES_URL = os.environ.get("PAPERPOST_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, and a real PostgreSQL server when one is configured.

    CI starts PostgreSQL and sets PAPERPOST_TEST_POSTGRES_URL (and PAPERPOST_REQUIRE_POSTGRES,
    so that a missing server fails instead of skipping).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'paperpost.db'}"
    if not POSTGRES_URL:
        if os.environ.get("PAPERPOST_REQUIRE_POSTGRES"):
            pytest.fail("PAPERPOST_TEST_POSTGRES_URL is not set but PostgreSQL is required")
        pytest.skip("set PAPERPOST_TEST_POSTGRES_URL to test against PostgreSQL")
    reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


def reset_postgres(url: str, migrate: bool = True) -> None:
    """Drop every table of the test database, then (by default) migrate it afresh."""
    from sqlalchemy import MetaData

    from paperpost import schema
    from paperpost.store import engine_for

    engine = engine_for(url)
    tables = MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)
    if migrate:
        schema.upgrade(engine)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for the whole session (it costs ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
