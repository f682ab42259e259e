"""Bounces, complaints and mailto unsubscribes, read from a real IMAP server (a private Dovecot),
a Maildir and an mbox. The samples in tests/data/bounces are our own, written in the formats
Postfix, Exim, Gmail and Microsoft send, plus ARF reports from Yahoo and Hotmail; the tests fill
in the addresses, VERP return paths, Message-IDs and tokens of digests they really sent."""

from __future__ import annotations

import hashlib
import imaplib
import json
import mailbox
import os
import ssl
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr
from typer.testing import CliRunner

import imap_server
from conftest import FULL_TESTS
from paperpost.bounces import parse_report, process
from paperpost.cli import app
from paperpost.delivery import Outbox, send_batch
from paperpost.errors import ConfigError
from paperpost.models import Paper
from paperpost.pipeline import require_own_key
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Edition, Outgoing, Reader, Renderer
from paperpost.settings import Settings
from paperpost.store import Store, deliveries
from paperpost.unsubscribe import make_address_token, make_token
from paperpost.verp import envelope_sender

SAMPLES = Path(__file__).parent / "data" / "bounces"
KEY = "bounce-test-key-5f1c0e7a9b3d4c2e8f60"
SENDER = "paperpost <digest@example.org>"
# sample -> what it is, and a piece of the detail recorded for it
EXPECTED = {
    "postfix_user_unknown": ("hard", "550 5.1.1"),
    "postfix_mailbox_full": ("soft", "552 5.2.2"),
    "exim_dsn_user_unknown": ("hard", "550 5.1.1"),
    "exim_plain_no_such_user": ("hard", "550 No Such User Here"),
    "gmail_address_not_found": ("hard", "550-5.1.1 The email account"),
    "gmail_delayed": ("delayed", "DSN action delayed"),
    "microsoft_recipient_not_found": ("hard", "550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
    "microsoft_quota_exceeded": ("soft", "554 5.2.2 mailbox full"),
    "yahoo_arf_abuse": ("complaint", "ARF abuse report from Yahoo!-Mail-Feedback/2.0"),
    "microsoft_jmrp_arf": ("complaint", "ARF abuse report from Hotmail FBL"),
    "mailto_unsubscribe": ("unsubscribe", "unsubscribe request by mail"),
    "out_of_office": ("ignored", "not a bounce"),
    "forged_dsn": ("hard", "550 5.1.1 User unknown"),
}
# what each sample does to its reader: the suppression reason, or None
EFFECT = {
    "hard": "bounced",
    "complaint": "complained",
    "unsubscribe": "unsubscribed",
    "soft": None,
    "delayed": None,
    "ignored": None,
}


def settings_for(**changes: object) -> Settings:
    return Settings(secret_key=SecretStr(KEY), sender=SENDER, **changes)


def reader_of(sample: str) -> str:
    return f"{sample.replace('_', '.')}@{sample.split('_')[0]}.example"


def fill(sample: str, digest: Outgoing, when: datetime | None = None) -> bytes:
    """A sample made real: about this digest, with its VERP address, Message-ID and token."""
    local, _, domain = digest.address.partition("@")
    values = {
        "VERP": envelope_sender(settings_for(), digest.message_id),
        "RCPT": digest.address,
        "LOCAL": local,
        "DOMAIN": domain,
        "MSGID": digest.message_id,
        "TOKEN": make_address_token(KEY, digest.address),  # these Readers have no reader id
        "DATE": format_datetime(when or datetime.now(UTC)),
        "UNIQUE": uuid.uuid4().hex,
    }
    text = (SAMPLES / f"{sample}.eml").read_text()
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


@pytest.fixture(scope="module")
def rendered() -> dict[str, Outgoing]:
    """One real digest per sample's reader."""
    paper = Paper("Agents for tasks", "LLM agents use tools.")
    items = rank([paper], Profile((Interest("agents"),)))
    edition = Edition(SENDER, KEY, None, date(2026, 11, 25), 1)
    renderer = Renderer()
    return {
        name: renderer.render(Reader(reader_of(name), None, ("agents",)), items, edition, 0, 1)
        for name in EXPECTED
    }


@pytest.fixture
def sent(tmp_path: Path, rendered) -> tuple[Store, dict[str, Outgoing]]:
    """The digests, sent (to the outbox) through the ledger."""
    store = Store(f"sqlite:///{tmp_path / 'pp.db'}")
    digests = dict(rendered)
    send_batch(store, Outbox(tmp_path / "outbox"), list(digests.values()), run_id=1)
    return store, digests


def everyone(store: Store, digests: dict[str, Outgoing]) -> dict[str, tuple[str, str | None]]:
    found = store.suppressions([d.address for d in digests.values()])
    return {a: (s.reason, s.detail) for a, s in found.items()}


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_each_sample_is_classified_and_traced_to_its_digest(sample: str, rendered) -> None:
    digest = rendered[sample]
    report = parse_report(fill(sample, digest), KEY)
    kind, detail = EXPECTED[sample]
    assert report.kind == kind
    assert detail in report.detail
    if sample in {"mailto_unsubscribe", "forged_dsn", "out_of_office"}:
        assert report.digest_hash is None  # no (validly signed) VERP address, or not a report
    else:
        assert digest.message_id == f"<{report.digest_hash}@example.org>"
    if kind in {"hard", "soft"}:
        assert report.recipient == digest.address


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory):
    if not imap_server.available():
        if os.environ.get("PAPERPOST_REQUIRE_IMAP"):
            pytest.fail("Dovecot is required (PAPERPOST_REQUIRE_IMAP) but not installed")
        pytest.skip("needs Dovecot (Debian package dovecot-imapd) for a real IMAP server")
    server = imap_server.ImapServer(tmp_path_factory.mktemp("imap")).start()
    yield server
    server.stop()


