from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import EXAMPLES, ROOT
from paperpost.cli import app

runner = CliRunner()


def test_parse_jsonl_prints_every_distinct_paper() -> None:
    result = runner.invoke(app, ["parse", str(EXAMPLES / "dumps"), "--jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 13  # 16 listed in three dumps, 3 of them twice
    assert len({r["id"] for r in rows}) == 13
    keys = {
        "id",
        "title",
        "abstract",
        "arxiv_id",
        "authors",
        "organization",
        "published",
        "upvotes",
        "url",
    }
    assert all(keys <= set(r) for r in rows)
    grasp = next(r for r in rows if r["title"].startswith("GraspAnything"))
    assert grasp["arxiv_id"] == "2611.05012" and grasp["published"] == "2026-11-20"
    murmur = next(r for r in rows if r["title"].startswith("Murmur"))
    assert murmur["published"] == "2026-11-18" and murmur["upvotes"] is None


def test_parse_reports_a_bad_source_and_continues(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"paper": ')
    good = EXAMPLES / "dumps" / "2026-11-20.txt"
    result = runner.invoke(app, ["parse", str(bad), str(good), "--jsonl"])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 6
    assert f"{bad}:1: the file is truncated" in result.stderr


def test_rank_jsonl_orders_best_first_with_reasons() -> None:
    result = runner.invoke(
        app,
        [
            "rank",
            "--tag",
            "llm-inference",
            "--exclude",
            "quantization",
            str(EXAMPLES / "dumps"),
            str(EXAMPLES / "newer"),
            "--jsonl",
            "--limit",
            "5",
            "--min-score",  # DraftLens names llm inference only in its abstract: 0.20
            "0.15",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["title"].split(":")[0] for r in rows] == ["TidalKV", "DraftLens"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(r["matched"] == ["llm-inference"] and r["why"] for r in rows)


def test_subscribers_validate_prints_every_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("email: nope\ntags: [x]\n")
    (tmp_path / "b.yaml").write_text("email: b@example.org\ntags: [x]\nmax_item: 3\n")
    result = runner.invoke(app, ["subscribers", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "a.yaml:1:8: email:" in result.stderr
    assert (
        'b.yaml:3:1: max_item: unknown field "max_item"; did you mean "max_items"?' in result.stderr
    )
    ok = runner.invoke(app, ["subscribers", "validate", str(ROOT / "subscribers")])
    assert ok.exit_code == 0


def test_subscribers_validate_warns_about_a_weekend_weekday(tmp_path: Path) -> None:
    """ATTACK4 #8: the README's cron runs Monday to Friday; a saturday reader gets nothing."""
    (tmp_path / "a.yaml").write_text(
        "email: a@example.org\ntags: [agents]\ncadence: weekly\nweekday: saturday\n"
    )
    (tmp_path / "b.yaml").write_text(
        "email: b@example.org\ntags: [agents]\ncadence: weekly\nweekday: friday\n"
    )
    result = runner.invoke(app, ["subscribers", "validate", str(tmp_path)])
    assert result.exit_code == 0
    assert "a.yaml:1: a@example.org: weekday: saturday" in result.stderr
    assert "never runs" in result.stderr and "b@example.org" not in result.stderr
    assert "1 warning(s)" in result.stdout


def test_run_without_prefect_then_unsubscribe(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    base = [
        "run",
        "--no-prefect",
        "--json",
        "--source",
        "dumps",
        "--db",
        "pp.db",
        "--outbox",
        "out",
    ]
    first = json.loads(runner.invoke(app, base).stdout)
    assert {
        k: first[k]
        for k in ("papers_seen", "papers_new", "digests_sent", "digests_skipped", "digests_failed")
    } == {
        "papers_seen": 16,
        "papers_new": 13,
        "digests_sent": 4,
        "digests_skipped": 1,
        "digests_failed": 0,
    }
    token_line = next(
        line
        for line in (tmp_path / "out" / "new").glob("bob*.eml").__next__().read_text().splitlines()
        if line.startswith("List-Unsubscribe:")
    )
    token = token_line.split("unsubscribe%20")[1].rstrip(">")
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", "sqlite:///pp.db")
    done = runner.invoke(app, ["unsubscribe", token])
    assert done.exit_code == 0 and "bob@example.org unsubscribed" in done.stdout
    tampered = runner.invoke(app, ["unsubscribe", token[:-2] + "xx"])
    assert tampered.exit_code == 1
    shutil.copy(EXAMPLES / "newer" / "2026-11-24.txt", tmp_path / "dumps")
    again = json.loads(runner.invoke(app, base).stdout)
    assert again["skip_reasons"].get("suppressed (unsubscribed)") == 1


def test_removing_an_entry_that_others_depend_on_leaves_the_list_whole(
    tmp_path: Path, monkeypatch
) -> None:
    """Before: `subscribers remove a@…` cut out the entry holding `&defaults`, the file then
    failed to load ("found undefined alias 'd'") and b@… got no more digests; the rewrite
    also added a byte-order mark the file never had."""
    subs = tmp_path / "subs"
    subs.mkdir()
    team = subs / "team.yaml"
    text = (
        "- &d\n  email: a@example.org\n  tags: [agents]\n"
        "- <<: *d\n  email: b@example.org\n"
        "- email: c@example.org\n  tags: [agents]\n"
    )
    team.write_text(text)
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(subs))
    refused = runner.invoke(app, ["subscribers", "remove", "a@example.org"])
    assert refused.exit_code == 1
    assert "team.yaml left as it is" in refused.stderr and "undefined alias 'd'" in refused.stderr
    assert team.read_text() == text and sorted(p.name for p in subs.iterdir()) == ["team.yaml"]
    assert runner.invoke(app, ["subscribers", "remove", "c@example.org"]).exit_code == 0
    assert team.read_bytes() == text.split("- email: c@")[0].encode()  # no BOM, nothing else


def test_subscribers_add_list_remove(tmp_path: Path, monkeypatch) -> None:
    subs = tmp_path / "subs"
    shutil.copytree(ROOT / "subscribers", subs)
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(subs))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", f"sqlite:///{tmp_path / 'pp.db'}")
    added = runner.invoke(
        app,
        [
            "subscribers",
            "add",
            "zoe@example.org",
            "--tag",
            "agents",
            "--tag",
            "diffusion",
            "--cadence",
            "weekly",
            "--weekday",
            "fri",
        ],
    )
    assert added.exit_code == 0, added.output
    assert (subs / "zoe.yaml").exists()
    again = runner.invoke(app, ["subscribers", "add", "ZOE@example.org", "--tag", "agents"])
    assert again.exit_code == 1 and "already subscribed in" in again.stderr
    bad = runner.invoke(app, ["subscribers", "add", "nope", "--tag", "agents"])
    assert bad.exit_code == 1 and "email" in bad.stderr
    listed = runner.invoke(app, ["subscribers", "list"])
    assert "zoe@example.org" in listed.stdout and "weekly (friday)" in listed.stdout
    assert runner.invoke(app, ["subscribers", "validate", str(subs)]).exit_code == 0
    # remove from a list file keeps the others and the file valid
    gone = runner.invoke(app, ["subscribers", "remove", "dan@example.org"])
    assert gone.exit_code == 0, gone.output
    assert runner.invoke(app, ["subscribers", "remove", "zoe@example.org"]).exit_code == 0
    from paperpost.subscribers import load_subscribers

    entries, errors = load_subscribers(subs)
    assert errors == []
    assert {e.subscriber.email for e in entries} == {
        "alice@example.org",
        "bob@example.org",
        "carol@example.org",
        "erin@example.org",
    }
    assert runner.invoke(app, ["subscribers", "remove", "nobody@example.org"]).exit_code == 1


def test_tags_lists_the_vocabulary() -> None:
    result = runner.invoke(app, ["subscribers", "tags", "speech"])
    assert result.exit_code == 0
    assert "text-to-speech" in result.stdout and "diffusion" not in result.stdout


def test_serve_without_a_server_says_what_to_do() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect's settings, not the environment: a session's harness may have set them already
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "needs a running Prefect server" in result.stderr
    assert "prefect server start" in result.stderr


def test_serve_checks_the_database_before_scheduling(monkeypatch, httpserver) -> None:
    """A database serve cannot use is one line and exit 7 now, not a traceback in every run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    httpserver.expect_request("/api/health").respond_with_json(True)
    unreachable = "postgresql+psycopg://paperpost:hunter2-secret@127.0.0.1:1/paperpost"
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", unreachable)
    with temporary_settings(updates={PREFECT_API_URL: httpserver.url_for("/api")}):
        result = runner.invoke(app, ["serve"])
    assert result.exit_code == 7, result.output
    assert result.stderr.startswith("database error cannot connect to postgresql+psycopg://")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.output


def test_readme_documents_every_setting() -> None:
    from paperpost.settings import Settings

    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        variable = f"PAPERPOST_{name.upper()}"
        short = "_" + name.upper().split("_", 1)[-1]
        assert variable in readme or (name.startswith("smtp_") and f"`{short}`" in readme), name


def test_commands_that_run_no_flow_never_import_prefect(tmp_path: Path) -> None:
    """`--help` imports none of the heavy libraries, parse no database library, and no command
    but run and serve imports Prefect."""
    script = f"""
import json, sys
from paperpost.cli import app

def call(*args):
    try:
        app(list(args), prog_name="paperpost")
    except SystemExit:
        pass

heavy = ("prefect", "sqlalchemy", "numpy", "requests", "pydantic_settings")
call("--help")
after_help = [name for name in heavy if name in sys.modules]
call("parse", "{EXAMPLES / "dumps"}", "--jsonl")
after_parse = [name for name in ("sqlalchemy", "alembic") if name in sys.modules]
call("rank", "--tag", "agents", "{EXAMPLES / "dumps"}")
call("preview", "alice@example.org", "--out", "{tmp_path / "p.html"}")
for command in ("validate", "list", "tags"):
    call("subscribers", command)
call("unsubscribe", "not-a-token")
ran = sys.modules.get("paperpost.rank") is not None
print(json.dumps([after_help, after_parse, "prefect" in sys.modules, ran]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
    env["PAPERPOST_DATABASE_URL"] = f"sqlite:///{tmp_path / 'pp.db'}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    after_help, after_parse, prefect, ranked = json.loads(result.stdout.splitlines()[-1])
    assert after_help == [] and after_parse == [], result.stderr
    assert prefect is False and ranked is True, result.stderr
    assert (tmp_path / "p.html").exists()  # the commands did run


def test_preview_says_when_the_reader_gets_nothing(tmp_path: Path, monkeypatch) -> None:
    from paperpost.store import Store

    url = f"sqlite:///{tmp_path / 'pp.db'}"
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", url)
    out = tmp_path / "p.html"
    paused = runner.invoke(app, ["preview", "erin@example.org", "--out", str(out)])
    assert paused.exit_code == 0, paused.output
    assert paused.stdout == f"1 paper for erin@example.org → {out}\n"  # not "1 papers"
    assert "erin@example.org is paused (active: false in " in paused.stderr
    assert "research-group.yaml:11)" in paused.stderr and "send them nothing" in paused.stderr
    Store(url).suppress("bob@example.org", "unsubscribed")
    gone = runner.invoke(app, ["preview", "bob@example.org", "--out", str(out)])
    assert gone.exit_code == 0 and "2 papers for bob@example.org" in gone.stdout
    assert "bob@example.org is unsubscribed since " in gone.stderr
    active = runner.invoke(app, ["preview", "alice@example.org", "--out", str(out)])
    assert active.exit_code == 0 and active.stderr == ""


def test_web_does_not_default_to_the_smtp_sink_port() -> None:
    result = runner.invoke(app, ["web", "--help"])
    assert "8025" not in result.stdout and "8000" in result.stdout


def test_tags_that_are_not_topics_warn_with_how_they_are_read(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.yaml").write_text("email: a@example.org\ntags: [protien-design, tts]\n")
    checked = runner.invoke(app, ["subscribers", "validate", str(tmp_path)])
    assert checked.exit_code == 0, checked.output  # a warning, not an error
    assert "tags[0]: tag 'protien-design' is not a topic" in checked.stderr
    assert "read as: protien AND design" in checked.stderr
    assert "did you mean protein-design?" in checked.stderr
    assert "tags[1]" not in checked.stderr and "1 warning(s)" in checked.stdout
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(tmp_path))
    added = runner.invoke(app, ["subscribers", "add", "x@example.org", "--tag", "xyzzy"])
    assert added.exit_code == 0 and "tag 'xyzzy' is not a topic" in added.stderr
    explained = runner.invoke(app, ["rank", "--explain-tag", "gui-agents"])
    assert explained.exit_code == 0
    assert "read as gui AND agents" in explained.stdout
    assert "facet agents (LLM agents and tool use)" in explained.stdout


def test_rank_refuses_a_tag_with_no_words_to_match() -> None:
    for option in ("--tag", "--exclude", "--explain-tag"):
        extra = [] if option == "--tag" else ["--tag", "diffusion"]
        result = runner.invoke(app, ["rank", str(EXAMPLES / "dumps"), *extra, option, "*"])
        assert result.exit_code == 2, (option, result.output)
        assert "'*' has no words to match" in result.stderr


def test_removing_the_last_entry_or_from_a_bom_file_and_no_spurious_empty_file(
    tmp_path: Path, monkeypatch
) -> None:
    """Before: removing the only entry of a list file was refused with "the file is empty;
    … an anchor the entry holds may be used by others", and a file that stopped at an
    undefined alias got a second, wrong error: "the file is empty"."""
    subs = tmp_path / "subs"
    subs.mkdir()
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(subs))
    (subs / "one.yaml").write_text("- email: e@example.org\n  tags: [agents]\n")
    bom = subs / "bom.yaml"
    bom.write_bytes(
        b"\xef\xbb\xbf- email: c@example.org\n  tags: [agents]\n- email: d@example.org\n"
        b"  tags: [agents]\n"
    )
    gone = runner.invoke(app, ["subscribers", "remove", "e@example.org"])
    assert gone.exit_code == 0, gone.output
    assert not (subs / "one.yaml").exists()
    assert runner.invoke(app, ["subscribers", "remove", "c@example.org"]).exit_code == 0
    assert bom.read_bytes() == b"\xef\xbb\xbf- email: d@example.org\n  tags: [agents]\n"
    (subs / "broken.yaml").write_text("- email: t2@example.org\n  tags: *common\n")
    checked = runner.invoke(app, ["subscribers", "validate"])
    assert checked.exit_code == 1
    assert "undefined alias 'common'" in checked.output and "empty" not in checked.output


def test_validate_warns_about_a_daily_weekday_and_an_excluded_tag(tmp_path: Path) -> None:
    """Before: both loaded without a word (the weekday was ignored; the tag found nothing)."""
    (tmp_path / "b.yaml").write_text(
        "email: b@example.org\ntags: [agents, AI Safety]\nexclude: [ai-safety]\nweekday: friday\n"
    )
    (tmp_path / "c.yaml").write_text(
        "email: c@example.org\ntags: [agents]\ncadence: weekly\nweekday: friday\n"
    )
    result = runner.invoke(app, ["subscribers", "validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warned) == 2 and all("b.yaml:1: b@example.org" in line for line in warned)
    assert "weekday: friday has no effect: the cadence is daily" in warned[0]
    assert "exclude: ai-safety is also one of the tags" in warned[1]


def test_a_files_errors_are_capped_in_the_run_summary(tmp_path: Path, monkeypatch) -> None:
    """Before: one file with 2,500 over-long keywords printed 2,500 error lines in the summary."""
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ok.yaml").write_text("email: ok@example.org\ntags: [agents]\nmin_score: 0\n")
    entries = "".join(
        f"- email: k{i}@example.org\n  tags: [{{tag: agents, keywords: [{'x' * 81}]}}]\n"
        for i in range(2500)
    )
    (subs / "hog.yaml").write_text(entries)
    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    for name, value in {
        "SOURCES": json.dumps([str(tmp_path / "dumps")]),
        "SUBSCRIBERS_DIR": str(subs),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'pp.db'}",
        "OUTBOX_DIR": str(tmp_path / "outbox"),
    }.items():
        monkeypatch.setenv(f"PAPERPOST_{name}", value)
    result = runner.invoke(app, ["run", "--no-prefect", "--json"])
    summary = json.loads(result.stdout)
    assert summary["digests_sent"] == 1 and summary["invalid_subscriber_files"] == 1
    listed = summary["invalid_subscribers"]
    assert len(listed) == 6 and all("hog.yaml" in line for line in listed)
    assert listed[-1].endswith(
        "hog.yaml: 2,495 more errors in this file; "
        f"`paperpost subscribers validate {subs / 'hog.yaml'}` lists them all"
    )
    human = runner.invoke(app, ["run", "--no-prefect"])
    assert human.stdout.count("invalid subscriber") <= 7


def test_titles_reach_the_terminal_as_plain_text(tmp_path: Path) -> None:
    """A title is third-party text: rich markup in it is shown, not obeyed (``[/]`` used to
    crash ``parse``; ``[link=...]`` made a terminal hyperlink), and bidi or control
    characters never reach the terminal."""
    title = "Agents [/] that [link=https://evil.example]click[/link] \u202eevil\x1b]0;pwn\x07 here"
    dump = tmp_path / "2026-11-20.json"
    item = {"id": "2611.00001", "title": title, "summary": "Agents that act for users."}
    dump.write_text(json.dumps([{"paper": item}]))
    for args in (["parse", str(dump)], ["rank", "--tag", "agents", "--min-score", "0", str(dump)]):
        result = runner.invoke(app, args, env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert "Agents [/] that [link=https://evil.example]click[/link]" in result.stdout
        assert not any(ch in result.stdout for ch in "\u202e\x1b\x07"), args
