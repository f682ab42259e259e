"""The Prefect API that ``paperpost run`` reports to.

With ``PREFECT_API_URL`` set (a profile, the environment or ``.env``) the flow reports to that
server. Otherwise the API runs on a thread of this process for the one run: nothing outlives
the process, whichever way it ends (Prefect's own temporary server is a child process that a
SIGKILL of its parent leaves running), and the flow module is imported while the server
starts instead of after it. Its database is Prefect's usual one (``$PREFECT_HOME/prefect.db``),
so the first run migrates it and later runs find it ready.
"""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

STARTUP_TIMEOUT = 300.0  # seconds: a first run migrates an empty database, slowly on a busy box


class LocalAPIError(RuntimeError):
    """The temporary Prefect API did not start."""


class LocalAPI:
    """Prefect's API server (UI and block registration off) on 127.0.0.1 in a thread."""

    def __init__(self) -> None:
        import uvicorn
        from prefect.settings import (
            PREFECT_API_BLOCKS_REGISTER_ON_START,
            PREFECT_SERVER_ANALYTICS_ENABLED,
            PREFECT_UI_ENABLED,
            temporary_settings,
        )

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/api"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self._create_app,
                factory=True,
                log_level="error",
                log_config=None,  # leave Prefect's logging as it is
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
        )
        # Block types are for deployments' storage and credentials; a run registers none.
        # No telemetry from a server that lives for one run (it also slows its shutdown).
        quiet = {
            PREFECT_API_BLOCKS_REGISTER_ON_START: False,
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
            PREFECT_UI_ENABLED: False,
        }
        with temporary_settings(quiet):
            context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(self._server.run, [self._socket]),
            name="prefect-api",
            daemon=True,
        )

    @staticmethod
    def _create_app():  # type: ignore[no-untyped-def]
        from prefect.server.api.server import create_app

        return create_app(ephemeral=True, final=True)

    def start(self) -> LocalAPI:
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise LocalAPIError(
                    "the temporary Prefect API did not start (its error is above); "
                    "run with --no-prefect, or set PREFECT_API_URL to a running server"
                )
            if time.monotonic() > deadline:
                raise LocalAPIError(
                    f"the temporary Prefect API was not ready after {timeout:.0f} s; "
                    "run with --no-prefect, or set PREFECT_API_URL to a running server"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Point Prefect's client at this server; drain its log and event queues after."""
        from prefect.context import _temporary_global_settings_context, get_settings_context
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # the second also shows the URL to threads Prefect starts without copying this context
        with (
            temporary_settings({PREFECT_API_URL: self.url}),
            _temporary_global_settings_context(get_settings_context()),
        ):
            try:
                yield
            finally:
                drain()


def drain() -> None:
    """Send what Prefect's log and event queues still hold, before its API goes away (and
    before `paperpost` exits without Python's teardown, which would otherwise send them)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def run_digest(today: date) -> dict:
    """One run of the digest flow, reported to the configured or a temporary Prefect API."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        from flows.digest import digest

        try:
            return digest(today=today)
        finally:
            drain()
    api = LocalAPI().start()
    try:
        from flows.digest import digest  # while the server starts

        api.wait_ready()
        with api.in_use():
            return digest(today=today)
    finally:
        api.stop()
