"""The digest flow on a real Dask cluster against PostgreSQL: a ``dask scheduler`` and two
``dask worker`` processes (tests/dask_cluster.py) that read the database URL and the signing
key from their own environment, never from the flow. Every digest is delivered exactly once:
counted in the outbox Maildir and in the ledger, also when a worker is killed mid-run."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, POSTGRES_URL, reset_postgres, unavailable
from paperpost.feedback import address_of
from paperpost.store import Store
from paperpost.unsubscribe import BadToken, read_token

pytestmark = pytest.mark.postgres

KEY = "dask-test-key-0123456789abcdef0123"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator:
    if not POSTGRES_URL:
        unavailable(
            "PAPERPOST_REQUIRE_POSTGRES",
            "set PAPERPOST_TEST_POSTGRES_URL to run the flow on Dask workers sharing PostgreSQL",
        )
    pytest.importorskip("prefect_dask", reason="needs the dask extra: pip install '.[dask]'")
    request.getfixturevalue("prefect_harness")  # only once the cluster can run
    from dask_cluster import DaskCluster

    home = tmp_path_factory.mktemp("dask")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PAPERPOST_DATABASE_URL": POSTGRES_URL,
        "PAPERPOST_SECRET_KEY": KEY,
        "PAPERPOST_SEND_EMPTY": "true",  # every subscriber gets a digest: an exact count
    }
    cluster = DaskCluster(env, home)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def write_list(path: Path, size: int) -> None:
    with path.open("w") as out:
        for i in range(size):
            out.write(f"- email: reader{i}@example.org\n  tags: [agents, llm-inference]\n")


def batch_size(size: int) -> int:
    return max(5, min(2000, size // 6))  # a few batches in flight on each worker


def run_on(cluster, tmp_path: Path, monkeypatch, size: int) -> tuple:  # type: ignore[no-untyped-def]
    """A fresh database and a list of ``size`` subscribers; returns a function running the
    flow on the cluster (the flow process has the same settings as the workers)."""
    from prefect_dask import DaskTaskRunner

    from flows.digest import digest

    reset_postgres(POSTGRES_URL)
    write_list(tmp_path / "list.yaml", size)
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", POSTGRES_URL)
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", KEY)
    monkeypatch.setenv("PAPERPOST_SEND_EMPTY", "true")
    monkeypatch.setenv("PAPERPOST_BATCH_SIZE", str(batch_size(size)))
    outbox = tmp_path / "outbox"
    flow = digest.with_options(task_runner=DaskTaskRunner(address=cluster.address))

    def run() -> dict:
        return flow(
            sources=[str(EXAMPLES / "dumps")],
            subscribers_dir=str(tmp_path / "list.yaml"),
            outbox_dir=str(outbox),
        )

    return run, outbox


def assert_exactly_once(outbox: Path, size: int, retried_ok: bool = False) -> dict:
    from dask_cluster import tally

    counts = tally(POSTGRES_URL, outbox)
    assert counts["files"] == counts["addresses"] == size
    assert counts["file_duplicates"] == counts["ledger_duplicates"] == 0
    assert counts["ledger"] == {"sent": size}
    leftovers = [p.name for p in (outbox / "tmp").iterdir()]
    if not retried_ok:
        assert counts["claimed_twice"] == 0
        assert not leftovers
    # a writer SIGKILLed mid-write leaves its tmp/ file (Maildir readers ignore tmp/, and it
    # is removed once stale); the digest it was writing must have been delivered since
    delivered = {p.name for p in (outbox / "new").iterdir()}
    assert all(name.split(".eml.", 1)[0] + ".eml" in delivered for name in leftovers), leftovers
    return counts


# 30 subscribers by default (a few batches on each worker, a few seconds once the cluster
# is up); 300 and 100,000 in the full run (40-140 s and about 9 minutes under load).
@pytest.mark.parametrize(
    "size",
    [
        30,
        pytest.param(300, marks=pytest.mark.slow),
        pytest.param(100_000, marks=pytest.mark.slow),
    ],
)
def test_every_digest_exactly_once_on_dask_workers(cluster, tmp_path, monkeypatch, size) -> None:
    run, outbox = run_on(cluster, tmp_path, monkeypatch, size)
    # the flow's process has another signing key: digests are signed where they are rendered,
    # with the key in the worker's own environment (no secret travels with a task)
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", "the-flow-process-key-0123456789abcdef")
    first = run()
    assert first["digests_sent"] == size and first["digests_failed"] == 0
    assert_exactly_once(outbox, size)
    sample = next((outbox / "new").iterdir()).read_bytes()
    token = re.search(rb"subject=unsubscribe%20([A-Za-z0-9_.=-]+)>", sample).group(1).decode()
    store = Store(POSTGRES_URL)
    assert token.startswith("r.")
    assert read_token(KEY, token, lambda r: address_of(store, r)).startswith("reader")
    with pytest.raises(BadToken):
        read_token("the-flow-process-key-0123456789abcdef", token, lambda r: address_of(store, r))
    second = run()  # the same news again: nothing more goes out
    assert second["digests_sent"] == 0
    assert second["digests_skipped"] == size
    assert_exactly_once(outbox, size)


@pytest.mark.slow
def test_workers_killed_mid_send_then_rerun_delivers_exactly_once(
    cluster, tmp_path, monkeypatch
) -> None:
    """Both worker processes SIGKILLed while digests are claimed in the ledger and not yet
    settled (mid-send), once some batches are done; their nannies start new processes and
    Dask runs the lost tasks again; a second run settles what the dead ones left."""
    from sqlalchemy import text

    from paperpost.store import engine_for

    size = 300
    run, outbox = run_on(cluster, tmp_path, monkeypatch, size)
    at_kill: dict[str, int] = {}
    left_sending: list[int] = []
    ledger = engine_for(POSTGRES_URL)
    sending = text("SELECT count(*) FROM deliveries WHERE status = 'sending'")

    def kill_mid_send() -> None:
        new = outbox / "new"
        deadline = time.monotonic() + 600
        with ledger.connect() as conn:
            while time.monotonic() < deadline:  # waits for a send in progress, then acts
                done = len(os.listdir(new)) if new.exists() else 0
                if done >= size // 6 and conn.execute(sending).scalar_one():
                    for n in (1, 2):
                        cluster.kill_worker(n)
                    at_kill.update({n: os.stat(new / n).st_ino for n in os.listdir(new)})
                    left_sending.append(conn.execute(sending).scalar_one())
                    return
                conn.rollback()
                time.sleep(0.01)

    watcher = threading.Thread(target=kill_mid_send)
    watcher.start()
    first = run()
    watcher.join()
    assert left_sending and 0 < len(at_kill) < size, "the workers were not killed mid-run"
    assert first["digests_sent"] + first["digests_skipped"] <= size
    second = run()
    counts = assert_exactly_once(outbox, size, retried_ok=True)
    # no digest that had reached the Maildir when the workers died was written again
    after = {n: os.stat(outbox / "new" / n).st_ino for n in at_kill}
    assert after == at_kill
    # sent again: at most what the dead processes had claimed and not made durable
    assert counts["claimed_twice"] <= 2 * batch_size(size)
    print(
        f"killed with {len(at_kill)} of {size} digests in the Maildir and {left_sending[0]} "
        f"claimed, not settled; first run {first['digests_sent']} sent, second "
        f"{second['digests_sent']}; then {counts}"
    )  # shown with pytest -s