def imap_settings(server: imap_server.ImapServer, security: str = "tls") -> Settings:
    return settings_for(
        bounce_mailbox="imap",
        imap_host="127.0.0.1",
        imap_port=server.port_tls if security == "tls" else server.port_starttls,
        imap_security=security,
        imap_username=imap_server.USER,
        imap_password=SecretStr(imap_server.PASSWORD),
        imap_ca_file=server.cert,
    )


def hostile_imap_settings(server: imap_server.HostileImap, **changes: object) -> Settings:
    """Settings reading the bounce mailbox at a HostileImap server (which takes any login)."""
    return settings_for(
        bounce_mailbox="imap",
        imap_host="127.0.0.1",
        imap_port=server.port,
        imap_username="pp",
        imap_password=SecretStr("secret"),
        imap_ca_file=server.cert,
        **changes,
    )


def imap_client(server: imap_server.ImapServer) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(server.cert))
    client = imaplib.IMAP4_SSL("127.0.0.1", server.port_tls, ssl_context=context)
    client.login(imap_server.USER, imap_server.PASSWORD)
    client.select("INBOX")
    return client


def test_imap_bounces_complaints_and_unsubscribes_are_applied_once(dovecot, sent) -> None:
    store, digests = sent
    client = imap_client(dovecot)
    for sample, digest in digests.items():
        client.append("INBOX", None, None, fill(sample, digest))

    summary = process(imap_settings(dovecot, "tls"), store)
    suppressed = everyone(store, digests)
    for sample, digest in digests.items():
        effect = None if sample == "forged_dsn" else EFFECT[EXPECTED[sample][0]]
        assert suppressed.get(digest.address, (None,))[0] == effect, sample
    # a suppressed address records what the server or the report said
    assert "550 5.1.10 RESOLVER.ADR.RecipientNotFound" in str(
        suppressed[digests["microsoft_recipient_not_found"].address][1]
    )
    assert summary.counts == {
        "hard": 5,
        "soft": 2,
        "delayed": 1,
        "complaint": 2,
        "unsubscribe": 1,
        "ignored": 1,
        "unmatched": 1,  # the forged DSN: its VERP signature is wrong, nobody is suppressed
    }
    # every message is flagged as processed
    client.noop()  # let this session see the other session's flags
    assert client.uid("SEARCH", "UNKEYWORD", "$PaperpostDone")[1] == [b""]

    again = process(imap_settings(dovecot, "starttls"), store)  # STARTTLS this time
    assert again.counts == {}
    # even with the flags gone, processing the same messages twice changes nothing
    client.uid("STORE", "1:*", "-FLAGS.SILENT", "($PaperpostDone)")
    third = process(imap_settings(dovecot, "tls"), store)
    assert third.counts == {"already processed": len(digests)}
    assert everyone(store, digests) == suppressed
    client.logout()


