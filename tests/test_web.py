from __future__ import annotations

from fastapi.testclient import TestClient
from pydantic import SecretStr

from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.unsubscribe import make_token
from paperpost.web import create_app


def test_get_confirms_post_unsubscribes_and_tampering_is_refused(db_url: str) -> None:
    settings = Settings(database_url=db_url, secret_key=SecretStr("web-key-0123456789abcdef"))
    client = TestClient(create_app(settings))
    token = make_token("web-key-0123456789abcdef", "Ann@Example.org")
    store = Store(db_url)

    shown = client.get(f"/unsubscribe/{token}")
    assert shown.status_code == 200 and "ann@example.org" in shown.text
    assert 'method="post"' in shown.text
    assert store.suppressed(["ann@example.org"]) == {}  # a GET changes nothing

    one_click = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200 and "will get no more digests" in one_click.text
    assert store.suppressed(["ann@example.org"]) == {"ann@example.org": "unsubscribed"}
    assert client.post(f"/unsubscribe/{token}").status_code == 200  # idempotent

    forged = make_token("other-key", "bob@example.org")
    assert client.post(f"/unsubscribe/{forged}").status_code == 400
    assert client.get("/unsubscribe/not-a-token").status_code == 400
    assert store.suppressed(["bob@example.org"]) == {}
    assert "<script>" not in client.get("/unsubscribe/%3Cscript%3E").text


def test_a_locked_database_answers_503_with_retry_after_not_a_traceback(
    db_url: str, monkeypatch, caplog
) -> None:
    """ATTACK5 #9: with the write lock held (a sqlite3 shell inside a transaction, a long
    run), a one-click unsubscribe POST got a bare "500 Internal Server Error" after the busy
    timeout and a 100-line traceback in the log; the mailbox provider does not retry. Now:
    503 with Retry-After, a page saying to try again, one log line; then it works."""
    import logging
    import sqlite3

    from paperpost import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.3)  # the wait for the lock, shortened
    settings = Settings(database_url=db_url, secret_key=SecretStr("web-key-0123456789abcdef"))
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    token = make_token("web-key-0123456789abcdef", "ann@example.org")
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="paperpost.web"):
            busy = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
    assert "try again" in busy.text and "Traceback" not in busy.text
    (line,) = [r.getMessage() for r in caplog.records if r.name == "paperpost.web"]
    assert line.startswith("unsubscribe not recorded: ") and "is locked" in line
    assert "\n" not in line
    done = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert Store(db_url).suppressed(["ann@example.org"]) == {"ann@example.org": "unsubscribed"}
