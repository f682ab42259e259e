"""What `paperpost run` tells monitoring (exit codes, final message) and the way back for a
suppressed reader (`subscribers list`, `subscribers reactivate`)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES
from paperpost.cli import app
from paperpost.exitcodes import ExitCode
from paperpost.store import Store
from smtp_server import PASSWORD, USER, SmtpServer

runner = CliRunner()
LONG = "a-very-long-local-part-that-would-not-fit-in-a-column@subdomain.example-university.org"


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "team.yaml").write_text(
        f"- email: ok@one.example\n  tags: [agents, reasoning]\n  min_score: 0.1\n"
        f"- email: {LONG}\n  tags: [agents, reasoning]\n  min_score: 0.1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAPERPOST_SOURCES", json.dumps([str(tmp_path / "dumps")]))
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(tmp_path / "subs"))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
    monkeypatch.setenv("PAPERPOST_OUTBOX_DIR", str(tmp_path / "outbox"))
    return tmp_path


def run(*args: str):
    return runner.invoke(app, ["run", "--no-prefect", *args])


def smtp_env(monkeypatch, server: SmtpServer) -> None:
    for name, value in {
        "DELIVERY": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(server.port),
        "SMTP_USERNAME": USER,
        "SMTP_PASSWORD": PASSWORD,
        "SMTP_CA_FILE": str(server.cert),
        "SECRET_KEY": "run-outcomes-key-0123456789",
    }.items():
        monkeypatch.setenv(f"PAPERPOST_{name}", value)


@pytest.fixture
def smtp(tmp_path: Path):
    server = SmtpServer(tmp_path).start()
    yield server
    server.stop()


def test_done_then_nothing_to_send_exit_0(project: Path) -> None:
    first = run()
    assert first.exit_code == ExitCode.OK, first.output
    assert "Digests written to the Maildir" in first.stdout
    again = run()
    assert again.exit_code == ExitCode.OK
    assert "every source is unchanged" in again.stdout


def test_every_source_failed_exit_3_and_says_so(project: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERPOST_SOURCES", json.dumps([str(project / "missing-dumps")]))
    result = run("--json")
    assert result.exit_code == ExitCode.SOURCES_FAILED
    summary = json.loads(result.stdout)
    assert summary["message"].startswith("every source failed: ")
    assert "missing-dumps" in summary["message"] and "weekend" not in summary["message"]


def test_some_sources_down_and_nothing_new_never_says_weekend(project: Path, monkeypatch) -> None:
    assert run().exit_code == ExitCode.OK
    monkeypatch.setenv(
        "PAPERPOST_SOURCES", json.dumps([str(project / "dumps"), str(project / "gone.json")])
    )
    summary = json.loads(run("--json").stdout)
    assert "weekend" not in summary["message"] and "1 of 4 sources failed" in summary["message"]


def test_locked_exit_5(project: Path) -> None:
    store = Store(f"sqlite:///{project / 'pp.db'}")
    assert store.acquire_lock(
        "digest-run", "elsewhere:1:x", __import__("datetime").timedelta(hours=1)
    )
    result = run()
    assert result.exit_code == ExitCode.LOCKED
    assert "Another run holds the lease: process 1 on host elsewhere, last renewed" in " ".join(
        result.stdout.split()
    )
    assert "paperpost unlock 'elsewhere:1:x'" in " ".join(result.stdout.split())


def test_relay_denied_pauses_exit_4_and_suppresses_nobody(project, smtp, monkeypatch) -> None:
    smtp_env(monkeypatch, smtp)
    smtp.script.reject_all = "554 5.7.1 Relay access denied"
    result = run("--json")
    assert result.exit_code == ExitCode.PAUSED
    summary = json.loads(result.stdout)
    assert summary["status"] == "paused" and "Relay access denied" in summary["message"]
    listed = json.loads(runner.invoke(app, ["subscribers", "list", "--json"]).stdout)
    assert {r["status"] for r in listed} == {"active"}
    monkeypatch.setenv("PAPERPOST_SMTP_CONNECTIONS", "1")  # one at a time: the 2nd waits
    # a login refusal pauses at the first reader (a policy refusal is tried on every reader
    # of the batch first, ATTACK5 #1)
    smtp.script.reject_all = "530 5.7.0 Authentication required"
    human = run()  # as a person reads it: one line for what waits, not one per reader
    assert human.exit_code == ExitCode.PAUSED
    assert "1 digest not attempted after the pause" in human.stdout
    assert "Authentication required" in human.stdout
    smtp.script.reject_all = None  # fixed: the next run delivers to both
    fixed = run("--json")
    assert fixed.exit_code == ExitCode.OK, fixed.output
    assert json.loads(fixed.stdout)["digests_sent"] == 2


def test_a_bad_mailbox_exit_6_then_list_and_reactivate(project, smtp, monkeypatch) -> None:
    smtp_env(monkeypatch, smtp)
    reply = "550 5.1.1 <ok@one.example>: Recipient address rejected: User unknown"
    smtp.script.reject["ok@one.example"] = reply
    result = run()
    assert result.exit_code == ExitCode.DELIVERY_FAILED, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "1 delivery failed permanently (listed above)."  # ATTACK4 #13
    assert any(line.startswith("failed ok@one.example") for line in lines[:-1])

    listed = runner.invoke(app, ["subscribers", "list"])  # 80 columns: the old table cut it
    assert LONG in listed.stdout  # never cut, however narrow the terminal
    rows = {
        r["email"]: r
        for r in json.loads(runner.invoke(app, ["subscribers", "list", "--json"]).stdout)
    }
    assert rows["ok@one.example"]["status"] == "bounced"
    assert rows["ok@one.example"]["reason"] == reply and rows["ok@one.example"]["since"]
    assert rows[LONG]["status"] == "active" and rows[LONG]["last_digest"]

    back = runner.invoke(app, ["subscribers", "reactivate", "OK@one.example"])
    assert back.exit_code == 0 and "bounced since" in back.stdout and reply in back.stdout
    del smtp.script.reject["ok@one.example"]
    again = run("--json")  # the digest that bounced is sent again after reactivation
    assert again.exit_code == ExitCode.OK
    assert [d["address"] for d in json.loads(again.stdout)["deliveries"]] == ["ok@one.example"]
    missing = runner.invoke(app, ["subscribers", "reactivate", "ok@one.example"])
    assert missing.exit_code == 1 and "is not suppressed" in missing.stderr


def test_a_digest_that_failed_is_not_counted_as_already_delivered(
    project, smtp, monkeypatch
) -> None:
    """ATTACK6 #7: the run after a permanent failure said "skipped: already delivered" for a
    digest nobody received."""
    smtp_env(monkeypatch, smtp)
    smtp.script.data_failures = ["554 5.6.0 Message content rejected"]
    assert run().exit_code == ExitCode.DELIVERY_FAILED
    again = json.loads(run("--json").stdout)
    assert again["skip_reasons"] == {
        "no new papers": 1,  # the reader who got the digest
        "failed permanently before (not tried again)": 1,
    }


def test_reactivating_a_complaint_needs_yes(project: Path) -> None:
    store = Store(f"sqlite:///{project / 'pp.db'}")
    store.suppress("ok@one.example", "complained", "ARF abuse report from Yahoo")
    refused = runner.invoke(app, ["subscribers", "reactivate", "ok@one.example"])
    assert refused.exit_code == 1 and "--yes" in refused.stderr
    assert "complained since" in refused.stdout and "ARF abuse report" in refused.stdout
    assert store.suppression("ok@one.example") is not None
    done = runner.invoke(app, ["subscribers", "reactivate", "ok@one.example", "--yes"])
    assert done.exit_code == 0 and store.suppression("ok@one.example") is None


def test_unwritable_outbox_exit_8_in_one_line(project: Path, monkeypatch) -> None:
    (project / "blocked").write_text("a file where the outbox folder should be")
    monkeypatch.setenv("PAPERPOST_OUTBOX_DIR", str(project / "blocked"))
    result = run()
    assert result.exit_code == ExitCode.FILESYSTEM
    assert "PAPERPOST_OUTBOX_DIR" in result.stderr and "Traceback" not in result.output


def test_digest_holds_no_server_path_or_internal_id(project: Path) -> None:
    assert run().exit_code == ExitCode.OK
    import mailbox

    for message in mailbox.Maildir(project / "outbox", create=False):
        raw = message.as_bytes()
        for private in (str(project), "team.yaml", "subs/", "X-Paperpost"):
            assert private.encode() not in raw, private


def test_one_reader_whose_ranking_fails_costs_nobody_else_their_digest(project: Path) -> None:
    """A reader with 33,000 "more" votes, imported from a JSON-lines export: ranking them
    raised (OverflowError in the nudge's int16 index of the nearest liked paper) and,
    before, stopped the whole batch: exit 1, no digest for anybody. With the rank stage's
    isolation that reader failed alone; since the nudge's rewrite (88ef1d6) the reader gets a
    digest. Either way nobody else loses theirs (the isolation itself: test_pipeline.py)."""
    with (project / "subs" / "team.yaml").open("a") as out:
        out.write("- email: heavy@one.example\n  tags: [agents]\n")
    votes = project / "votes.jsonl"
    with votes.open("w") as out:
        for i in range(33_000):
            vote = {
                "address": "heavy@one.example",
                "paper_id": f"2611.{i:05d}",
                "vote": "more",
                "title": f"Agents paper number {i}",
                "digest": "1-2",
                "voted_at": "2026-11-20T10:00:00+00:00",
            }
            out.write(json.dumps(vote) + "\n")
    imported = runner.invoke(app, ["feedback", "import", str(votes)])
    assert imported.exit_code == 0, imported.output
    first = run("--json")
    summary = json.loads(first.stdout)
    status = {d["address"]: d for d in summary["deliveries"]}
    assert status["ok@one.example"]["status"] == status[LONG]["status"] == "sent"
    heavy = status["heavy@one.example"]
    if heavy["status"] != "sent":  # the nudge may learn to take it; it must stay alone
        assert heavy["status"] == "failed" and first.exit_code == ExitCode.DELIVERY_FAILED
        assert heavy["detail"].startswith("cannot rank this reader's papers (OverflowError: ")
        assert "team.yaml:7" in heavy["detail"] and "tried again next run" in heavy["detail"]
        again = json.loads(run("--json").stdout)  # not skipped as done: tried again
        assert [(d["address"], d["status"]) for d in again["deliveries"]] == [
            ("heavy@one.example", "failed")
        ]
    assert len(list((project / "outbox" / "new").iterdir())) == 2 + (heavy["status"] == "sent")


def test_server_dropping_every_end_of_data_pauses_exit_4_and_says_so(
    project, smtp, monkeypatch
) -> None:
    """ATTACK4 #2: every message's end of data goes unanswered: not "nothing to send", exit 4."""
    smtp_env(monkeypatch, smtp)
    smtp.script.drop_next_data = 100
    result = run()
    assert result.exit_code == ExitCode.PAUSED, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert "accepted none of the 2 digests" in result.stdout
    assert "never answered after the end of data" in result.stdout
    assert "min_score" not in last and "Nothing to send" not in result.stdout


def test_temporary_refusal_of_every_reader_pauses_exit_4(project, smtp, monkeypatch) -> None:
    """ATTACK4 #2: 451 to each of two readers (fewer than the error-rate sample): exit 4."""
    smtp_env(monkeypatch, smtp)
    smtp.script.reject_all = "451 4.7.1 Service unavailable, try again later"
    result = run("--json")
    assert result.exit_code == ExitCode.PAUSED, result.output
    summary = json.loads(result.stdout)
    assert summary["digests_retry"] == 2 and summary["digests_sent"] == 0
    assert "accepted none of the 2 digests" in summary["message"]
    assert "451 4.7.1" in summary["message"]
    smtp.script.reject_all = None  # the next run delivers both
    again = run("--json")
    assert again.exit_code == ExitCode.OK and json.loads(again.stdout)["digests_sent"] == 2


@pytest.fixture
def tiny_outbox(project: Path):
    """A real 8 KiB tmpfs as the outbox (needs mount rights: root, as in this sandbox)."""
    import os
    import subprocess

    folder = project / "outbox"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs for the outbox needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(folder)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_full_outbox_disk_exit_8_and_retried(project, tiny_outbox, monkeypatch) -> None:
    """ATTACK4 #2: ENOSPC on the outbox: exit 8 (README), a true last line, nothing lost."""
    result = run()
    assert result.exit_code == ExitCode.FILESYSTEM, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert "outbox cannot be written" in last and "No space left on device" in last
    assert "PAPERPOST_OUTBOX_DIR" in last
    assert not list((tiny_outbox / "new").iterdir())
    store = Store(f"sqlite:///{project / 'pp.db'}")
    assert {s for _, s in store.delivery_status("ok@one.example")} == {"retry"}
    # the disk has room again: the same digests go out
    monkeypatch.setenv("PAPERPOST_OUTBOX_DIR", str(project / "roomy"))
    again = run("--json")
    assert again.exit_code == ExitCode.OK, again.output
    assert json.loads(again.stdout)["digests_sent"] == 2


HOSTILE_REPLY = "550 5.1.1 \x1b[31mRED\x1b]0;owned\x07 user unknown \x9b2J" + " X" * 3000


def test_a_servers_escape_codes_and_length_never_reach_the_terminal(
    project, smtp, monkeypatch
) -> None:
    """Before: the reply was stored as the suppression reason and printed raw (colour,
    window title) and in full (6,000 characters) by `run`, `subscribers list` and --json."""
    smtp_env(monkeypatch, smtp)
    smtp.script.reject["ok@one.example"] = HOSTILE_REPLY
    shown = [run(), runner.invoke(app, ["subscribers", "list"])]
    listed = runner.invoke(app, ["subscribers", "list", "--json"])
    with sqlite3.connect(project / "pp.db") as db:
        stored = db.execute("SELECT detail FROM suppressions UNION SELECT error FROM deliveries")
        kept = [text for (text,) in stored if text]
    assert kept and all("\x1b" not in text and len(text) <= 300 for text in kept)
    back = runner.invoke(app, ["subscribers", "reactivate", "ok@one.example"])
    for result in [*shown, listed, back]:
        assert not any(c in result.output for c in "\x1b\x07\x9b"), result.output
        assert "user unknown" in result.output or result is shown[1]  # (80 columns: cut)
    reason = {r["email"]: r["reason"] for r in json.loads(listed.stdout)}["ok@one.example"]
    assert reason.startswith("550 5.1.1 RED user unknown X X") and len(reason) <= 300
    assert all(len(line) < 400 for line in shown[0].output.splitlines())


def test_only_ambiguous_digests_never_read_as_nothing_to_send() -> None:
    """ATTACK4 #2/#13: a run whose digests all ended ambiguous says so (not "min_score")."""
    from paperpost.pipeline import RunSummary, SourceReport, outcome_message

    summary = RunSummary(1, papers_new=5, digests_ambiguous=2)
    summary.sources = [SourceReport("dumps/a.txt", "ingested", 5, 5)]
    message = outcome_message(summary)
    assert message.startswith("No digest was confirmed: 2 ambiguous") and "above" in message


def test_a_glob_or_folder_matching_no_dump_is_an_error_naming_it(project, monkeypatch) -> None:
    """ATTACK4 #11: "dumps/*.jsn" or an empty folder said "no new papers (weekend...)", exit 0."""
    (project / "empty").mkdir()
    monkeypatch.setenv(
        "PAPERPOST_SOURCES", json.dumps([str(project / "dumps" / "*.jsn"), str(project / "empty")])
    )
    result = run("--json")
    assert result.exit_code == ExitCode.SOURCES_FAILED, result.output
    summary = json.loads(result.stdout)
    assert "weekend" not in summary["message"]
    errors = {s["source"]: s["detail"] for s in summary["sources"]}
    assert "matches no file" in errors[str(project / "dumps" / "*.jsn")]
    assert "a folder with no dump files" in errors[str(project / "empty")]
    # beside a source that works, the empty one is still named
    monkeypatch.setenv(
        "PAPERPOST_SOURCES", json.dumps([str(project / "dumps"), str(project / "empty")])
    )
    partial = run("--json")
    assert partial.exit_code == ExitCode.OK
    assert any(s["status"] == "failed" for s in json.loads(partial.stdout)["sources"])


def test_nothing_sent_because_everyone_is_suppressed_says_so(project: Path) -> None:
    """ATTACK5 #11: every reader unsubscribed, new papers in: the last line blamed min_score
    ("no subscriber had new papers above their min_score"), sending the operator to tune it."""
    store = Store(f"sqlite:///{project / 'pp.db'}")
    for address in ("ok@one.example", LONG):
        store.suppress(address, "unsubscribed")
    result = run()
    assert result.exit_code == ExitCode.OK, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert "min_score" not in last
    assert last == "Nothing to send: every subscriber was skipped (2 suppressed (unsubscribed))."


def test_a_domain_refusing_us_is_deferred_in_the_summary_exit_0(project, smtp, monkeypatch):
    """`paperpost run` with 6 readers at a domain that refuses us by policy: 3 are tried, the
    domain is deferred, the others are served; the summary (terminal, JSON, the Prefect
    artefact's markdown) names the domain, how many digests wait and why; exit 0 (nothing
    failed for good, the run was not paused); the next run sends the 6."""
    from paperpost.pipeline import RunSummary, SourceReport
    from paperpost.report import markdown

    smtp_env(monkeypatch, smtp)
    monkeypatch.setenv("PAPERPOST_SMTP_CONNECTIONS", "1")
    (project / "subs" / "blocked.yaml").write_text(
        "".join(
            f"- email: r{i}@blocked.example\n  tags: [agents, reasoning]\n  min_score: 0.1\n"
            for i in range(6)
        )
    )
    reply = "554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"
    smtp.script.domain_rcpt["blocked.example"] = reply
    result = run("--json")
    assert result.exit_code == ExitCode.OK, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "finished"
    assert summary["digests_sent"] == 2 and summary["digests_deferred"] == 6
    assert summary["deferred_domains"]["blocked.example"]["digests"] == 6
    assert reply in summary["deferred_domains"]["blocked.example"]["reason"]
    assert "6 digests deferred to the next run: blocked.example" in summary["message"]
    assert smtp.handler.tried("blocked.example") == 3
    data = dict(summary, sources=[SourceReport(**s) for s in summary["sources"]])
    artefact = markdown(RunSummary(**data))
    assert "## Domains deferred to the next run" in artefact
    assert "| blocked.example | 6 |" in artefact
    smtp.script.domain_rcpt.clear()
    human = run()  # nothing new: the 6 deferred digests go out, one line each is not printed
    assert human.exit_code == ExitCode.OK, human.output
    assert sorted(r[0] for r, _ in smtp.handler.messages if "blocked" in r[0]) == [
        f"r{i}@blocked.example" for i in range(6)
    ]