def test_imap_wrong_password_is_one_clear_line(dovecot, sent) -> None:
    from paperpost.bounces import BounceError

    store, _ = sent
    wrong = imap_settings(dovecot).model_copy(update={"imap_password": SecretStr("nope-123")})
    with pytest.raises(BounceError, match="refused the login; check PAPERPOST_IMAP_USERNAME"):
        process(wrong, store)


def later_digests(store: Store, tmp_path: Path, address: str, count: int) -> list[Outgoing]:
    """``count`` more digests (later windows) for one reader, sent through the ledger."""
    paper = Paper("Agents for tasks", "LLM agents use tools.")
    items = rank([paper], Profile((Interest("agents"),)))
    renderer = Renderer()
    edition = Edition(SENDER, KEY, None, date(2026, 11, 25), 1)
    more = [
        renderer.render(Reader(address, None, ("agents",)), items, edition, hi, hi + 1)
        for hi in range(1, count + 1)
    ]
    send_batch(store, Outbox(tmp_path / "outbox"), more, run_id=2)
    return more


def test_soft_bounces_suppress_after_n_digests_within_the_window(tmp_path: Path, sent) -> None:
    store, digests = sent
    digest = digests["postfix_mailbox_full"]
    second, third = later_digests(store, tmp_path, digest.address, 2)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    now = datetime.now(UTC)
    settings = settings_for(bounce_mailbox=str(tmp_path / "bounces"))
    box.add(fill("postfix_mailbox_full", digest, now - timedelta(days=40)))  # too old to count
    box.add(fill("postfix_mailbox_full", second, now - timedelta(days=3)))
    assert process(settings, store).counts == {"soft": 2}
    assert store.suppression(digest.address) is None
    box.add(fill("microsoft_quota_exceeded", digest, now - timedelta(days=1)))
    summary = process(settings, store)
    assert summary.counts == {"soft": 1}
    assert store.suppression(digest.address) is None  # 2 digests within 14 days: not yet
    box.add(fill("postfix_mailbox_full", third, now))
    process(settings, store)
    gone = store.suppression(digest.address)
    assert gone is not None and gone.reason == "bounced"
    assert gone.detail.startswith("3 soft bounces since") and "552 5.2.2" in gone.detail
    # processed messages were moved to cur/ as seen; nothing is left to process
    assert all("S" in m.get_flags() and m.get_subdir() == "cur" for m in box)
    assert process(settings, store).counts == {}


def test_mailto_unsubscribes_of_both_token_forms_are_applied(tmp_path: Path) -> None:
    """ATTACK6 #11: the mailto unsubscribe of a digest sent by a run names the reader by
    its opaque id (``r.<id>.<tag>``: the subject no longer shows the address in base64, and
    the mailbox that receives it learns nothing); one from a digest sent before carries the
    address form, and is applied as it always was. A token signed with another key, or for
    a reader id nobody has, suppresses nobody."""
    from paperpost.feedback import reader_ids

    store = Store(f"sqlite:///{tmp_path / 'pp.db'}")
    ids = reader_ids(store, ["ann@example.org", "cy@example.org"])
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    subjects = {
        "ann@example.org": make_token(KEY, ids["ann@example.org"]),
        "bob@example.org": make_address_token(KEY, "Bob@Example.org"),
        "cy@example.org": make_token("another-key-0123456789abcdef", ids["cy@example.org"]),
        "dee@example.org": make_token(KEY, "no-such-reader00"),
    }
    for address, token in subjects.items():
        box.add(
            f"From: <{address}>\r\nTo: unsubscribe@example.org\r\nSubject: unsubscribe "
            f"{token}\r\nMessage-ID: <{uuid.uuid4().hex}@mail.example>\r\n\r\nunsubscribe\r\n"
        )
    assert "YW5u" not in subjects["ann@example.org"]  # base64 of "ann": not in the new form
    summary = process(settings_for(bounce_mailbox=str(tmp_path / "bounces")), store)
    assert summary.counts.get("unsubscribe") == 2
    assert store.suppressed(list(subjects)) == {
        "ann@example.org": "unsubscribed",
        "bob@example.org": "unsubscribed",
    }


def test_copies_of_one_digests_soft_bounce_count_once(tmp_path: Path, sent) -> None:
    """ATTACK4 #6: three DSN copies (different Message-IDs) for one digest are one bounce."""
    store, digests = sent
    digest = digests["postfix_mailbox_full"]
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    for _ in range(3):
        box.add(fill("postfix_mailbox_full", digest))
    settings = settings_for(bounce_mailbox=str(tmp_path / "bounces"))
    assert process(settings, store).counts == {"soft": 3}
    assert store.suppression(digest.address) is None


