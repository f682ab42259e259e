"""The real ``digest`` flow under Prefect's test harness (one harness for the session)."""

from __future__ import annotations

import email
import re
import shutil
from datetime import date
from email import policy
from pathlib import Path

import pytest

from conftest import EXAMPLES, ROOT


def read_outbox(folder: Path) -> dict[str, list[email.message.EmailMessage]]:
    found: dict[str, list] = {}
    for path in sorted((folder / "new").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        found.setdefault(msg["To"].addresses[0].addr_spec.lower(), []).append(msg)
    return found


def titles(msg) -> str:
    return msg.get_body(("plain",)).get_content()


@pytest.mark.usefixtures("prefect_harness")
def test_digest_flow_end_to_end(tmp_path: Path, monkeypatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.logging.handlers import APILogWorker

    from flows.digest import digest

    dumps = tmp_path / "dumps"
    shutil.copytree(EXAMPLES / "dumps", dumps)
    subs = tmp_path / "subscribers"
    shutil.copytree(ROOT / "subscribers", subs)
    (subs / "zed.yaml").write_text("email: zed@example.org\ntags:\n  - agents\n  - 3\n")
    (subs / "hog.yaml").write_text("- {email: x}\n" * 12)  # 24 errors: 1 log line, 6 listed
    outbox = tmp_path / "outbox"
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
    args = dict(sources=[str(dumps)], subscribers_dir=str(subs), outbox_dir=str(outbox))

    first = digest(**args)
    assert first["papers_new"] == 13 and first["digests_sent"] == 4
    assert first["digests_failed"] == 0
    hog, zed = subs / "hog.yaml", subs / "zed.yaml"
    listed = first["invalid_subscribers"]
    assert len(listed) == 7 and all(line.startswith(f"{hog}:") for line in listed[:6])
    assert listed[5] == (
        f"{hog}: 19 more errors in this file; `paperpost subscribers validate {hog}` lists them all"
    )
    assert listed[6] == (
        f'{zed}:4:5: tags[1]: expected a string or a mapping with "tag", got a number'
    )
    # ATTACK6 #6: one log line per file (it was one per error: 40,000 lines for one file,
    # more than the Prefect API could take), with the count and the first error's place
    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert sorted(log.message for log in logs if "invalid subscriber" in log.message) == [
        f"Skipping 1 invalid subscriber entry in {zed} (first at line 4, tags[1]); "
        f"`paperpost subscribers validate {zed}` lists them",
        f"Skipping 24 invalid subscriber entries in {hog} (first at line 1, [0].tags); "
        f"`paperpost subscribers validate {hog}` lists them",
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
    assert len(list((outbox / "new").glob("*.eml"))) == 4

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


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "on",
    ["threads", pytest.param("dask", marks=pytest.mark.slow)],  # Dask: two processes
)
def test_flow_batches_with_smtp_550(tmp_path: Path, monkeypatch, on: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.digest import digest
    from smtp_server import SmtpServer

    server = SmtpServer(tmp_path).start()
    server.script.reject["bob@example.org"] = "550 5.1.1 no such mailbox"
    try:
        for name, value in {
            "PAPERPOST_DELIVERY": "smtp",
            "PAPERPOST_SMTP_HOST": "127.0.0.1",
            "PAPERPOST_SMTP_PORT": str(server.port),
            "PAPERPOST_SMTP_SECURITY": "starttls",
            "PAPERPOST_SMTP_USERNAME": "mailer",
            "PAPERPOST_SMTP_PASSWORD": "s3cret-pass",
            "PAPERPOST_SECRET_KEY": "flow-test-key-0123456789abcdef",
            "PAPERPOST_SMTP_CA_FILE": str(server.cert),
            "PAPERPOST_BATCH_SIZE": "2",
        }.items():
            monkeypatch.setenv(name, value)
        subs = tmp_path / "subscribers"
        shutil.copytree(ROOT / "subscribers", subs)
        (subs / "broken.yaml").write_text("email: x@example.org\ntags: [agents]\nfrequency: 1\n")
        runner = ThreadPoolTaskRunner(max_workers=6)
        if on == "dask":
            runner = DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": 2,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": None,
                }
            )
        monkeypatch.setenv("PAPERPOST_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
        result = digest.with_options(task_runner=runner)(
            sources=[str(EXAMPLES / "dumps")], subscribers_dir=str(subs)
        )
    finally:
        server.stop()
    assert result["digests_sent"] == 3 and result["digests_failed"] == 1
    delivered = sorted(rcpt[0] for rcpt, _ in server.handler.messages)
    assert delivered == ["alice@example.org", "carol@example.org", "dan@example.org"]
    with get_client(sync_client=True) as client:
        summary, table = (
            client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )[0].data
            for key in ("digest-summary", "digest-deliveries")
        )
    assert "| digests failed (permanent) | 1 |" in summary
    assert 'broken.yaml:3:1: frequency: unknown field "frequency"' in summary
    assert "| bob@example.org | failed | permanent: 550 5.1.1 no such mailbox" in summary
    assert "s3cret-pass" not in summary and "s3cret-pass" not in str(table)
    assert "bob@example.org" in str(table) and "failed" in str(table)


@pytest.mark.usefixtures("prefect_harness")
def test_run_stores_no_secret_in_flow_run_parameters_or_logs(tmp_path: Path, monkeypatch) -> None:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.logging.handlers import APILogWorker
    from typer.testing import CliRunner

    from paperpost.cli import app

    secrets = {"db-path-s3cret", "smtp-pa55word", "signing-k3y-0123456789abcdef"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAPERPOST_SMTP_PASSWORD", "smtp-pa55word")
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", "signing-k3y-0123456789abcdef")
    database = tmp_path / "db-path-s3cret" / "pp.db"
    database.parent.mkdir()
    result = CliRunner().invoke(
        app, ["run", "--json", "--db", f"sqlite:///{database}", "--outbox", "out"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["digests_sent"] == 4
    assert database.exists()  # the --db option reached the flow through the environment
    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    stored = json.dumps(run.parameters, default=str) + "\n".join(log.message for log in logs)
    assert "today" in run.parameters and logs
    for secret in secrets:
        assert secret not in stored


def test_a_task_refuses_a_database_that_does_not_hold_the_runs_lease(tmp_path: Path) -> None:
    """A Dask worker configured with another database (or none: the default SQLite file)
    must not keep a ledger of its own and send the run's digests a second time."""
    from flows.digest import WrongDatabase, run_store
    from paperpost import pipeline
    from paperpost.settings import Settings

    run_db = Settings(database_url=f"sqlite:///{tmp_path / 'run.db'}")
    _store, owner, run_id = pipeline.begin(run_db, date.today())
    assert run_id is not None
    assert run_store(run_db, owner).lock_owner(pipeline.LOCK) == owner
    other = Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(WrongDatabase, match="PAPERPOST_DATABASE_URL"):
        run_store(other, owner)
    with pytest.raises(WrongDatabase):
        run_store(run_db, "another-run")


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_against_a_database_it_cannot_use_fails_at_once_in_one_line(
    tmp_path: Path, monkeypatch
) -> None:
    """What a deployment's run on a worker does (before, it started and failed inside with
    a SQLAlchemy traceback): the flow checks the database first, as `paperpost run` and
    `paperpost serve` do, and ends Failed with one line saying what to do."""
    import sqlite3
    import time

    from flows.digest import digest
    from paperpost import schema

    stale = tmp_path / "stale.db"  # an un-migrated database that cannot be migrated
    with sqlite3.connect(stale) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0003')")
        conn.execute("CREATE TABLE paper_evidence (x INTEGER)")  # in the way of 0004
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999')")
    cases = {
        "postgresql+psycopg://paperpost:hunter2@127.0.0.1:1/paperpost": (
            "cannot connect to postgresql+psycopg://paperpost:***@127.0.0.1:1/paperpost"
        ),
        f"sqlite:///{stale}": (
            f"{stale} is at schema revision 0003 and this paperpost needs {schema.head()}; "
            "migrating it failed ("
        ),
        f"sqlite:///{newer}": "is at schema revision 9999, which this version of paperpost",
    }
    outbox = tmp_path / "outbox"
    args = dict(sources=[str(EXAMPLES / "dumps")], subscribers_dir=str(ROOT / "subscribers"))
    for url, words in cases.items():
        monkeypatch.setenv("PAPERPOST_DATABASE_URL", url)
        started = time.monotonic()
        state = digest(**args, outbox_dir=str(outbox), return_state=True)
        assert time.monotonic() - started < 20
        assert state.is_failed(), (url, state)
        assert words in state.message and "\n" not in state.message, state.message
        assert "hunter2" not in state.message and "Traceback" not in state.message
    assert not outbox.exists()
