"""Configuration errors through the real command line: one line per bad variable, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import EXAMPLES, FULL_TESTS
from paperpost.cli import app
from paperpost.errors import ConfigError
from paperpost.settings import Settings


def paperpost(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
    return subprocess.run(
        [sys.executable, "-m", "paperpost", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_values_that_broke_runs_later_are_refused_up_front(tmp_path: Path) -> None:
    """Before: PAPERPOST_MAX_DUMP_MB=1e308 or nan ended `paperpost run` in a traceback; a
    PAPERPOST_SENDER with a line break failed every digest at render time ("Header values may
    not contain linefeed"), one without an address wrote "From: no address"; an infinite or
    zero PAPERPOST_FETCH_TIMEOUT turned off the slow-server deadline or failed every URL."""
    result = paperpost(
        ["run", "--no-prefect"],
        tmp_path,
        PAPERPOST_MAX_DUMP_MB="1e308",
        PAPERPOST_FETCH_TIMEOUT="inf",
        PAPERPOST_SMTP_TIMEOUT="0",
        PAPERPOST_SENDER="paperpost <digest@example.org>\r\nBcc: victim@example.org",
        PAPERPOST_BOUNCE_ADDRESS="no address",
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = sorted(result.stderr.splitlines())
    address = (
        'expected one email address on one line, with an ASCII domain, like "paperpost '
        '<digest@example.org>"'
    )
    assert lines == [
        f"configuration error PAPERPOST_BOUNCE_ADDRESS=no address: {address}, "
        "e.g. PAPERPOST_BOUNCE_ADDRESS=...",
        "configuration error PAPERPOST_FETCH_TIMEOUT=inf: expected a finite number, "
        "e.g. PAPERPOST_FETCH_TIMEOUT=20.0",
        "configuration error PAPERPOST_MAX_DUMP_MB=1e308: expected a number of at most "
        "10000.0, e.g. PAPERPOST_MAX_DUMP_MB=20.0",
        # the value on one line (its CR LF written out), cut at 60 characters as always
        "configuration error PAPERPOST_SENDER=paperpost <digest@example.org>\\x0d\\x0aBcc: "
        f"victim@example...: {address}, e.g. PAPERPOST_SENDER=paperpost "
        "<digest@paperpost.invalid>",
        "configuration error PAPERPOST_SMTP_TIMEOUT=0: expected a number greater than 0.0, "
        "e.g. PAPERPOST_SMTP_TIMEOUT=30.0",
    ]


def test_bad_values_are_one_line_each_with_an_example(tmp_path: Path) -> None:
    result = paperpost(
        ["run", "--no-prefect"],
        tmp_path,
        PAPERPOST_SMTP_PORT="abc",
        PAPERPOST_SOURCES='["examples/dumps",',
        PAPERPOST_DELIVERY="smpt",
        PAPERPOST_MAX_ERROR_RATE="2",
        PAPERPOST_BASE_URL="ftp://user:hunter2@example.org",
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert sorted(lines) == sorted(
        [
            "configuration error PAPERPOST_SMTP_PORT=abc: expected a whole number, "
            "e.g. PAPERPOST_SMTP_PORT=587",
            'configuration error PAPERPOST_SOURCES=["examples/dumps",: expected a '
            "comma-separated list, one value, or a valid JSON list of strings, "
            "e.g. PAPERPOST_SOURCES=examples/dumps,https://huggingface.co/api/daily_papers",
            "configuration error PAPERPOST_DELIVERY=smpt: expected one of 'outbox' or 'smtp', "
            "e.g. PAPERPOST_DELIVERY=outbox",
            "configuration error PAPERPOST_MAX_ERROR_RATE=2: expected a number of at most 1.0, "
            "e.g. PAPERPOST_MAX_ERROR_RATE=0.5",
            "configuration error PAPERPOST_BASE_URL=ftp://user:***@example.org: expected an "
            "https:// URL (or http:// for testing): a host and an optional path, with no query "
            "(?), fragment (#), login, quotes, angle brackets or spaces, e.g. "
            "PAPERPOST_BASE_URL=https://paperpost.example.org",
        ]
    )


def test_a_bad_value_in_dotenv_is_named_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PAPERPOST_SMTP_TIMEOUT=soon\n")
    result = paperpost(["subscribers", "list"], tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "configuration error PAPERPOST_SMTP_TIMEOUT=soon: expected a number, "
        "e.g. PAPERPOST_SMTP_TIMEOUT=30.0\n"
    )


def test_list_settings_take_one_value_a_comma_list_or_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = EXAMPLES / "dumps" / "2026-11-19.txt", EXAMPLES / "dumps" / "2026-11-20.txt"
    shutil.copy(first, tmp_path)
    runs = {
        "one": ("2026-11-19.txt", 7),
        "comma": (f" {first} ,{second},", 13),
        "json": (json.dumps([str(first), str(second)]), 13),
    }
    for name, (value, papers) in runs.items():
        monkeypatch.setenv("PAPERPOST_SOURCES", value)
        result = CliRunner().invoke(
            app, ["run", "--no-prefect", "--json", "--db", f"{name}.db", "--outbox", name]
        )
        assert result.exit_code == 0, (name, result.output)
        assert json.loads(result.stdout)["papers_seen"] == papers, name


def test_a_base_url_with_a_query_fragment_quote_or_space_is_a_config_error(tmp_path: Path) -> None:
    """ATTACK4 #10: "https://pp.example.org/?a=b" made ".../?a=b/unsubscribe/..." links.
    The command line once (exit 2, the error's line), the settings for every bad value."""
    result = paperpost(
        ["run", "--no-prefect"], tmp_path, PAPERPOST_BASE_URL="https://pp.example.org/?a=b"
    )
    assert result.returncode == 2, result.stderr
    line = "PAPERPOST_BASE_URL=https://pp.example.org/?a=b: expected an https:// URL"
    assert result.stderr.startswith(f"configuration error {line}")
    for bad in (
        "https://pp.example.org/?a=b",
        "https://pp.example.org/#top",
        'https://pp.example.org/"x',
        "https://pp.example.org/a b",
        "https://pp.example.org/<x>",
        "https://user@pp.example.org",
        "https:///path-only",
    ):
        with pytest.raises(ConfigError) as refused:
            Settings(base_url=bad, _env_file=None)
        (line,) = refused.value.lines
        assert line.startswith(f"PAPERPOST_BASE_URL={bad}: expected an https:// URL"), line
        assert "no query (?), fragment (#)" in line


def test_a_sender_with_two_addresses_is_a_config_error(tmp_path: Path) -> None:
    """ATTACK4 #9 (left by 0d99849): "d@x.org, evil@evil.example" put two addresses in From."""
    result = paperpost(
        ["run", "--no-prefect"], tmp_path, PAPERPOST_SENDER="d@x.org, evil@evil.example"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error PAPERPOST_SENDER=d@x.org, evil@")


@hsettings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_an_accepted_base_url_makes_links_that_end_in_their_own_path(value: str) -> None:
    """Whatever is accepted, "<base>/unsubscribe/<token>" keeps the path (no query or
    fragment swallows it) and has nothing a header or an HTML attribute would cut."""
    from paperpost.errors import ConfigError
    from paperpost.settings import Settings

    try:
        base = Settings(base_url="https://pp.example.org/" + value).base_url
    except ConfigError:
        return
    assert base is not None
    link = f"{base}/unsubscribe/tok.sig"
    parts = urlsplit(link)
    assert parts.hostname == "pp.example.org" and parts.path.endswith("/unsubscribe/tok.sig")
    assert not parts.query and not parts.fragment
    assert not any(c in link for c in " \"'<>\\`")


def test_a_dotenv_line_that_cannot_be_read_is_a_config_error_not_a_default(
    tmp_path: Path,
) -> None:
    """ATTACK6 #3: python-dotenv skips a line it cannot parse (a quoted value followed by
    anything but a # comment) with a one-line warning, and the run went on with the default:
    an annotated PAPERPOST_DATABASE_URL made a new empty database and every digest was sent
    again (exit 0); a quoted name in PAPERPOST_SENDER became digest@paperpost.invalid."""
    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "ann.yaml").write_text("email: ann@example.org\ntags: [agents]\n")
    url = f"sqlite:///{tmp_path / 'pp.db'}"
    env = tmp_path / ".env"
    lines = [
        "PAPERPOST_SOURCES=dumps",
        "PAPERPOST_SUBSCRIBERS_DIR=subs",
        f'PAPERPOST_DATABASE_URL="{url}"',
        "PAPERPOST_OUTBOX_DIR=outbox",
    ]
    lines[2] += " (production)"  # the operator annotates the line
    lines.append('PAPERPOST_SENDER="Lab Papers" <papers@lab.example.org>')
    lines.append("PAPERPOST_BASE_URL: https://pp.example.org")
    env.write_text("\n".join(lines) + "\n")
    result = paperpost(["run", "--no-prefect"], tmp_path)
    assert result.returncode == 2
    advice = (
        "a quoted value must end the line (or be followed by a space and a # comment), and a "
        'line is KEY=value; write KEY=value, KEY="value" or KEY=\'value with "quotes"\' '
        "(e.g. PAPERPOST_SENDER='\"Lab Papers\" <papers@lab.org>')"
    )
    assert result.stderr.splitlines() == [
        f"configuration error {env}:{n}: cannot read the line for {name}: {advice}"
        for n, name in [
            (3, "PAPERPOST_DATABASE_URL"),
            (5, "PAPERPOST_SENDER"),
            (6, "PAPERPOST_BASE_URL"),
        ]
    ]
    assert "production" not in result.stderr  # values are not shown (they may be secrets)
    assert not (tmp_path / "state").exists()  # no new empty database
    assert not (tmp_path / "pp.db").exists() and not (tmp_path / "outbox").exists()

    # as the message says: the same values, written so they can be read
    lines[2] = f'PAPERPOST_DATABASE_URL="{url}"  # production'
    lines[4] = "PAPERPOST_SENDER='\"Lab Papers\" <papers@lab.example.org>'"
    lines[5] = "PAPERPOST_BASE_URL=https://pp.example.org"
    env.write_text("\n".join(lines) + "\n")
    again = paperpost(["run", "--no-prefect", "--json"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["digests_sent"] == 1
    assert (tmp_path / "pp.db").exists() and not (tmp_path / "state").exists()


DOTENV_TEXT = st.text(alphabet=st.sampled_from("AB_=:'\"# \\x-e"), max_size=20)


@hsettings(max_examples=300 if FULL_TESTS else 60, deadline=None)
@given(st.lists(DOTENV_TEXT, min_size=1, max_size=4))
def test_every_line_python_dotenv_would_skip_is_refused(lines: list[str]) -> None:
    """Hypothesis: the check and python-dotenv's own reading (which pydantic-settings uses)
    agree: a line it would skip with a warning is an error naming that line, and a file it
    reads whole is accepted."""
    import io
    import logging
    import tempfile

    from dotenv import dotenv_values

    from paperpost.errors import ConfigError
    from paperpost.settings import Settings

    text = "\n".join(lines) + "\n"
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("dotenv.main")
    logger.addHandler(handler)
    try:
        dotenv_values(stream=io.StringIO(text))
    finally:
        logger.removeHandler(handler)
    skipped = sorted(int(w.rsplit(" ", 1)[1]) for w in warned if "could not parse" in w)
    with tempfile.TemporaryDirectory() as folder:
        env = Path(folder) / ".env"
        env.write_text(text)
        try:
            Settings(_env_file=env)  # type: ignore[call-arg]
            refused: list[int] = []
        except ConfigError as exc:
            refused = sorted(
                int(line.split(":")[1]) for line in exc.lines if line.startswith(str(env))
            )
    assert refused == skipped


def test_a_login_smtp_or_imap_cannot_send_is_refused_at_start_without_showing_it(
    tmp_path: Path,
) -> None:
    """ATTACK6 #7 and #14: smtplib and imaplib send logins as ASCII. A password `Grüße-…`
    failed every digest *permanently* ('ascii' codec can't encode characters in position
    6-7: where the secret's non-ASCII letters are), or crashed every run (IMAP)."""
    result = paperpost(
        ["run", "--no-prefect"],
        tmp_path,
        PAPERPOST_SMTP_PASSWORD="Grüße-2026-secret",
        PAPERPOST_IMAP_PASSWORD="pässwörd",
        PAPERPOST_IMAP_USERNAME="bounces@exämple.org",
    )
    assert result.returncode == 2
    expected = (
        "expected ASCII letters, digits and punctuation only: SMTP AUTH and IMAP LOGIN as "
        "paperpost sends them cannot carry other characters; set a login of ASCII characters "
        "on the server"
    )
    assert sorted(result.stderr.splitlines()) == [
        f"configuration error PAPERPOST_IMAP_PASSWORD=<hidden>: {expected}, "
        "e.g. PAPERPOST_IMAP_PASSWORD=...",
        f"configuration error PAPERPOST_IMAP_USERNAME=bounces@exämple.org: {expected}, "
        "e.g. PAPERPOST_IMAP_USERNAME=...",
        f"configuration error PAPERPOST_SMTP_PASSWORD=<hidden>: {expected}, "
        "e.g. PAPERPOST_SMTP_PASSWORD=...",
    ]


def test_a_missing_or_empty_subscribers_folder_stops_the_run_before_it_fetches(
    tmp_path: Path,
) -> None:
    """ATTACK6 #12. Before: a missing folder (a typo, an unmounted share) ended the run with
    exit 0 and "no subscriber had new papers above their min_score", after the run had taken
    the new papers as news: on a new install the readers never got them. Now the run stops
    first (exit 2, one line) and the next run with the right folder sends them."""
    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    (tmp_path / "empty").mkdir()
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "ann.yaml").write_text("email: ann@example.org\ntags: [agents]\n")
    env = {
        "PAPERPOST_SOURCES": str(tmp_path / "dumps"),
        "PAPERPOST_OUTBOX_DIR": str(tmp_path / "outbox"),
        "PAPERPOST_SEND_EMPTY": "true",
    }
    for folder, problem in [
        ("subscribers-typo", "does not exist (a typo, a share that is not mounted, a renamed"),
        ("empty", "holds no subscriber file (*.yaml, *.yml)"),
    ]:
        result = paperpost(
            ["run", "--no-prefect"], tmp_path, PAPERPOST_SUBSCRIBERS_DIR=folder, **env
        )
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(
            f"configuration error PAPERPOST_SUBSCRIBERS_DIR={folder} {problem}"
        ), result.stderr
        assert "nothing was fetched or sent" in result.stderr and "min_score" not in result.stderr
    result = paperpost(
        ["run", "--no-prefect", "--json"], tmp_path, PAPERPOST_SUBSCRIBERS_DIR="subs", **env
    )
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and summary["papers_new"] == 13 and summary["digests_sent"] == 1


def test_a_database_url_paperpost_cannot_use_is_a_config_error(tmp_path: Path) -> None:
    """ATTACK6 #13. Before: ``mysql://…`` ended every command in a 40-line traceback
    (``No module named 'MySQLdb'``), exit 1; a bare file name, "Could not parse SQLAlchemy
    URL" as a database error (exit 7)."""
    for url, shown, why in [
        ("mysql://pp:s3cret@127.0.0.1/pp", "mysql://pp:***@127.0.0.1/pp", "mysql is not supported"),
        ("postgres://pp@db/pp", "postgres://pp@db/pp", "postgres is not supported"),
        ("pp.db", "pp.db", "this is not a URL"),
    ]:
        result = paperpost(["run", "--no-prefect"], tmp_path, PAPERPOST_DATABASE_URL=url)
        assert result.returncode == 2 and result.stdout == "" and "s3cret" not in result.stderr
        assert result.stderr == (
            f"configuration error PAPERPOST_DATABASE_URL={shown}: expected a "
            "sqlite:///path/to/file.db or postgresql+psycopg://user:password@host/db URL "
            f"({why}: paperpost runs on SQLite and PostgreSQL), e.g. "
            "PAPERPOST_DATABASE_URL=sqlite:///state/paperpost.db\n"
        )
    for url in ("sqlite:///pp.db", "postgresql+psycopg://a:b@h/d", "postgresql://a@h/d"):
        assert Settings(_env_file=None, database_url=url).db_url == url