BLOCKLISTED = "550 5.7.1 Service unavailable; sender IP reputation (blocklisted)"


def test_a_dsn_refusing_the_sender_by_policy_is_not_the_readers_bounce(
    tmp_path: Path, sent, monkeypatch
) -> None:
    """ATTACK4 #6: 5.7.x in a DSN is the sending side's problem, as at send time."""
    store, digests = sent
    digest = digests["postfix_mailbox_full"]
    more = later_digests(store, tmp_path, digest.address, 3)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    for each in more:
        raw = fill("postfix_mailbox_full", each).decode()
        raw = raw.replace("Status: 5.2.2", "Status: 5.7.1")
        raw = raw.replace("552 5.2.2 <" + each.address + ">: Mailbox full", BLOCKLISTED)
        assert parse_report(raw.encode(), KEY).kind == "policy"
        box.add(raw.encode())
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", store.url)
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", KEY)
    monkeypatch.setenv("PAPERPOST_SENDER", SENDER)
    result = CliRunner().invoke(app, ["bounces", "--mailbox", str(tmp_path / "bounces")])
    assert result.exit_code == 0, result.output
    assert "3 policy" in result.stdout and "refuses our mail by policy" in result.stdout
    assert store.suppression(digest.address) is None


def test_mbox_processed_twice_changes_nothing(tmp_path: Path, any_db_url: str, rendered) -> None:
    """Also on PostgreSQL: the duplicate report rolls back its whole transaction."""
    store, digests = Store(any_db_url), dict(rendered)
    send_batch(store, Outbox(tmp_path / "outbox"), list(digests.values()), run_id=1)
    box = mailbox.mbox(tmp_path / "bounces.mbox")
    for sample in ("postfix_user_unknown", "yahoo_arf_abuse", "gmail_delayed"):
        box.add(fill(sample, digests[sample]))
    box.flush()
    settings = settings_for(bounce_mailbox=str(tmp_path / "bounces.mbox"))
    first = process(settings, store)
    assert first.counts == {"hard": 1, "complaint": 1, "delayed": 1}
    before = everyone(store, digests)
    assert process(settings, store).counts == {"already processed": 3}
    assert everyone(store, digests) == before


