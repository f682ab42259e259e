"""Shared fixtures: the project's own papers (shipped examples and generated ones), the
reference data in ../shared when it is there, a temporary project state, one Prefect harness.

Tests that need something from outside the checkout skip with a reason saying what to provide,
or fail where CI requires it: ../shared (`shared` marker, PAPERPOST_REQUIRE_SHARED), PostgreSQL
(PAPERPOST_TEST_POSTGRES_URL, PAPERPOST_REQUIRE_POSTGRES), Chromium (PAPERPOST_REQUIRE_BROWSER),
the paperpost[semantic] extra (`encoder` fixture, PAPERPOST_REQUIRE_SEMANTIC).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# one BLAS thread per test process: on a busy machine OpenBLAS's threads spin waiting for each
# other (the semantic encoder's matrix products took 3-4x the CPU time); before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DUMPS = sorted((SHARED / "dumps").glob("*.txt"))  # empty without ../shared: mark tests `shared`
API_DAYS = sorted((SHARED / "hf_api").glob("*.json"))
EXAMPLES = ROOT / "examples"
EXAMPLE_DUMP = EXAMPLES / "dumps" / "2026-11-19.txt"  # a text dump the project ships
EXAMPLE_API_DAY = EXAMPLES / "dumps" / "2026-11-23.json"  # an API day the project ships
CAPTURED = date(2026, 11, 25)  # the day the shared dumps were captured
SHARED_MISSING = (
    f"needs the reference data in {SHARED} (dumps/*.txt and hf_api/*.json, the shared/ "
    "folder beside the checkout; CI provides it)"
)


FULL_TESTS = os.environ.get("PAPERPOST_FULL_TESTS") == "1"


def _background_threads_draw_from_their_own_random() -> None:
    """Module-level ``random`` functions called from any thread but the main one draw from a
    ``random.Random`` of that thread.

    Hypothesis tells a strategy that uses the ``random`` module by the module's global state
    changing during a draw, and pyproject.toml makes that warning an error. Background threads
    of the session's Prefect API and its client (websockets keep-alive pings, docket's jittered
    sweeps) and of the Dask cluster draw from that state every few seconds, so a draw that
    happened to overlap one was blamed on the strategy (the 3 HypothesisDeprecationWarnings of
    session 5's CI, in test_poison and test_sanitize, whose strategies use no ``random``)."""
    main = threading.main_thread()
    own = threading.local()

    def per_thread(name: str):  # type: ignore[no-untyped-def]
        shared = getattr(random, name)

        def draw(*args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread() is main:
                return shared(*args, **kwargs)
            if not hasattr(own, "random"):
                own.random = random.Random()
            return getattr(own.random, name)(*args, **kwargs)

        return draw

    for name in (
        "random", "getrandbits", "randbytes", "randrange", "randint", "choice", "choices",
        "shuffle", "sample", "uniform", "triangular", "gauss", "normalvariate",
        "expovariate", "betavariate", "paretovariate", "weibullvariate", "vonmisesvariate",
        "gammavariate", "lognormvariate",
    ):  # fmt: skip
        setattr(random, name, per_thread(name))


_background_threads_draw_from_their_own_random()


def unavailable(required_by: str, reason: str) -> None:
    """Skip a test that needs something this machine lacks, or fail it where it is required."""
    if os.environ.get(required_by):
        pytest.fail(f"{reason}; {required_by} is set, so it is required here")
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long sweeps (marked `slow`) run in CI; the default run keeps their short versions."""
    if FULL_TESTS:
        return
    skip = pytest.mark.skip(reason="long sweep: set PAPERPOST_FULL_TESTS=1 to run it (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _needs_shared(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("shared") and not (DUMPS and API_DAYS):
        unavailable("PAPERPOST_REQUIRE_SHARED", SHARED_MISSING)


@pytest.fixture(scope="session")
def shared_papers():
    """Every paper in ../shared, parsed once for the session (skips without ../shared)."""
    from paperpost.dumps import distinct_papers, parse_dump

    if not (DUMPS and API_DAYS):
        unavailable("PAPERPOST_REQUIRE_SHARED", SHARED_MISSING)
    papers = []
    for path in DUMPS + API_DAYS:
        papers += parse_dump(path.read_bytes(), str(path), CAPTURED).papers
    return distinct_papers(papers)


@pytest.fixture(scope="session")
def encoder():
    """The semantic extra's encoder, loaded once for the session (skips without the extra)."""
    from paperpost import semantic

    try:
        return semantic.encoder()
    except semantic.SemanticUnavailable as exc:
        unavailable("PAPERPOST_REQUIRE_SEMANTIC", str(exc))


@pytest.fixture(scope="session")
def corpus():
    """The papers the project ships (examples/) plus 200 generated ones (paperpost.synthetic)."""
    from paperpost import synthetic
    from paperpost.dumps import distinct_papers, parse_dump

    papers = []
    for path in sorted(EXAMPLES.glob("*/*")):
        papers += parse_dump(path.read_bytes(), str(path), CAPTURED).papers
    return distinct_papers(papers) + synthetic.papers(200)


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
        need = "set PAPERPOST_TEST_POSTGRES_URL to test against PostgreSQL"
        unavailable("PAPERPOST_REQUIRE_POSTGRES", need)
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
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Prefect API for the session: the in-process one `paperpost run` starts, on a
    fresh database. Yields that database's path.

    Migrating an empty Prefect database takes 5-10 s, so the first session keeps a migrated,
    empty copy beside pytest's temporary folders and later sessions start from it (Prefect
    still migrates it if its version changed).
    """
    import prefect
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    from flows.local_api import LocalAPI

    database = tmp_path_factory.mktemp("prefect") / "prefect.db"
    template = tmp_path_factory.getbasetemp().parent / f"prefect-{prefect.__version__}.db"
    if template.exists():
        shutil.copy(template, database)
    with temporary_settings(
        {PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{database}"}
    ):
        api = LocalAPI().start()
    try:
        api.wait_ready()
        if not template.exists():
            partial = template.with_suffix(f".{os.getpid()}")
            with sqlite3.connect(database) as source, sqlite3.connect(partial) as copy:
                source.backup(copy)
            partial.replace(template)
        with api.in_use():
            yield database
    finally:
        api.stop()
