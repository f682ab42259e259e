"""The real ``digest`` flow under Prefect's test harness (one harness for the session)."""

from __future__ import annotations

import email
import re
import shutil
from email import policy
from pathlib import Path

import pytest

from conftest import EXAMPLES, ROOT


def read_outbox(folder: Path) -> dict[str, list[email.message.EmailMessage]]:
    found: dict[str, list] = {}
    for path in sorted(folder.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        found.setdefault(msg["To"].addresses[0].addr_spec.lower(), []).append(msg)
    return found


def titles(msg) -> str:
    return msg.get_body(("plain",)).get_content()


@pytest.mark.usefixtures("prefect_harness")
def test_digest_flow_end_to_end(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.digest import digest

    dumps = tmp_path / "dumps"
    shutil.copytree(EXAMPLES / "dumps", dumps)
    subs = tmp_path / "subscribers"
    shutil.copytree(ROOT / "subscribers", subs)
    (subs / "zed.yaml").write_text("email: zed@example.org\ntags:\n  - agents\n  - 3\n")
    outbox = tmp_path / "outbox"
    args = dict(
        sources=[str(dumps)],
        subscribers_dir=str(subs),
        database_url=f"sqlite:///{tmp_path / 'pp.db'}",
        outbox_dir=str(outbox),
    )

    first = digest(**args)
    assert first["papers_new"] == 13 and first["digests_sent"] == 4
    assert first["digests_failed"] == 0
    assert first["invalid_subscribers"] == [
        f'{subs / "zed.yaml"}:4:5: tags[1]: expected a string or a mapping with "tag", got a number'
    ]
    sent = read_outbox(outbox)
    assert set(sent) == {
        "alice@example.org",
        "bob@example.org",
        "carol@example.org",
        "dan@example.org",
    }
    for address, (msg,) in sent.items():
        if address == "dan@example.org":  # format: text
            assert msg.get_content_type() == "text/plain"
            continue
        assert msg.get_content_type() == "multipart/alternative"
        html = msg.get_body(("html",)).get_content()
        assert re.search(r'<table[^>]* class="card"[^>]* style="[^"]*background-color', html)
        assert "Why:" in html

    second = digest(**args)
    assert second["digests_sent"] == 0 and second["papers_new"] == 0
    assert second["message"] == "Nothing to send: every source is unchanged since the last run."
    assert len(list(outbox.glob("*.eml"))) == 4

    shutil.copy(EXAMPLES / "newer" / "2026-11-24.txt", dumps)
    third = digest(**args)
    assert third["papers_new"] == 3
    after = read_outbox(outbox)
    new_for_carol = after["carol@example.org"][1:]
    assert len(new_for_carol) == 1
    body = titles(new_for_carol[0])
    assert "PatchPilot" in body and "ShelfBench" not in body  # only the newer dump's papers

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["digest-summary"]))
        )
    texts = [a.data for a in arts]
    assert any("zed.yaml:4:5" in t and "| digests sent | 4 |" in t for t in texts)
    assert any("every source is unchanged" in t for t in texts)