def test_bounces_command(tmp_path: Path, sent, monkeypatch) -> None:
    store, digests = sent
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(fill("gmail_address_not_found", digests["gmail_address_not_found"]))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", store.url)
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", KEY)
    monkeypatch.setenv("PAPERPOST_SENDER", SENDER)
    result = CliRunner().invoke(app, ["bounces", "--mailbox", str(tmp_path / "bounces"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {"hard": 1}
    assert data["suppressed"][0]["address"] == digests["gmail_address_not_found"].address
    missing = CliRunner().invoke(app, ["bounces", "--mailbox", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no mailbox at" in missing.stderr


SAMPLE_BYTES = [(SAMPLES / f"{name}.eml").read_bytes() for name in sorted(EXPECTED)]


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=3000),
        st.tuples(st.sampled_from(SAMPLE_BYTES), st.integers(0, 4000), st.binary(max_size=40)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
        ),
        st.tuples(st.sampled_from(SAMPLE_BYTES), st.integers(0, 4000)).map(lambda t: t[0][: t[1]]),
    )
)
def test_parse_report_never_fails_on_hostile_input(raw: bytes) -> None:
    """Whatever arrives at the bounce address (garbage, truncated or spliced reports)."""
    report = parse_report(raw, KEY)
    assert report.kind in {
        "hard",
        "soft",
        "policy",
        "complaint",
        "unsubscribe",
        "delayed",
        "ignored",
    }
    assert report.digest_hash is None  # nothing unsigned is ever taken for a digest


def test_a_report_dated_past_year_9999_in_utc_is_still_applied(tmp_path: Path, sent) -> None:
    """Anyone can mail the bounce address. Before: `Date: Fri, 31 Dec 9999 23:59:59 -1200`
    (year 10000 in UTC) raised OverflowError, which ended `paperpost bounces` and every run
    that reads bounces, with the message never flagged, so every later run too."""
    store, digests = sent
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    far = fill("postfix_user_unknown", digests["postfix_user_unknown"]).replace(
        b"Date: ", b"Date: Fri, 31 Dec 9999 23:59:59 -1200\r\nX-Was-Date: ", 1
    )
    box.add(far)
    box.add(fill("yahoo_arf_abuse", digests["yahoo_arf_abuse"]))
    summary = process(settings_for(bounce_mailbox=str(tmp_path / "bounces")), store)
    assert summary.counts == {"hard": 1, "complaint": 1} and summary.unreadable == []
    assert {a: r for a, r, _ in summary.suppressed} == {
        digests["postfix_user_unknown"].address: "bounced",
        digests["yahoo_arf_abuse"].address: "complained",
    }


def nested_parts(levels: int) -> bytes:
    """A message of ``levels`` multiparts, each inside the last."""
    head = b"From: mailer-daemon@relay.example\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % n for n in reversed(range(levels)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closing


def test_a_message_the_mail_parser_cannot_read_is_left_and_the_others_applied(
    tmp_path: Path, sent, monkeypatch
) -> None:
    """1,000 nested multiparts: Python's email parser recurses once per level and raises
    RecursionError. Before: `paperpost bounces` and every run with a bounce mailbox ended
    with it, every time (the message was never flagged; a Maildir's messages were parsed
    just to read their flags). Now it is reported and left as it is."""
    store, digests = sent
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(nested_parts(1000))
    box.add(fill("postfix_user_unknown", digests["postfix_user_unknown"]))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", store.url)
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", KEY)
    monkeypatch.setenv("PAPERPOST_SENDER", SENDER)
    result = CliRunner().invoke(app, ["bounces", "--mailbox", str(tmp_path / "bounces")])
    assert result.exit_code == 0, result.output
    assert "processed: 1 hard, 1 unreadable" in result.stdout
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("unreadable ")]
    assert "RecursionError: maximum recursion depth exceeded" in line
    assert line.endswith("(left in the mailbox)")
    assert store.suppression(digests["postfix_user_unknown"].address).reason == "bounced"
    (left,) = (tmp_path / "bounces" / "new").iterdir()  # for a person to look at, unchanged
    assert left.read_bytes() == nested_parts(1000)
    assert len(list((tmp_path / "bounces" / "cur").iterdir())) == 1
    again = process(settings_for(bounce_mailbox=str(tmp_path / "bounces")), store)
    assert again.counts == {"unreadable": 1}


HEADER_VALUES = st.text(max_size=60) | st.sampled_from(
    [
        "Fri, 31 Dec 9999 23:59:59 -1200",
        "Mon, 1 Jan 0001 00:00:00 +1400",
        "Thu, 1 Jan 1970 00:00:00 +9999",
        "=?utf-8?b?/w==?=",
    ]
)


_LEDGERS: dict[str, Store] = {}  # per sample: a ledger that sent its digest (made once)


@hsettings(
    max_examples=300 if FULL_TESTS else 60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    sample=st.sampled_from(sorted(EXPECTED)),
    header=st.sampled_from(["Date", "Message-ID", "Subject", "From", "To"]),
    value=HEADER_VALUES,
    splice=st.tuples(st.integers(0, 4000), st.binary(max_size=30)),
)
def test_any_report_about_a_sent_digest_is_applied_without_an_error(
    tmp_path_factory: pytest.TempPathFactory,
    rendered: dict[str, Outgoing],
    sample: str,
    header: str,
    value: str,
    splice: tuple[int, bytes],
) -> None:
    """The whole path a report takes (parse, trace, record, suppress) on a real SQLite
    ledger, for a real report with a hostile header value or spliced bytes."""
    from paperpost.bounces import BounceSummary, apply

    if sample not in _LEDGERS:
        folder = tmp_path_factory.mktemp("any")
        _LEDGERS[sample] = Store(f"sqlite:///{folder / 'pp.db'}")
        send_batch(_LEDGERS[sample], Outbox(folder / "outbox"), [rendered[sample]], run_id=1)
    store = _LEDGERS[sample]
    raw = fill(sample, rendered[sample])
    raw = raw.replace(f"{header}: ".encode(), f"{header}: {value}\r\nX-Was: ".encode(), 1)
    at, extra = splice
    summary = BounceSummary()
    apply(settings_for(), store, raw[:at] + extra + raw[at:], summary)
    assert sum(summary.counts.values()) == 1


def test_a_run_reads_bounces_before_sending(tmp_path: Path) -> None:
    """The flow's bounce stage runs before rank/send: a reader whose digest hard-bounced
    since the last run gets nothing this run."""
    import shutil

    from conftest import EXAMPLES
    from paperpost.pipeline import run_plain

    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    (tmp_path / "subs.yaml").write_text(
        "- email: gone@one.example\n  tags: [agents, reasoning]\n  min_score: 0.1\n"
        "- email: stays@two.example\n  tags: [agents, reasoning]\n  min_score: 0.1\n"
    )
    settings = settings_for(
        sources=[str(tmp_path / "dumps")],
        subscribers_dir=tmp_path / "subs.yaml",
        database_url=f"sqlite:///{tmp_path / 'pp.db'}",
        outbox_dir=tmp_path / "outbox",
        bounce_mailbox=str(tmp_path / "bounces"),
    )
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    first = run_plain(settings, date(2026, 11, 25))
    assert first.digests_sent == 2
    assert first.bounces == {"counts": {}, "suppressed": [], "unreadable": []}
    sent_digest = next(
        m for m in mailbox.Maildir(tmp_path / "outbox", create=False) if "gone@" in m["To"]
    )
    digest = Outgoing("gone@one.example", "", 0, 0, sent_digest["Message-ID"], "", 0, b"")
    box.add(fill("postfix_user_unknown", digest))
    shutil.copy(EXAMPLES / "newer" / "2026-11-24.txt", tmp_path / "dumps")
    second = run_plain(settings, date(2026, 11, 26))
    assert second.bounces["counts"] == {"hard": 1}
    assert second.skip_reasons == {"suppressed (bounced)": 1}
    assert [d["address"] for d in second.deliveries] == ["stays@two.example"]


def test_a_reports_escape_codes_and_length_never_reach_the_terminal(
    tmp_path: Path, sent, monkeypatch
) -> None:
    """Before: a Diagnostic-Code with ESC [2J (clear the screen) and ESC ] 0;title BEL was
    stored as the suppression reason and printed raw by `paperpost bounces` (and in --json)."""
    store, digests = sent
    hostile = b"Diagnostic-Code: smtp; 550 5.1.1 \x1b[2J\x1b]0;pwned\x07 gone" + b" Y" * 2000
    raw = fill("postfix_user_unknown", digests["postfix_user_unknown"])
    raw = raw.replace(b"Diagnostic-Code: smtp; 550 5.1.1", hostile, 1)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    box.add(raw)
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", store.url)
    monkeypatch.setenv("PAPERPOST_SECRET_KEY", KEY)
    monkeypatch.setenv("PAPERPOST_SENDER", SENDER)
    shown = CliRunner().invoke(app, ["bounces", "--mailbox", str(tmp_path / "bounces")])
    assert shown.exit_code == 0 and "suppressed" in shown.stdout
    assert not any(c in shown.output for c in "\x1b\x07") and len(shown.output) < 1000
    (_, (reason, detail)) = everyone(store, digests).popitem()
    assert reason == "bounced" and detail.startswith("bounce: 550 5.1.1 gone Y Y")
    assert "\x1b" not in detail and len(detail) <= 320


POSTFIX_BOUNDARY = "4Fb2x31Qvzz9sV4.1764054131/relay.example.org"


def unsigned(digest: Outgoing, message_ids: list[str]) -> bytes:
    """A Postfix hard bounce about ``digest`` without a VERP address (forwarded, rewritten,
    or forged by anyone: the bounce address takes mail from anyone), naming these
    Message-IDs, one original-headers part each."""
    raw = fill("postfix_user_unknown", digest).decode()
    raw = raw.replace(envelope_sender(settings_for(), digest.message_id), "bounces@example.org")
    raw = raw.replace("20261125070211.4Fb2x31Qvzz9sV4", uuid.uuid4().hex)  # each report its own
    report = raw.partition(f"--{POSTFIX_BOUNDARY}\r\nContent-Description: Undelivered")[0]
    headers = "".join(
        f"--{POSTFIX_BOUNDARY}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {SENDER}\r\nTo: {digest.address}\r\nMessage-ID: {each}\r\n\r\n"
        for each in message_ids
    )
    return (report + headers + f"--{POSTFIX_BOUNDARY}--\r\n").encode()


def unkeyed_message_id(address: str, digest: str) -> str:
    """A digest's Message-ID as paperpost made it until session 6: anyone can compute it
    from the address and the digest window (which every reader's vote links show)."""
    return f"<{hashlib.sha256(f'{address}|{digest}'.encode()).hexdigest()[:32]}@example.org>"


def test_a_report_naming_a_message_id_anyone_can_compute_suppresses_nobody(
    tmp_path: Path, sent
) -> None:
    """ATTACK6 #1: without VERP, a report was trusted on the digest's Message-ID and the same
    recipient; the Message-ID was sha256(address|digest window), so anyone could forge a hard
    bounce or a complaint for any address, or put thousands of guesses in one report."""
    store, digests = sent
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    settings = settings_for(bounce_mailbox=str(tmp_path / "bounces"))
    victim, guessed, forwarded = (
        digests[name] for name in ("postfix_user_unknown", "exim_dsn_user_unknown", "gmail_delayed")
    )
    # the forger's Message-ID: computed from the address and the window, as before
    box.add(unsigned(victim, [unkeyed_message_id(victim.address, victim.digest)]))
    # thousands of guesses in one report, the real Message-ID among them
    guesses = [unkeyed_message_id(guessed.address, f"{lo}-{lo + 1}") for lo in range(2000)]
    box.add(unsigned(guessed, [*guesses[:1000], guessed.message_id, *guesses[1000:]]))
    assert process(settings, store).counts == {"unmatched": 2}
    assert everyone(store, digests) == {}

    # a report forwarded without its VERP address, naming the real (keyed) Message-ID only,
    # still counts: nobody without PAPERPOST_SECRET_KEY could have written that Message-ID
    box.add(unsigned(forwarded, [forwarded.message_id]))
    assert process(settings, store).counts == {"hard": 1}
    assert everyone(store, digests).keys() == {forwarded.address}
    # ... which is why a bounce mailbox needs a key of one's own, like SMTP delivery
    with pytest.raises(ConfigError, match=r"a bounce mailbox .* needs a key of your own"):
        require_own_key(Settings(bounce_mailbox=str(tmp_path / "bounces")))


def test_digests_sent_with_the_old_message_id_are_matched_by_verp_only(
    tmp_path: Path, sent
) -> None:
    """ATTACK6 #1: ledger rows written before the Message-ID was keyed keep working through
    their signed VERP address, and a report naming their (computable) Message-ID without VERP
    is no way in. A digest sent again (retry) carries and records the keyed Message-ID."""
    store, digests = sent
    old, retried = digests["postfix_user_unknown"], digests["yahoo_arf_abuse"]
    old_id = unkeyed_message_id(old.address, old.digest)
    with store.engine.begin() as conn:  # as the previous paperpost left the ledger
        conn.execute(
            deliveries.update().where(deliveries.c.address == old.address).values(message_id=old_id)
        )
        conn.execute(
            deliveries.update()
            .where(deliveries.c.address == retried.address)
            .values(status="retry", message_id=unkeyed_message_id(retried.address, "0-1"))
        )
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    settings = settings_for(bounce_mailbox=str(tmp_path / "bounces"))
    box.add(unsigned(old, [old_id]))
    assert process(settings, store).counts == {"unmatched": 1}
    box.add(fill("postfix_user_unknown", replace(old, message_id=old_id)))  # VERP of old_id
    assert process(settings, store).counts == {"hard": 1}
    assert everyone(store, digests).keys() == {old.address}

    send_batch(store, Outbox(tmp_path / "outbox"), [retried], run_id=2)
    with store.engine.connect() as conn:
        row = conn.execute(deliveries.select().where(deliveries.c.address == retried.address)).one()
    assert (row.status, row.message_id) == ("sent", retried.message_id)
    box.add(unsigned(retried, [retried.message_id]))
    assert process(settings, store).counts == {"hard": 1}


@pytest.mark.parametrize("mode", ["lines", "line"])
def test_an_imap_server_that_never_ends_its_answer_is_cut_and_the_run_sends(
    tmp_path: Path, mode: str
) -> None:
    """ATTACK6 #2: a server answering SELECT with an untagged line every 5 s (or one line a
    few bytes at a time), each within imaplib's 30 s read timeout, hung `paperpost run`
    forever before anyone was sent a digest, and the hung run kept the lease. Now one command
    gets 6 read timeouts in total; the mailbox is "not read" and the run sends."""
    import shutil
    import threading

    from conftest import EXAMPLES
    from paperpost.pipeline import run_plain

    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    (tmp_path / "subs.yaml").write_text("- email: ann@one.example\n  tags: [agents]\n")
    tarpit = imap_server.HostileImap(tmp_path, mode).start()
    settings = hostile_imap_settings(
        tarpit,
        sources=[str(tmp_path / "dumps")],
        subscribers_dir=tmp_path / "subs.yaml",
        database_url=f"sqlite:///{tmp_path / 'pp.db'}",
        outbox_dir=tmp_path / "outbox",
        imap_timeout=0.3,  # a piece every 50 ms never trips it
    )
    done: dict[str, object] = {}
    run = threading.Thread(
        target=lambda: done.update(summary=run_plain(settings, date(2026, 11, 25))), daemon=True
    )
    try:
        run.start()
        run.join(60)  # a bound for the failure only: the deadline is 1.8 s
        assert not run.is_alive(), "the run hung on the IMAP server"
    finally:
        tarpit.stop()
    summary = done["summary"]
    assert tarpit.commands[-1] == b"SELECT"
    assert summary.digests_sent == 1  # type: ignore[attr-defined]
    assert summary.bounces == {  # type: ignore[attr-defined]
        "error": f"reading the bounce mailbox at the IMAP server 127.0.0.1:{tarpit.port} failed: "
        "the server did not finish its answer to SELECT within 1.8 s (it kept sending lines "
        "without ending it); nothing was lost (its reports are read next run); check that "
        "server (PAPERPOST_IMAP_HOST)"
    }


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("bad", "SELECT command error: BAD [b'[SERVERBUG] mailbox index corrupted']"),
        ("drop", "command: SELECT => socket error: EOF"),
        ("flood", "the server's answer to SELECT went on past 64 MB (no report is that large)"),
    ],
)
def test_an_imap_server_that_misbehaves_is_one_line_not_a_crash(
    tmp_path: Path, mode: str, said: str
) -> None:
    """ATTACK6 #14: SELECT answered BAD, or the connection dropped after LOGIN, raised out of
    `bounces.process` (only BounceError was caught): every run crashed (exit 1, a 110-line
    traceback) before sending. And (#15's addendum) a flood of untagged lines grew memory
    without bound: imaplib keeps every line of an answer."""
    from paperpost.bounces import BounceError

    server = imap_server.HostileImap(tmp_path, mode).start()
    settings = hostile_imap_settings(server)
    try:
        with pytest.raises(BounceError) as raised:
            process(settings, Store(f"sqlite:///{tmp_path / 'pp.db'}"))
    finally:
        server.stop()
    assert str(raised.value) == (
        f"reading the bounce mailbox at the IMAP server 127.0.0.1:{server.port} failed: {said}; "
        "nothing was lost (its reports are read next run); check that server "
        "(PAPERPOST_IMAP_HOST)"
    )


