from __future__ import annotations

from datetime import date

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from paperpost.feedback import reader_ids
from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.unsubscribe import make_address_token, make_token
from paperpost.web import create_app


@pytest.mark.parametrize("form", ["reader", "address"])
def test_get_confirms_post_unsubscribes_and_tampering_is_refused(db_url: str, form: str) -> None:
    """Both token forms: the reader id (every digest since ATTACK6 #11) and the address
    (links in digests sent before), through the confirm page and the RFC 8058 one-click."""
    settings = Settings(database_url=db_url, secret_key=SecretStr("web-key-0123456789abcdef"))
    client = TestClient(create_app(settings))
    store = Store(db_url)
    (reader_id,) = reader_ids(store, ["ann@example.org"]).values()
    token = (
        make_token("web-key-0123456789abcdef", reader_id)
        if form == "reader"
        else make_address_token("web-key-0123456789abcdef", "Ann@Example.org")
    )
    # the address form carries base64("ann@example.org"), readable by anyone who sees the link
    assert ("YW5uQGV4YW1wbGUub3Jn" in token) == (form == "address")

    shown = client.get(f"/unsubscribe/{token}")
    assert shown.status_code == 200 and "ann@example.org" in shown.text
    assert 'method="post"' in shown.text
    assert store.suppressed(["ann@example.org"]) == {}  # a GET changes nothing

    one_click = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200 and "will get no more digests" in one_click.text
    assert store.suppressed(["ann@example.org"]) == {"ann@example.org": "unsubscribed"}
    assert client.post(f"/unsubscribe/{token}").status_code == 200  # idempotent

    forged = make_address_token("other-key", "bob@example.org")
    assert client.post(f"/unsubscribe/{forged}").status_code == 400
    forged = make_token("other-key", reader_id)
    assert client.post(f"/unsubscribe/{forged}").status_code == 400
    assert client.get("/unsubscribe/not-a-token").status_code == 400
    assert store.suppressed(["bob@example.org"]) == {}
    assert "<script>" not in client.get("/unsubscribe/%3Cscript%3E").text


def test_a_one_click_unsubscribe_while_the_database_is_locked_is_queued_not_lost(
    db_url: str, tmp_path, monkeypatch, caplog
) -> None:
    """ATTACK5 #9: with the write lock held (a sqlite3 shell inside a transaction, a long
    run), a one-click unsubscribe POST got a bare 500 and a traceback; then a 503, which the
    mailbox provider does not retry, so the reader stayed subscribed. Now the request is
    kept on disk (200, one log line) and recorded once the database is free: by the next
    request, the web app's retry loop, or the next run."""
    import logging
    import sqlite3

    from paperpost import db
    from paperpost.unsubscribe import QUEUE

    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.3)  # the wait for the lock, shortened
    state = tmp_path / "state"
    settings = Settings(
        database_url=db_url, state_dir=state, secret_key=SecretStr("web-key-0123456789abcdef")
    )
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    (reader_id,) = reader_ids(Store(db_url), ["ann@example.org"]).values()
    token = make_token("web-key-0123456789abcdef", reader_id)  # read while the lock is held
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="paperpost.web"):
            busy = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
            again = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.status_code == again.status_code == 200
    assert "will get no more digests" in busy.text and "Traceback" not in busy.text
    lines = [r.getMessage() for r in caplog.records if r.name == "paperpost.web"]
    assert lines and all(line.startswith("unsubscribe queued") for line in lines)
    assert "is locked" in lines[0] and "\n" not in lines[0]
    assert (state / QUEUE).read_text().count("ann@example.org") == 1  # kept once
    store = Store(db_url)
    assert store.suppressed(["ann@example.org"]) == {}

    other = make_address_token("web-key-0123456789abcdef", "bob@example.org")
    assert client.post(f"/unsubscribe/{other}").status_code == 200
    assert store.suppressed(["ann@example.org", "bob@example.org"]) == {
        "ann@example.org": "unsubscribed",
        "bob@example.org": "unsubscribed",
    }
    detail = store.suppression("ann@example.org").detail
    assert detail is not None and detail.startswith("queued at ")
    assert not (state / QUEUE).exists()


def test_the_next_run_records_unsubscribes_the_web_app_queued(tmp_path, caplog) -> None:
    """The run reads the same state folder: what web queued is suppressed before anything
    is sent; a line cut short by a crash (never answered) is skipped with file:line."""
    import logging

    from paperpost import pipeline
    from paperpost.unsubscribe import QUEUE, queue_unsubscribe

    state = tmp_path / "state"
    settings = Settings(state_dir=state, outbox_dir=tmp_path / "outbox")
    queue_unsubscribe(state, "2026-11-26T06:00:00+00:00", address="Carol@Example.org")
    with open(state / QUEUE, "a") as cut:
        cut.write('{"address": "dan@exa')
    store, _, run_id = pipeline.begin(settings, date.today())
    assert run_id is not None
    with caplog.at_level(logging.WARNING, logger="paperpost.unsubscribe"):
        pipeline.prepare(settings, store, run_id)
    assert store.suppressed(["carol@example.org", "dan@example.org"]) == {
        "carol@example.org": "unsubscribed"
    }
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{state / QUEUE}:2: not a queued unsubscribe")
    assert not (state / QUEUE).exists()


def test_a_one_click_with_a_reader_token_the_database_cannot_resolve_now_is_queued(
    db_url: str, tmp_path, monkeypatch
) -> None:
    """ATTACK6 #11: a token names the reader by id, so the database must say whose it is.
    When it cannot even be read (here SQLite held in exclusive locking mode; a PostgreSQL
    server that is down is the same), the one-click POST is still answered 200 and the
    verified reader id is queued, then recorded once the database is back: the new token
    form never loses an unsubscribe the address form would have kept."""
    import sqlite3

    from paperpost import db, pipeline
    from paperpost.unsubscribe import QUEUE

    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.3)
    state = tmp_path / "state"
    key = "web-key-0123456789abcdef"
    settings = Settings(database_url=db_url, state_dir=state, secret_key=SecretStr(key))
    store = Store(db_url)
    ids = reader_ids(store, ["ann@example.org"])
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    token = make_token(key, ids["ann@example.org"])
    store.engine.dispose()  # no pooled connection keeps the WAL open
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("DELETE FROM locks")  # a write: readers are shut out too
    try:
        busy = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        forged = client.post(f"/unsubscribe/{make_token('other-key', 'x')}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.status_code == 200 and "will get no more digests" in busy.text
    assert forged.status_code == 400  # the signature is checked without the database
    queued = (state / QUEUE).read_text()
    assert ids["ann@example.org"] in queued and "ann@" not in queued
    run_settings = Settings(database_url=db_url, state_dir=state, outbox_dir=tmp_path / "out")
    _, _, run_id = pipeline.begin(run_settings, date.today())
    pipeline.prepare(run_settings, store, run_id)  # the next run records it before sending
    assert store.suppressed(["ann@example.org"]) == {"ann@example.org": "unsubscribed"}
    assert not (state / QUEUE).exists()
