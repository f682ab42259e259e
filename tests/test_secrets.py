"""The public development key is refused where links reach people (SMTP, `paperpost web`);
tokens never reach the access log."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError

from conftest import EXAMPLES
from paperpost.errors import ConfigError
from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.unsubscribe import make_address_token
from paperpost.web import create_app, server

KEY = "secrets-test-key-0123456789"


def paperpost(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
    clean.update(
        PAPERPOST_SOURCES=str(EXAMPLES / "dumps"),
        PAPERPOST_DATABASE_URL=f"sqlite:///{tmp_path / 'pp.db'}",
        PAPERPOST_OUTBOX_DIR=str(tmp_path / "outbox"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "paperpost", *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=tmp_path,
        timeout=120,
    )


def assert_refused(result: subprocess.CompletedProcess, purpose: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"PAPERPOST_SECRET_KEY is not set: {purpose} needs a key of your own" in lines[0]
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in lines[0]


def test_smtp_delivery_refuses_the_development_key(tmp_path: Path) -> None:
    # port 9 (discard): were the key accepted, the run would try to send and fail differently
    smtp = {"PAPERPOST_DELIVERY": "smtp", "PAPERPOST_SMTP_HOST": "127.0.0.1"}
    refused = paperpost(["run", "--no-prefect"], tmp_path, **smtp, PAPERPOST_SMTP_PORT="9")
    assert_refused(refused, "SMTP delivery")
    assert not (tmp_path / "pp.db").exists()  # refused before anything was done


def test_a_short_key_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="PAPERPOST_SECRET_KEY is too short: SMTP delivery"):
        Settings(secret_key=SecretStr("abc")).require_own_key("SMTP delivery")
    Settings(secret_key=SecretStr(KEY)).require_own_key("SMTP delivery")  # accepted
    # (the outbox never asks: tests/test_run_outcomes.py runs it with the development key)


def test_web_refuses_the_development_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(Settings(database_url=f"sqlite:///{tmp_path / 'pp.db'}"))
    assert caught.value.lines == [
        "PAPERPOST_SECRET_KEY is not set: paperpost web needs a key of your own (links signed "
        "with the public development key can be forged by anyone); generate one with "
        'python -c "import secrets; print(secrets.token_urlsafe(32))" and set '
        "PAPERPOST_SECRET_KEY to it"
    ]


def test_the_access_log_shows_no_token(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'pp.db'}", secret_key=SecretStr(KEY))
    web = server("127.0.0.1", 0, settings)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    keep = Keep()
    access.addHandler(keep)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not web.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        port = web.servers[0].sockets[0].getsockname()[1]
        token = make_address_token(KEY, "ann@example.org")
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/unsubscribe/{token}", timeout=5).status_code == 200
        assert requests.post(f"{base}/unsubscribe/{token}", timeout=5).status_code == 200
        requests.get(f"{base}/vote/more/{token}x?utm=1", timeout=5)
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        access.removeHandler(keep)
    assert len(lines) == 3
    assert all(token not in line and "ann@example.org" not in line for line in lines)
    assert '"GET /unsubscribe/… HTTP/1.1" 200' in lines[0]
    assert "/vote/more/…?utm=1" in lines[2]


def test_database_errors_never_quote_addresses(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'pp.db'}")
    with sqlite3.connect(tmp_path / "pp.db") as conn:
        conn.execute("DROP TABLE suppressions")  # the next write fails
    with pytest.raises(OperationalError) as caught:
        store.suppress("ann@example.org", "unsubscribed")
    assert "no such table: suppressions" in str(caught.value)
    assert "ann@example.org" not in str(caught.value)