def many_parts(parts: int, levels: int) -> bytes:
    """``parts`` flat MIME parts, then ``levels`` nested ones (ATTACK6 #21's shape)."""
    flat = b"".join(b"--F\r\nContent-Type: text/plain\r\n\r\nx%d\r\n" % i for i in range(parts))
    head = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=F\r\n"
    message_id = b"Message-ID: <%s@x.example>\r\n" % uuid.uuid4().hex.encode()
    return head + message_id + b"\r\n" + flat + b"--F\r\n" + nested_parts(levels) + b"--F--\r\n"


def test_a_message_of_more_mime_parts_than_any_report_is_not_parsed(tmp_path: Path, sent) -> None:
    """ATTACK6 #21: a 6 MB message of 150,000 flat MIME parts and a 1,200-level nest was
    parsed whole (three times) before the parser's RecursionError, and again in every run
    (it is left for a person): five of them added 50 s to each run before anything was sent.
    Now a message with more lines that may start a part than any report is not parsed."""
    from paperpost.bounces import MIME_LINES

    store, digests = sent
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    hostile = many_parts(MIME_LINES, 1200)
    box.add(hostile)
    box.add(fill("postfix_user_unknown", digests["postfix_user_unknown"]))
    settings = settings_for(bounce_mailbox=str(tmp_path / "bounces"))
    summary = process(settings, store)
    assert summary.counts == {"hard": 1, "unreadable": 1}
    (line,) = summary.unreadable
    lines = hostile.count(b"\n--")
    assert line.endswith(
        f"ValueError: has {lines:,} lines that may start a MIME part, more than any bounce or "
        f"complaint ({MIME_LINES:,}); not parsed (left in the mailbox)"
    )
    (left,) = (tmp_path / "bounces" / "new").iterdir()
    assert left.read_bytes() == hostile
