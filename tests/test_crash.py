"""Kill a real sending run with SIGKILL at random moments; the rerun delivers each digest once.

The harness (tests/crash_harness.py) kills `paperpost run` while it sends 200 digests to a
local SMTP sink, at the k-th end-of-data or at a random time, then reruns it. Every trial
must end with no Message-ID accepted twice, nobody missing except the digests reported
ambiguous, nobody missing whose end-of-data never reached the server, and no more ambiguous
digests than SMTP connections in flight. The default run does a short version; the full
sweep (>= 30 kills on the plain path and on the Prefect path) runs with PAPERPOST_FULL_TESTS=1,
and benchmarks/crash_sweep.py prints its tally.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import POSTGRES_URL, unavailable
from crash_harness import Sweep, sweep


def postgres_url() -> str:
    if not POSTGRES_URL:
        unavailable("PAPERPOST_REQUIRE_POSTGRES", "set PAPERPOST_TEST_POSTGRES_URL to run it")
    assert POSTGRES_URL
    return POSTGRES_URL


def check(result: Sweep, kills: int) -> None:
    print(f"\ncrash tally: {result.tally()}")
    assert sum(t.killed for t in result.trials) >= kills
    for trial in result.trials:
        assert trial.duplicates == 0, trial
        assert trial.missing == 0, trial
        assert trial.missing_never_sent == 0, trial
        assert not trial.ambiguous_over_connections, trial
        assert trial.rerun_exit == 0, trial


def test_sigkill_while_sending_short(tmp_path: Path) -> None:
    """Two kills (at an end-of-data, at a random moment) among 60 readers."""
    check(sweep(tmp_path, kills=2, prefect=False, readers_count=60), kills=2)


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_while_sending_plain_sweep_postgres(tmp_path: Path) -> None:
    """The plain sweep on PostgreSQL: the grouped claims and settles hold there too."""
    check(sweep(tmp_path, kills=30, prefect=False, database_url=postgres_url()), kills=30)


@pytest.mark.slow
def test_sigkill_while_sending_plain_sweep(tmp_path: Path) -> None:
    check(sweep(tmp_path, kills=30, prefect=False), kills=30)


@pytest.mark.slow
def test_sigkill_while_sending_prefect_sweep(tmp_path: Path, prefect_harness) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    check(sweep(tmp_path, kills=30, prefect=True, prefect_env=env), kills=30)
