"""SIGKILL `paperpost run` at random moments while it sends 200 digests; tally per path.

    python benchmarks/crash_sweep.py [--kills 30] [--paths plain prefect]
        [--postgres postgresql+psycopg://paperpost:paperpost@127.0.0.1:5432/paperpost_x]
        [--deferred]

Uses the harness of tests/crash_harness.py: a local SMTP sink logs every end-of-data and
every accepted message; each trial kills the sending process once (at the k-th end-of-data,
the sink accepting or refusing that message, or at a random time of the sending phase),
then reruns it. ``--deferred``: every trial's sink refuses a quarter of the readers (one
domain) by policy, so each killed run is deferring that domain (docs/delivery.md). The
Prefect path reports to one temporary Prefect server for the sweep (prefect_test_harness),
so each run does not pay for starting its own. With ``--postgres`` every trial runs on that
database (all its tables dropped before each trial).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import report
from crash_harness import DEFERRED_MODES, MODES, Sweep, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--paths", nargs="+", default=["plain", "prefect"])
    parser.add_argument("--postgres", help="a PostgreSQL URL instead of a SQLite file per trial")
    parser.add_argument(
        "--deferred", action="store_true", help="kill runs that are deferring a refusing domain"
    )
    args = parser.parse_args()
    modes = DEFERRED_MODES if args.deferred else MODES
    combined = Sweep()
    for path in args.paths:
        with tempfile.TemporaryDirectory() as folder:
            if path == "prefect":
                from prefect.settings import PREFECT_API_URL
                from prefect.testing.utilities import prefect_test_harness

                with prefect_test_harness(server_startup_timeout=120):
                    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
                    result = sweep(
                        Path(folder),
                        args.kills,
                        prefect=True,
                        prefect_env=env,
                        database_url=args.postgres,
                        modes=modes,
                    )
            else:
                result = sweep(
                    Path(folder), args.kills, prefect=False, database_url=args.postgres, modes=modes
                )
        combined.trials += result.trials
    tally = combined.tally()
    columns = [
        "trials",
        "kills",
        "duplicates",
        "missing",
        "missing_never_sent",
        "ambiguous",
        "ambiguous_accepted",
        "ambiguous_never_sent",
        "max_ambiguous",
        "ambiguous_over_connections",
        "failed_refused",
        "refused",
        "max_refused",
    ]
    rows = [[path, *(counts[c] for c in columns)] for path, counts in tally.items()]
    report("crash_sweep", ["path", *columns], rows, combined.to_json())


if __name__ == "__main__":
    main()
