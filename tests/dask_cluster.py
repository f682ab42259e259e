"""A real Dask cluster for tests and benchmarks: ``dask scheduler`` and two ``dask worker``
processes, each its own OS process started from this virtualenv, as they would be on
separate hosts. Workers get their settings (database URL, signing key) only from the
environment they are started with."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from smtp_server import free_port

BIN = Path(sys.executable).parent


class DaskCluster:
    def __init__(self, env: dict[str, str], workdir: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env, self.workdir, self.workers = env, workdir, workers
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> float:
        """Start the scheduler and the workers; seconds until every worker registered."""
        from distributed import Client

        clock = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
        )
        for n in range(1, self.workers + 1):
            self._spawn(
                f"worker-{n}",
                [
                    *("worker", self.address, "--nthreads", "1", "--nworkers", "1"),
                    *("--no-dashboard", "--name", f"worker-{n}"),
                    *("--local-directory", str(self.workdir / f"w{n}")),
                ],
            )
        try:
            with Client(self.address, timeout=120) as client:
                client.wait_for_workers(self.workers, timeout=600)
        except BaseException:
            self.stop()
            raise
        return time.perf_counter() - clock

    def _spawn(self, name: str, args: list[str]) -> None:
        with (self.workdir / f"{name}.log").open("w") as log:
            self.procs[name] = subprocess.Popen(
                [str(BIN / "dask"), *args],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def worker_process(self, n: int) -> int:
        """The pid doing a worker's work (the child of its nanny)."""
        import psutil

        nanny = psutil.Process(self.procs[f"worker-{n}"].pid)
        # the nanny's other child is multiprocessing's resource tracker
        (child,) = (c for c in nanny.children() if "spawn_main" in " ".join(c.cmdline()))
        return child.pid

    def kill_worker(self, n: int) -> int:
        """SIGKILL a worker's process mid-work (its nanny starts a new one); its pid."""
        import os

        pid = self.worker_process(n)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tally(url: str, outbox: Path) -> dict[str, object]:
    """What reached the outbox Maildir and the ledger: digest files (and per address), ledger
    rows by status, addresses with more than one file or row, rows claimed more than once."""
    from collections import Counter

    from sqlalchemy import create_engine, text

    files = [p.name for p in (outbox / "new").iterdir()]
    per_address = Counter(name.rsplit("_", 2)[0] for name in files)  # <address>_<digest>_<tag>
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT address, status, attempts FROM deliveries")).all()
    finally:
        engine.dispose()
    ledger_per_address = Counter(address for address, _, _ in rows)
    return {
        "files": len(files),
        "addresses": len(per_address),
        "file_duplicates": sum(n - 1 for n in per_address.values()),
        "ledger": dict(Counter(status for _, status, _ in rows)),
        "ledger_duplicates": sum(n - 1 for n in ledger_per_address.values()),
        "claimed_twice": sum(1 for *_, attempts in rows if attempts > 1),
    }
