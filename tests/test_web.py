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
