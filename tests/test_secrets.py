"""The public development key is refused where links reach people (SMTP, `paperpost web`);
tokens never reach the access log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from pydantic import SecretStr

from conftest import EXAMPLES
from paperpost.settings import Settings
from paperpost.unsubscribe import make_token
from paperpost.web import server

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
    short = paperpost(["run", "--no-prefect"], tmp_path, **smtp, PAPERPOST_SECRET_KEY="abc")
    assert short.returncode == 2 and "PAPERPOST_SECRET_KEY is too short" in short.stderr


def test_the_outbox_works_with_the_development_key(tmp_path: Path) -> None:
    result = paperpost(["run", "--no-prefect", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "outbox" / "new").iterdir())


def test_web_refuses_the_development_key(tmp_path: Path) -> None:
    assert_refused(paperpost(["web", "--port", "9"], tmp_path), "paperpost web")


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
        token = make_token(KEY, "ann@example.org")
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
