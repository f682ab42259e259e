from __future__ import annotations

import contextlib
import email
import mailbox
import os
import socket
import threading
import time
from datetime import date
from email import policy
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from paperpost.delivery import DeliveryError, Outbox, Smtp, resolve_interrupted, send_batch
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Edition, Outgoing, Reader, Renderer
from paperpost.settings import Settings
from paperpost.store import Store
from smtp_server import PASSWORD, USER, SmtpServer

EDITION = Edition("paperpost <digest@example.org>", "k", None, date(2026, 11, 25), 3)


@pytest.fixture(scope="module")
def messages() -> list[Outgoing]:
    papers = [Paper(f"Agents for task {i}", "LLM agents use tools.") for i in range(3)]
    items = rank(papers, Profile((Interest("agents"),)))
    renderer = Renderer()
    return [
        renderer.render(Reader(f"r{i}@example.org", None, ("agents",)), items, EDITION, 0, 3)
        for i in range(4)
    ]


@pytest.fixture
def smtp(tmp_path: Path):
    server = SmtpServer(tmp_path).start()
    yield server
    server.stop()


def smtp_settings(server: SmtpServer, password: str = PASSWORD) -> Settings:
    return Settings(
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_security="starttls",
        smtp_username=USER,
        smtp_password=SecretStr(password),
        smtp_ca_file=server.cert,
        smtp_timeout=5,
    )


def ids(store: Store, address: str) -> list[tuple[str, str]]:
    return store.delivery_status(address)


def test_outbox_is_a_maildir_written_once_per_digest(
    tmp_path: Path, any_db_url: str, messages
) -> None:
    store, outbox = Store(any_db_url), Outbox(tmp_path / "outbox")
    first = send_batch(store, outbox, messages, run_id=1)
    again = send_batch(store, outbox, messages, run_id=2)
    assert [o.status for o in first] == ["sent"] * 4
    assert [o.status for o in again] == ["already-sent"] * 4
    assert list((tmp_path / "outbox" / "tmp").iterdir()) == []
    maildir = mailbox.Maildir(tmp_path / "outbox", create=False)
    assert sorted(m["Message-ID"] for m in maildir) == sorted(m.message_id for m in messages)
    assert store.cursors(["r0@example.org"])["r0@example.org"][0] == 3


def test_a_killed_outbox_write_is_never_a_message(tmp_path: Path, messages) -> None:
    outbox = Outbox(tmp_path / "outbox")
    a = messages[0]
    # what a SIGKILL half-way through a write leaves: a partial file under tmp/
    dead = tmp_path / "outbox" / "tmp" / "r0@example.org_0-3_x.eml.123.abc"
    dead.write_bytes(a.data[:100])
    assert len(mailbox.Maildir(tmp_path / "outbox", create=False)) == 0
    os.utime(dead, (time.time() - 40 * 3600,) * 2)  # 40 hours later it is cleaned up
    Outbox(tmp_path / "outbox")
    assert not dead.exists()
    assert outbox.delivered(a.address, a.digest) is False
    outbox.send(a)
    assert outbox.delivered(a.address, a.digest) is True
    # a mail client that read it moves it to cur/ with flags; still delivered, not rewritten
    new = outbox.path(a.address, a.digest)
    new.rename(tmp_path / "outbox" / "cur" / f"{new.name}:2,S")
    outbox.send(a)
    assert outbox.delivered(a.address, a.digest) is True
    assert len(mailbox.Maildir(tmp_path / "outbox", create=False)) == 1


def test_a_digest_read_in_cur_is_dropped_from_its_group_not_written_again(
    tmp_path: Path, messages
) -> None:
    """A digest a mail client has read (moved to cur/, Dovecot's name: size, then flags)
    is not looked for in cur/ per digest: the group's flush reads cur/ once, after every
    digest of the group was looked for in new/, and drops its tmp/ copy there."""
    folder = tmp_path / "outbox"
    outbox = Outbox(folder)
    a, b = messages[0], messages[1]
    outbox.send(a)
    first = outbox.path(a.address, a.digest)
    first.rename(folder / "cur" / f"{first.name},S={len(a.data)}:2,S")
    outbox.stage(a)
    outbox.stage(b)
    outbox.flush()
    assert [p.name for p in (folder / "new").iterdir()] == [outbox.path(b.address, b.digest).name]
    assert list((folder / "tmp").iterdir()) == []
    assert outbox.delivered(a.address, a.digest) and outbox.delivered(b.address, b.digest)
    assert len(mailbox.Maildir(folder, create=False)) == 2


def test_starttls_auth_delivers_to_each_recipient(smtp, db_url: str, messages) -> None:
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(Store(db_url), transport, messages, run_id=1)
    transport.close()
    assert [o.status for o in outcomes] == ["sent"] * 4
    assert [rcpt for rcpt, _ in smtp.handler.messages] == [[m.address] for m in messages]
    got = email.message_from_bytes(smtp.handler.messages[0][1], policy=policy.default)
    assert got["Message-ID"] == messages[0].message_id


def test_451_is_retried_then_accepted(smtp, db_url: str, messages) -> None:
    smtp.script.data_failures = ["451 greylisted, try later"]
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(Store(db_url), transport, messages[:2], run_id=1, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert len(smtp.handler.messages) == 2


def test_550_fails_one_suppresses_it_and_sends_the_others(smtp, any_db_url, messages) -> None:
    smtp.script.reject["r1@example.org"] = "550 5.1.1 no such user"
    store = Store(any_db_url)
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, messages, run_id=1, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["sent", "failed", "sent", "sent"]
    assert "550 5.1.1 no such user" in outcomes[1].detail
    assert store.suppressed(["r1@example.org"]) == {"r1@example.org": "bounced"}
    assert store.suppression("r1@example.org").detail == "550 5.1.1 no such user"
    assert len(smtp.handler.messages) == 3  # tried once, never in a loop


def test_connection_lost_before_end_of_data_is_resent(smtp, db_url: str, messages) -> None:
    smtp.script.drop_next_rcpt = 1
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(Store(db_url), transport, messages[:2], run_id=1, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert [r for r, _ in smtp.handler.messages] == [[messages[0].address], [messages[1].address]]


def test_connection_lost_after_end_of_data_is_ambiguous(smtp, tmp_path, messages) -> None:
    """The server got the dot and never answered: reported, not resent (by default)."""
    smtp.script.drop_next_data = 1
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, messages[:2], run_id=1, backoff=0.01)
    assert [o.status for o in outcomes] == ["ambiguous", "sent"]
    assert "end of data was sent but no reply" in outcomes[0].detail
    assert ids(store, messages[0].address) == [(messages[0].digest, "ambiguous")]
    # with PAPERPOST_RESEND_AMBIGUOUS the same case is resent on a new connection
    smtp.script.drop_next_data = 1
    again = Store(f"sqlite:///{tmp_path / 'b.db'}")
    outcomes = send_batch(
        again, transport, messages[:1], run_id=1, backoff=0.01, resend_ambiguous=True
    )
    transport.close()
    assert [o.status for o in outcomes] == ["sent"]


def test_server_down_at_first_is_waited_out(tmp_path: Path, db_url: str, messages) -> None:
    server = SmtpServer(tmp_path)
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        transport = Smtp(smtp_settings(server))
        outcomes = send_batch(
            Store(db_url), transport, messages[:1], run_id=1, attempts=6, backoff=0.2
        )
        transport.close()
    finally:
        starter.join()
        server.stop()
    assert [o.status for o in outcomes] == ["sent"]


def test_wrong_password_stops_the_batch_without_suppressing(smtp, db_url: str, messages) -> None:
    store = Store(db_url)
    assert store.start_run() == 1
    transport = Smtp(smtp_settings(smtp, password="wrong-password-123"))
    outcomes = send_batch(store, transport, messages, run_id=1, backoff=0.01)
    assert [o.status for o in outcomes] == ["retry"] * 4
    assert "login refused" in outcomes[0].detail
    assert "PAPERPOST_SMTP_PASSWORD" in store.pause_reason(1)
    assert all("wrong-password-123" not in o.detail for o in outcomes)
    assert store.suppressed([m.address for m in messages]) == {}
    # the next run, with the right password, sends them all
    fixed = Smtp(smtp_settings(smtp))
    assert store.start_run() == 2
    assert [o.status for o in send_batch(store, fixed, messages, run_id=2)] == ["sent"] * 4
    fixed.close()


def test_secrets_stay_out_of_reprs() -> None:
    settings = Settings(smtp_password=SecretStr("hunter2-secret"))
    assert "hunter2-secret" not in repr(settings) and "hunter2-secret" not in str(settings)


def test_interrupted_send_is_ambiguous_for_smtp_and_confirmed_for_outbox(
    tmp_path: Path, db_url: str, messages
) -> None:
    store = Store(db_url)
    a, b = messages[0], messages[1]
    for m in (a, b):  # a crash between "sending" and the transport's answer
        assert store.claim(m.address, m.digest, m.lo, m.hi, m.message_id, 1).proceed
        store.mark_data_sent(m.address, m.digest)
    outbox = Outbox(tmp_path / "outbox")
    outbox.send(a)  # a reached the outbox before the crash, b did not
    settled = {o.address: o.status for o in resolve_interrupted(store, outbox, resend=False)}
    assert settled == {a.address: "sent"}
    assert ids(store, b.address) == [(b.digest, "released")]
    assert [o.status for o in send_batch(store, outbox, [a, b], run_id=2)] == [
        "already-sent",
        "sent",
    ]

    smtp_store = Store(f"sqlite:///{tmp_path / 'other.db'}")
    for m in (a, b):
        smtp_store.claim(m.address, m.digest, m.lo, m.hi, m.message_id, 1)
    smtp_store.mark_data_sent(a.address, a.digest)  # a's end of data went out, b's never did

    outcome = resolve_interrupted(smtp_store, Smtp(Settings()), resend=False)
    assert [(o.address, o.status) for o in outcome] == [(a.address, "ambiguous")]
    assert smtp_store.cursors([a.address])[a.address][0] == a.hi  # not resent next time
    assert ids(smtp_store, b.address) == [(b.digest, "released")]  # b is simply sent again


def test_pool_sends_concurrently_under_a_rate_cap(smtp, db_url: str, messages) -> None:
    import time

    from paperpost.delivery import SmtpPool

    settings = smtp_settings(smtp).model_copy(
        update={"smtp_connections": 3, "smtp_rate_limit": 20.0}
    )
    pool = SmtpPool(settings)
    many = list(messages)
    start = time.perf_counter()
    outcomes = send_batch(Store(db_url), pool, many, run_id=1, workers=3)
    elapsed = time.perf_counter() - start
    pool.close()
    assert [o.status for o in outcomes] == ["sent"] * len(many)
    assert sorted(r[0] for r, _ in smtp.handler.messages) == sorted(m.address for m in many)
    # a bucket of 1 token at 20/s: four messages need at least three refills (0.15 s)
    assert elapsed >= 0.14


def test_high_error_rate_pauses_the_run(smtp, tmp_path: Path, db_url: str) -> None:
    papers = [Paper(f"Agents {i}", "LLM agents use tools.") for i in range(1)]
    items = rank(papers, Profile((Interest("agents"),)))
    renderer = Renderer()
    batch = [
        renderer.render(Reader(f"u{i}@example.org", None, ("agents",)), items, EDITION, 0, 1)
        for i in range(40)
    ]
    for i in range(25):
        smtp.script.reject[f"u{i}@example.org"] = "550 mailbox unavailable"
    store = Store(db_url)
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, max_error_rate=0.5)
    transport.close()
    statuses = [o.status for o in outcomes]
    # the first 20 are tried before judging the rate; the run paused before this server
    # accepted anything, so their refusals are not held against the readers
    assert statuses == ["retry"] * 40
    assert all("not suppressed" in o.detail for o in outcomes[:20])
    assert store.suppressions([m.address for m in batch]) == {}
    assert "paused: 20 of 20 deliveries failed (100%" in store.pause_reason(run)
    assert "not attempted: paused" in outcomes[-1].detail


def test_implicit_tls_on_connect(tmp_path: Path, db_url: str, messages) -> None:
    import ssl

    from aiosmtpd.controller import Controller

    from smtp_server import Handler, Script, free_port, self_signed

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = Handler(Script())
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), ssl_context=context)
    controller.start()
    try:
        settings = Settings(
            delivery="smtp",
            smtp_host="127.0.0.1",
            smtp_port=controller.port,
            smtp_security="tls",
            smtp_ca_file=cert,
        )
        transport = Smtp(settings)
        outcomes = send_batch(Store(db_url), transport, messages[:2], run_id=1)
        transport.close()
        untrusted = Smtp(settings.model_copy(update={"smtp_ca_file": None}))
        refused = send_batch(
            Store(f"sqlite:///{tmp_path / 'b.db'}"), untrusted, messages[:1], run_id=1, backoff=0.01
        )
    finally:
        controller.stop()
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert len(handler.messages) == 2
    # certificate verification is on: a self-signed server is not trusted by default
    assert refused[0].status == "retry" and "CERTIFICATE_VERIFY_FAILED" in refused[0].detail


def test_421_reconnects_and_retries(smtp, db_url: str, messages) -> None:
    smtp.script.data_failures = ["421 4.3.2 service shutting down, reconnect"]
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(Store(db_url), transport, messages[:1], run_id=1, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["sent"]
    assert len(smtp.handler.messages) == 1
    first, second = smtp.handler.sessions  # the retry came on a new connection
    assert first != second


def digests_for(addresses: list[str]) -> list[Outgoing]:
    papers = [Paper("Agents for tasks", "LLM agents use tools.")]
    items = rank(papers, Profile((Interest("agents"),)))
    renderer = Renderer()
    return [renderer.render(Reader(a, None, ("agents",)), items, EDITION, 0, 1) for a in addresses]


# (where the server says it, its reply) -> what paperpost does with it
SCOPES = [
    ("rcpt", "550 5.1.1 <a@one.example>: Recipient address rejected: User unknown", "suppress"),
    ("rcpt", "550 5.2.1 The email account that you tried to reach is disabled", "suppress"),
    ("rcpt", "556 5.1.10 Recipient address a@one.example has null MX", "suppress"),
    ("rcpt", "550 Requested action not taken: mailbox unavailable", "suppress"),
    ("rcpt", "552 5.2.2 The email account that you tried to reach is over quota", "fail"),
    ("data", "554 5.6.0 Message content rejected", "fail"),
    # a policy or size refusal of one reader while the server accepts the others (ATTACK5 #1)
    ("rcpt", "554 5.7.1 <a@one.example>: Relay access denied", "fail"),
    ("rcpt", "554 5.7.1 <a@one.example>: Recipient address rejected: Access denied", "fail"),
    ("rcpt", "550 5.7.26 Unauthenticated email is not accepted (DMARC)", "fail"),
    ("data", "552 5.3.4 Message size exceeds fixed limit", "fail"),
    ("rcpt", "530 5.7.0 Authentication required", "pause"),
    ("data", "500 5.5.1 Command unrecognized", "pause"),
    ("mail", "553 5.1.8 Sender address rejected: Domain not found", "pause"),
    ("mail", "550 Sender rejected", "pause"),
]


@pytest.mark.parametrize(("where", "reply", "expected"), SCOPES)
def test_failure_scope_by_enhanced_status_code(
    smtp, tmp_path: Path, where: str, reply: str, expected: str
) -> None:
    batch = digests_for(["a@one.example", "b@two.example", "c@three.example"])
    if where == "rcpt":
        smtp.script.reject["a@one.example"] = reply
    elif where == "data":
        smtp.script.data_failures = [reply]
    else:
        smtp.script.mail_reply = reply
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    suppressed = store.suppressions([m.address for m in batch])
    if expected == "suppress":
        assert [o.status for o in outcomes] == ["failed", "sent", "sent"]
        assert suppressed["a@one.example"].detail == reply  # the server's reply, recorded
        assert set(suppressed) == {"a@one.example"}
    elif expected == "fail":
        assert [o.status for o in outcomes] == ["failed", "sent", "sent"]
        assert "not suppressed" in outcomes[0].detail and suppressed == {}
    else:
        assert suppressed == {}
        assert [o.status for o in outcomes] == ["retry"] * 3
        reason = store.pause_reason(run)
        assert reason.startswith("paused at ") and reply in reason and "check" in reason
        assert all(d == "retry" for _, d in ids(store, "a@one.example"))


def test_same_refusal_for_every_domain_pauses_and_suppresses_nobody(smtp, tmp_path) -> None:
    """A relay that says "user unknown" to everyone is misconfigured, not 3 bad mailboxes."""
    smtp.script.reject_all = "550 5.1.1 <x>: Recipient address rejected: User unknown in local"
    batch = digests_for([f"r{i}@d{i}.example" for i in range(6)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["retry"] * 6
    assert store.suppressions([m.address for m in batch]) == {}
    assert "3 different recipient domains" in store.pause_reason(run)
    # the next run, against a fixed server, delivers to all six
    smtp.script.reject_all = None
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    assert {o.status for o in send_batch(store, transport, batch, run_id=run)} == {"sent"}
    transport.close()


def release_after_pause(store: Store, run: int, gate: threading.Event) -> None:
    deadline = time.monotonic() + 30
    while not store.pause_reason(run) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()


def test_a_refusal_read_after_the_pause_suppresses_nobody(smtp, tmp_path) -> None:
    """ATTACK4 #1: 4 connections, 4 domains, the server refuses everyone; the 4th refusal
    (slow to come) is read after the 3rd domain paused the run: it is the server's too."""
    from paperpost.delivery import SmtpPool

    smtp.script.reject_all = "550 5.1.1 <x>: Recipient address rejected: User unknown"
    late = smtp.script.rcpt_gate["d@four.org"] = threading.Event()
    batch = digests_for(["d@four.org", "a@one.org", "b@two.org", "c@three.org"])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    threading.Thread(target=release_after_pause, args=(store, run, late), daemon=True).start()
    settings = smtp_settings(smtp).model_copy(update={"smtp_connections": 4})
    pool = SmtpPool(settings)
    outcomes = send_batch(store, pool, batch, run_id=run, backoff=0.01, workers=4)
    pool.close()
    assert store.suppressions([m.address for m in batch]) == {}
    assert [o.status for o in outcomes] == ["retry"] * 4
    assert all("suppressed" not in o.detail or "not suppressed" in o.detail for o in outcomes)
    assert all(status == "retry" for m in batch for _, status in ids(store, m.address))
    assert "3 different recipient domains" in store.pause_reason(run)


def test_a_refusal_held_when_another_batch_paused_suppresses_nobody(smtp, tmp_path) -> None:
    """A batch with one refused reader ends after another batch of the same run paused it."""
    smtp.script.reject_all = "550 5.1.1 <x>: Recipient address rejected: User unknown"
    smtp.script.rcpt_gate["e@five.org"] = gate = threading.Event()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    late: list = []

    def other_batch() -> None:
        transport = Smtp(smtp_settings(smtp))
        late.extend(send_batch(store, transport, digests_for(["e@five.org"]), run, backoff=0.01))
        transport.close()

    thread = threading.Thread(target=other_batch)
    thread.start()
    deadline = time.monotonic() + 30
    while not ids(store, "e@five.org") and time.monotonic() < deadline:
        time.sleep(0.01)  # until the other batch has claimed its digest (before the pause)
    transport = Smtp(smtp_settings(smtp))
    send_batch(store, transport, digests_for([f"r{i}@d{i}.example" for i in range(3)]), run)
    transport.close()
    gate.set()  # the other batch's refusal comes after the pause
    thread.join()
    assert "3 different recipient domains" in store.pause_reason(run)
    assert store.suppressions(["e@five.org"]) == {}
    assert [o.status for o in late] == ["retry"]
    assert ids(store, "e@five.org")[0][1] == "retry"


def test_two_replies_to_one_end_of_data_are_reported_as_a_desync(smtp, messages) -> None:
    """ATTACK4 #13: a server answering one DATA twice puts every later reply one behind;
    that is said as it is (not "temporary: 250 OK") and a new connection fixes it."""
    smtp.script.double_reply_next_data = 1
    transport = Smtp(smtp_settings(smtp))
    first, second = messages[0], messages[1]
    transport.send(first)
    with pytest.raises(DeliveryError) as caught:
        transport.send(second)
    assert caught.value.kind == "temporary"
    assert "out of step" in caught.value.detail and "new one" in caught.value.detail
    transport.send(second)  # the retry, on a new connection
    transport.close()
    assert [r for r, _ in smtp.handler.messages] == [[first.address], [second.address]]


def test_same_unclassified_refusal_for_every_domain_pauses_and_fails_nobody(smtp, tmp_path) -> None:
    """ "554 Transaction failed" to everyone: no digest is marked failed for good."""
    smtp.script.data_failures = ["554 Transaction failed"] * 6
    batch = digests_for([f"r{i}@d{i}.example" for i in range(4)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["retry"] * 4
    assert all(status == "retry" for m in batch for _, status in ids(store, m.address))
    assert "3 different recipient domains" in store.pause_reason(run)


POLICY_REFUSALS = [
    ("rcpt", "554 5.7.1 <{a}>: Recipient address rejected: Access denied"),
    ("data", "552 5.3.4 Message size exceeds fixed maximum message size"),
]


@pytest.mark.parametrize(("where", "reply"), POLICY_REFUSALS)
def test_one_readers_policy_refusal_first_does_not_stop_the_others(
    smtp, tmp_path, where: str, reply: str
) -> None:
    """ATTACK5 #1: the first reader tried is refused by policy (5.7.1 naming them) or size
    (5.3.4, their digest only); one connection. Before, the run paused at them, every run,
    and nobody was ever served. Now that digest fails (not suppressed) and the rest go."""
    batch = digests_for(["aaa@aaa.example"] + [f"r{i}@d{i}.example" for i in range(4)])
    if where == "rcpt":
        smtp.script.reject["aaa@aaa.example"] = reply.format(a="aaa@aaa.example")
    else:
        smtp.script.data_failures = [reply]  # the first DATA: aaa's digest
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["failed"] + ["sent"] * 4
    assert "not suppressed" in outcomes[0].detail
    assert store.pause_reason(run) is None
    assert store.suppressions([m.address for m in batch]) == {}
    assert len(smtp.handler.messages) == 4


@pytest.mark.parametrize("readers", [1, 2, 5])
def test_a_policy_refusal_of_everyone_still_pauses_and_suppresses_nobody(
    smtp, tmp_path, readers: int
) -> None:
    """A relay that refuses everyone by policy is ours to fix: with 3 domains refused the same
    way, or a batch where nothing was accepted (1 or 2 readers), the run pauses (exit 4),
    nobody is suppressed and every digest is retried next run."""
    smtp.script.reject_all = "554 5.7.1 Relay access denied"
    batch = digests_for([f"r{i}@d{i}.example" for i in range(readers)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["retry"] * readers
    assert store.suppressions([m.address for m in batch]) == {}
    assert all(status == "retry" for m in batch for _, status in ids(store, m.address))
    reason = store.pause_reason(run)
    assert "Relay access denied" in reason
    if readers >= 3:
        assert "3 different recipient domains" in reason
        assert all(o.detail.startswith("not attempted") for o in outcomes[3:])


def test_a_policy_refusal_after_a_success_fails_that_digest_only(smtp, tmp_path) -> None:
    """Once this server accepted a digest, a 5.7.1 for one recipient is about that recipient
    (their domain's policy), not about us: it must not pause the run for everyone after it."""
    batch = digests_for(["ok@zero.example", "blocked@one.example", "c@two.example"])
    smtp.script.reject["blocked@one.example"] = "550 5.7.1 Recipient address rejected: policy"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["sent", "failed", "sent"]
    assert "not suppressed" in outcomes[1].detail
    assert store.pause_reason(run) is None and store.suppressions(["blocked@one.example"]) == {}


def test_bad_mailboxes_after_a_success_are_suppressed_at_once(smtp, tmp_path) -> None:
    batch = digests_for(["ok@zero.example"] + [f"r{i}@d{i}.example" for i in range(4)])
    for m in batch[1:]:
        smtp.script.reject[m.address] = "550 5.1.1 User unknown"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["sent"] + ["failed"] * 4
    assert len(store.suppressions([m.address for m in batch])) == 4
    assert store.pause_reason(run) is None


def test_envelope_sender_is_a_signed_verp_address(smtp, db_url: str, messages) -> None:
    from paperpost.verp import read_verp

    settings = smtp_settings(smtp).model_copy(
        update={"secret_key": SecretStr("k" * 32), "sender": "paperpost <digest@example.org>"}
    )
    transport = Smtp(settings)
    send_batch(Store(db_url), transport, messages[:2], run_id=1)
    transport.close()
    first, second = smtp.handler.senders
    assert first != second and first.startswith("bounces+") and first.endswith("@example.org")
    assert "r0" not in first  # nothing readable in it
    digest_hash = read_verp("k" * 32, first)
    assert messages[0].message_id.startswith(f"<{digest_hash}@")
    assert read_verp("another-key", first) is None
    assert read_verp("k" * 32, first.replace(first[9], "0" if first[9] != "0" else "1")) is None


@given(
    text=st.text(max_size=300)
    | st.from_regex(r".{0,40}\+[0-9a-fA-F]{32}-[0-9a-fA-F]{20}@.{0,40}", fullmatch=True),
    digest_hash=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
)
def test_only_a_signed_verp_address_names_a_digest(text: str, digest_hash: str) -> None:
    """Bounce reports are anyone's mail: a VERP address counts only with our signature."""
    from paperpost.verp import _signature, read_verp

    key = "k" * 32
    assert read_verp(key, text) is None
    signed = f"bounces+{digest_hash}-{_signature(key, digest_hash)}@example.org"
    assert read_verp(key, f"{text} <{signed.upper()}> {text}") == digest_hash
    assert read_verp("another-key" * 3, signed) is None


def test_outbox_group_is_delivered_only_when_flushed(tmp_path: Path, messages) -> None:
    outbox = Outbox(tmp_path / "outbox")
    for m in messages:
        outbox.stage(m)
    assert not any(outbox.delivered(m.address, m.digest) for m in messages)
    assert len(mailbox.Maildir(tmp_path / "outbox", create=False)) == 0
    outbox.flush()
    assert all(outbox.delivered(m.address, m.digest) for m in messages)
    assert list((tmp_path / "outbox" / "tmp").iterdir()) == []

    broken = Outbox(tmp_path / "broken")
    broken.stage(messages[0])
    (tmp_path / "broken" / "new").rmdir()  # new/ replaced by a file: the renames fail
    (tmp_path / "broken" / "new").write_text("not a folder")
    with pytest.raises(DeliveryError) as failure:
        broken.flush()
    assert failure.value.kind == "temporary" and "cannot write" in failure.value.detail
    assert list((tmp_path / "broken" / "tmp").iterdir()) == []  # nothing half-written left


_KILLED_SENDER = """
import sys
from datetime import date
from pathlib import Path
from paperpost.delivery import Outbox, send_batch
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Edition, Reader, Renderer
from paperpost.store import Store

folder, url, run_id = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
papers = [Paper(f"Agents for task {i}", "LLM agents use tools.") for i in range(3)]
items = rank(papers, Profile((Interest("agents"),)))
edition = Edition("paperpost <digest@example.org>", "k", None, date(2026, 11, 25), 3)
renderer = Renderer()
messages = [
    renderer.render(Reader(f"r{i}@example.org", None, ("agents",)), items, edition, 0, 3)
    for i in range(250)
]
store = Store(url)
print("ready", flush=True)
send_batch(store, Outbox(folder), messages, run_id=run_id)
print("done", flush=True)
"""


def test_outbox_groups_survive_sigkill_each_digest_once(tmp_path: Path) -> None:
    kill_after = 130  # two groups flushed, the third being written
    import os
    import signal
    import subprocess
    import sys
    import time

    folder, url = tmp_path / "outbox", f"sqlite:///{tmp_path / 'pp.db'}"
    script = tmp_path / "sender.py"
    script.write_text(_KILLED_SENDER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(folder), url, "1"], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if (folder / "new").is_dir() and len(list((folder / "new").iterdir())) >= kill_after:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    store, outbox = Store(url), Outbox(folder)
    resolve_interrupted(store, outbox, resend=False)
    rerun = subprocess.run(
        [sys.executable, str(script), str(folder), url, "2"], capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    delivered = [m["To"] for m in mailbox.Maildir(folder, create=False)]
    assert len(delivered) == 250 and len(set(delivered)) == 250  # every digest, once
    assert all(ids(store, f"r{i}@example.org") == [("0-3", "sent")] for i in range(250))
    cursors = store.cursors([f"r{i}@example.org" for i in range(250)])
    assert {cursor for cursor, _ in cursors.values()} == {3} and len(cursors) == 250


def test_an_address_smtplib_cannot_write_leaves_the_connection_clean(smtp, tmp_path) -> None:
    """smtplib refuses a non-ASCII address after MAIL FROM was accepted; the same connection
    must not carry that open transaction into the next digest ("503 nested MAIL")."""
    from dataclasses import replace

    first, second = digests_for(["a@one.example", "b@two.example"])
    odd = replace(first, address="ünï@one.example")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))  # one connection, reused
    outcomes = send_batch(store, transport, [odd, second], run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["failed", "sent"]
    assert store.pause_reason(run) is None


def test_a_failure_between_body_and_dot_never_leaks_into_the_next_message(smtp) -> None:
    """If recording end-of-data fails after the body went out, the half-sent message must
    be abandoned: the next digest must not be appended to its body on the same connection."""
    first, second = digests_for(["a@one.example", "b@two.example"])

    def ledger_down() -> None:
        raise RuntimeError("database unreachable")

    transport = Smtp(smtp_settings(smtp))
    with pytest.raises(RuntimeError):
        transport.send(first, ledger_down)
    transport.send(second)
    transport.close()
    assert len(smtp.handler.messages) == 1
    rcpts, data = smtp.handler.messages[0]
    assert rcpts == ["b@two.example"] and data.count(b"Message-ID:") == 1


class TricklingSmtp:
    """A real SMTP server on 127.0.0.1 that answers well until ``where`` (EHLO, RCPT or the
    final dot), then sends one more "250-still thinking" line every 10 ms, never a last line
    (a wedged relay or a tarpit); with ``one_line``, one line a byte every 10 ms, never its
    end; with ``flood``, 8,000-byte "250-" lines as fast as they
    are read (``sent`` counts the bytes)."""

    def __init__(self, where: str, flood: bool = False, one_line: bool = False) -> None:
        self.where, self.flood, self.one_line, self.sent = where, flood, one_line, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"220 trickle ESMTP\r\n")
                in_data = False
                for line in lines:
                    if in_data:
                        if line != b".\r\n":
                            continue
                        in_data, command = False, "DOT"
                    else:
                        command = line[:4].upper().decode()
                    if command.rstrip() == self.where and self.flood:
                        block = (b"250-" + b"X" * 8000 + b"\r\n") * 16
                        while not self.stop.is_set():
                            conn.sendall(block)
                            self.sent += len(block)
                    if command.rstrip() == self.where:
                        piece = b"x" if self.one_line else b"250-still thinking\r\n"
                        if self.one_line:
                            conn.sendall(b"250-still thinking")
                        while not self.stop.wait(0.01):
                            conn.sendall(piece)
                        return
                    if command == "DATA":
                        in_data = True
                        conn.sendall(b"354 go ahead\r\n")
                    elif command.startswith("EHLO"):
                        conn.sendall(b"250-trickle\r\n250 8BITMIME\r\n")
                    else:
                        conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize(
    ("where", "status"),
    [("EHLO", "retry"), ("DOT", "ambiguous")],  # RCPT: as EHLO
)
def test_a_reply_that_never_ends_is_cut_at_its_deadline(tmp_path, where: str, status) -> None:
    """ATTACK5 #6: a server that answered EHLO (or RCPT, or the final dot) with an endless
    multi-line reply, one line a second, held `paperpost run` forever: each line came within
    the read timeout. Now one reply gets REPLY_READS read timeouts in total; an unfinished
    reply is a temporary failure before the dot and ambiguous after it, and the run goes on."""
    from paperpost.delivery import REPLY_READS

    server = TricklingSmtp(where)
    settings = Settings(
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_security="none",
        smtp_timeout=0.5,  # a line every 10 ms never trips it, even under load
    )
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    transport = Smtp(settings)
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.extend(
            send_batch(store, transport, digests_for(["a@one.example"]), 1, attempts=1)
        ),
        daemon=True,
    )
    worker.start()
    worker.join(30)  # the deadline is 6 x 0.5 s; before, this never returned
    server.close()
    assert not worker.is_alive(), "still reading the endless reply"
    (result,) = outcome
    assert result.status == status
    if status == "retry":
        assert f"did not end within {REPLY_READS * 0.5:g} s" in result.detail


def test_a_reply_line_sent_a_byte_at_a_time_is_cut_at_its_deadline(tmp_path) -> None:
    """Found while fixing ATTACK6 #2: the round-4 deadline was checked before each line of a
    reply, so one line sent a byte at a time (each within the read timeout) ran on until
    smtplib's 8,192-byte line limit: 82 s here, 68 hours at a byte every 30 s."""
    server = TricklingSmtp("EHLO", one_line=True)
    settings = Settings(
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_security="none",
        smtp_timeout=0.5,
    )
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.extend(
            send_batch(store, Smtp(settings), digests_for(["a@one.example"]), 1, attempts=1)
        ),
        daemon=True,
    )
    worker.start()
    worker.join(30)  # the deadline is 6 x 0.5 s
    server.close()
    assert not worker.is_alive(), "still reading the endless line"
    (result,) = outcome
    assert result.status == "retry"
    assert "the server's reply did not end within 3 s" in result.detail


def test_a_reply_streamed_fast_is_cut_at_its_size_not_read_into_memory(tmp_path) -> None:
    """ATTACK6 #15: an EHLO reply of endless 8,000-byte "250-" lines, sent as fast as read,
    grew the run by ~160 MB/s until the reply's deadline (180 s by default: ~28 GB, the run
    OOM-killed): smtplib keeps every line of a reply. Now a reply is cut at REPLY_BYTES."""
    from paperpost.delivery import REPLY_BYTES

    server = TricklingSmtp("EHLO", flood=True)
    settings = Settings(
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=server.port,
        smtp_security="none",
        smtp_timeout=0.5,  # the deadline (3 s) would end it too, after hundreds of MB
    )
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        (result,) = send_batch(store, Smtp(settings), digests_for(["a@one.example"]), 1, attempts=1)
    finally:
        server.close()
    assert result.status == "retry"
    assert result.detail == (
        f"temporary: cannot connect to 127.0.0.1:{server.port}: Connection unexpectedly closed: "
        f"the server's reply went on past {REPLY_BYTES >> 10} KB; will retry next run"
    )
    assert server.sent < 16 << 20  # what the client read, and the sockets' buffers


class RefusingSmtp:
    """A plain SMTP server on 127.0.0.1 answering each command from ``replies`` by its first
    word (EHLO, HELO, MAIL, ...), else "503 5.5.1 Error: send HELO/EHLO first"."""

    def __init__(self, replies: dict[str, bytes]) -> None:
        self.replies = replies
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn, conn.makefile("rb") as lines:
                    conn.sendall(b"220 relay.example ESMTP\r\n")
                    for line in lines:
                        word = line.split(b" ")[0].strip().upper().decode("ascii", "replace")
                        conn.sendall(
                            self.replies.get(word, b"503 5.5.1 Error: send HELO/EHLO first")
                            + b"\r\n"
                        )

    def close(self) -> None:
        self.sock.close()


def send_one(tmp_path, port: int, security: str = "none"):
    settings = Settings(
        delivery="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_security=security
    )
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    (result,) = send_batch(store, Smtp(settings), digests_for(["a@one.example"]), 1, attempts=1)
    return result


def test_a_refused_greeting_is_named_not_taken_for_a_refused_sender(tmp_path) -> None:
    """ATTACK6 #17: a relay refusing EHLO and HELO (`550 5.7.1 Helo command rejected: Host not
    found`) was reported as "the server refuses the sender address; check PAPERPOST_SENDER":
    the refusal was ignored and MAIL then got "503 send HELO/EHLO first"."""
    refusal = b"550 5.7.1 <client>: Helo command rejected: Host not found"
    server = RefusingSmtp({"EHLO": refusal, "HELO": refusal, "QUIT": b"221 bye"})
    try:
        result = send_one(tmp_path, server.port)
    finally:
        server.close()
    assert result.status == "retry"  # the run pauses: nobody is failed or suppressed
    assert result.detail.startswith("run paused: the server refuses this host's greeting (EHLO ")
    assert result.detail.endswith(
        "): 550 5.7.1 <client>: Helo command rejected: Host not found; will retry next run"
    )


def test_tls_to_a_plain_smtp_port_says_which_setting_to_change(tmp_path) -> None:
    """ATTACK6 #19: PAPERPOST_SMTP_SECURITY=tls against a plain port was "cannot connect …
    WRONG_VERSION_NUMBER", retried every run as an outage, with advice to check the host."""
    server = RefusingSmtp({})
    try:
        result = send_one(tmp_path, server.port, security="tls")
    finally:
        server.close()
    assert result.status == "retry"
    assert result.detail.startswith(
        f"run paused: 127.0.0.1:{server.port} speaks plain SMTP, not TLS, on this port ([SSL: "
        "WRONG_VERSION_NUMBER]"
    )


# --- per receiving domain: policy and rate-limit refusals defer the domain, not the run ----

DOMAIN_REFUSAL_REPLIES = [
    ("rcpt", "554 5.7.1 Service unavailable; client host [192.0.2.1] blocked using zen.spamhaus"),
    ("data", "552 5.3.4 Message size exceeds fixed maximum message size"),
    (
        "rcpt",
        "421 4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address",
    ),
    ("rcpt", "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)"),
]


def mixed_batch(blocked: int, others: int) -> list[Outgoing]:
    """A reader at an accepting domain first, then ``blocked`` readers at blocked.example
    with one of ``others`` readers at other domains after every third."""
    addresses = ["first@ok.example"]
    for i in range(blocked):
        addresses.append(f"b{i}@blocked.example")
        if i % 3 == 2 and i // 3 < others:
            addresses.append(f"o{i}@other{i}.example")
    return digests_for(addresses)


def send_one_run(smtp, store: Store, batch: list[Outgoing], run: int, connections: int = 1):
    from paperpost.delivery import SmtpPool

    settings = smtp_settings(smtp).model_copy(update={"smtp_connections": connections})
    pool = SmtpPool(settings)
    try:
        return send_batch(store, pool, batch, run_id=run, backoff=0.01, workers=connections)
    finally:
        pool.close()


@pytest.mark.parametrize(("where", "reply"), DOMAIN_REFUSAL_REPLIES)
def test_a_domain_refusing_us_is_deferred_after_three_in_a_row(smtp, tmp_path, where, reply):
    """30 readers at one domain that refuses us by policy, size or rate limit: the run tries
    3 of them (a rate limit is not retried within the run), then sends that domain nothing
    more; its readers are deferred (ledger `retry`, nobody failed or suppressed) while the
    other domains are served and the run is not paused. The next run, with the domain
    accepting again, delivers each of them exactly once."""
    batch = mixed_batch(30, 10)
    if where == "rcpt":
        smtp.script.domain_rcpt["blocked.example"] = reply
    else:
        smtp.script.domain_data["blocked.example"] = reply
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    outcomes = send_one_run(smtp, store, batch, run)
    assert smtp.handler.tried("blocked.example") == 3
    blocked = [o for o in outcomes if o.address.endswith("@blocked.example")]
    served = [o for o in outcomes if not o.address.endswith("@blocked.example")]
    assert len(blocked) == 30 and {o.status for o in blocked} == {"deferred"}
    assert {o.status for o in served} == {"sent"} and len(served) == 11
    reason = blocked[-1].detail
    assert "blocked.example refused 3 messages in a row" in reason and reply in reason
    assert store.pause_reason(run) is None
    assert store.suppressions([m.address for m in batch]) == {}
    assert {s for m in batch[1:] if "@blocked" in m.address for _, s in ids(store, m.address)} == {
        "retry"
    }
    assert store.domain_states(run)["blocked.example"][1] == reason
    # the next run: the domain accepts again; every deferred reader gets the digest once
    smtp.script.domain_rcpt.clear()
    smtp.script.domain_data.clear()
    again = send_one_run(smtp, store, batch, store.start_run())
    assert sorted(o.status for o in again) == ["already-sent"] * 11 + ["sent"] * 30
    delivered = [rcpt[0] for rcpt, _ in smtp.handler.messages]
    assert sorted(delivered) == sorted(m.address for m in batch)


def test_a_domain_refusing_before_anything_was_accepted_is_deferred_not_the_run(smtp, tmp_path):
    """The refusing domain's readers come first: 3 refusals from one domain before any
    acceptance are that domain's (one domain, not the server's 3), so it is deferred and the
    readers at other domains after it are served; the run is not paused."""
    smtp.script.domain_rcpt["blocked.example"] = "550 5.7.1 Message rejected due to local policy"
    addresses = [f"b{i}@blocked.example" for i in range(6)]
    addresses += [f"o{i}@other{i}.example" for i in range(3)]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    outcomes = send_one_run(smtp, store, digests_for(addresses), run, connections=2)
    assert [o.status for o in outcomes] == ["deferred"] * 6 + ["sent"] * 3
    assert 3 <= smtp.handler.tried("blocked.example") <= 4  # + one in flight on the other
    assert store.pause_reason(run) is None
    assert store.suppressions(addresses) == {}


def test_refusals_with_acceptances_between_stay_each_readers_own(smtp, tmp_path) -> None:
    """A domain refusing some of its readers by policy and accepting the others between them
    is judging those readers: each refusal is that reader's failure (not suppressed), nothing
    is deferred, every reader of the domain is tried."""
    addresses = [f"r{i}@mixed.example" for i in range(8)]
    for address in addresses[::2]:  # refused, accepted, refused, accepted, ...
        smtp.script.reject[address] = f"554 5.7.1 <{address}>: Recipient address rejected: denied"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    outcomes = send_one_run(smtp, store, digests_for(["first@ok.example", *addresses]), run)
    assert [o.status for o in outcomes] == ["sent"] + ["failed", "sent"] * 4
    assert smtp.handler.tried("mixed.example") == 8
    assert store.domain_states(run)["mixed.example"] == (0, None)  # the last was accepted
    assert store.pause_reason(run) is None and store.suppressions(addresses) == {}


def test_a_greylisting_domain_is_retried_not_deferred(smtp, tmp_path) -> None:
    """Greylisting ("451 4.7.1 ... try again later" for each new sender and recipient) asks
    for each message again: it is retried as before and never defers the domain."""
    smtp.script.greylist["grey.example"] = "451 4.7.1 Greylisting in action, please come back later"
    addresses = [f"g{i}@grey.example" for i in range(5)]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    outcomes = send_one_run(smtp, store, digests_for(["first@ok.example", *addresses]), run)
    assert [o.status for o in outcomes] == ["sent"] * 6
    assert smtp.handler.tried("grey.example") == 10  # each refused once, then accepted
    assert store.domain_states(run) == {}


def test_a_domain_refused_in_small_pieces_is_counted_across_the_runs_batches(smtp, tmp_path):
    """A big list spreads one domain's readers over many batches (and processes): the refusals
    in a row are counted for the run, so 2 readers per batch still stop at 3 tries, and a
    later batch of the same run does not try the domain at all."""
    smtp.script.domain_rcpt["blocked.example"] = "550 5.7.1 Message rejected due to local policy"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    results = []
    for n in range(5):
        readers = [f"ok{n}@ok{n}.example", f"a{n}@blocked.example", f"b{n}@blocked.example"]
        batch = digests_for(readers)
        results += send_one_run(smtp, store, batch, run)
    assert smtp.handler.tried("blocked.example") == 3
    blocked = [o for o in results if "@blocked" in o.address]
    # the first batch's two refusals were each one reader's as far as it knew (settled
    # before the third came); the third, in the next batch, deferred the domain
    assert [o.status for o in blocked] == ["failed", "failed"] + ["deferred"] * 8
    assert {o.status for o in results if "@ok" in o.address} == {"sent"}
    assert store.pause_reason(run) is None


def test_rate_limits_from_every_domain_pause_the_run(smtp, tmp_path) -> None:
    """The same rate limit for 3 domains before anything is accepted is the server limiting
    us: the run pauses (exit 4) as for any server-wide failure; nothing retried in the run."""
    smtp.script.reject_all = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"
    batch = digests_for([f"r{i}@d{i}.example" for i in range(6)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    outcomes = send_one_run(smtp, store, batch, run)
    assert [o.status for o in outcomes] == ["retry"] * 6
    assert len(smtp.handler.rcpts) == 3
    assert "accepted none" in store.pause_reason(run)


def test_a_rate_limit_at_mail_from_pauses_the_run(smtp, tmp_path) -> None:
    """A relay limiting our account ("451 4.7.1 ... sending rate limit exceeded" to MAIL FROM,
    before any recipient) limits every domain: the run pauses with what to do."""
    smtp.script.mail_reply = "451 4.7.1 Sending rate limit exceeded, try again later"
    batch = digests_for(["ok@one.example", "b@two.example"])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    outcomes = send_one_run(smtp, store, batch, run)
    assert [o.status for o in outcomes] == ["retry", "retry"]
    reason = store.pause_reason(run)
    assert "rate limit exceeded" in reason and "PAPERPOST_SMTP_RATE_LIMIT" in reason


@pytest.mark.parametrize(
    ("reply", "throttle"),
    [
        ("421 4.7.28 unusual rate of unsolicited mail", True),
        ("421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred due to volume", True),
        ("451 4.7.650 The mail server has been temporarily rate limited", True),
        ("450 4.7.1 Client host rejected: too many connections", True),
        ("452 4.5.3 Too many recipients", True),
        ("451 4.7.500 Server busy. Please try again later", True),
        ("451 4.7.1 Greylisted, please try again later", False),
        ("450 4.2.0 Recipient address rejected: Greylisted", False),
        ("450 4.2.1 The user is receiving mail at a rate that prevents additional messages", False),
        ("452 4.2.2 Mailbox full", False),
        ("451 4.3.0 Temporary local problem", False),
        ("554 5.7.1 rate limited", False),  # permanent: a policy refusal, not a 4xx
    ],
)
def test_which_replies_say_we_send_too_much(reply: str, throttle: bool) -> None:
    from paperpost.delivery import throttles

    code, _, text = reply.partition(" ")
    assert throttles(int(code), text) is throttle


def test_a_full_mailbox_at_send_time_is_a_soft_bounce_counted_across_runs(smtp, tmp_path):
    """`552 5.2.2 Mailbox full` at RCPT fails that digest (as before) and counts as a soft
    bounce, like the same reply in a DSN: the third digest refused within
    PAPERPOST_SOFT_BOUNCE_DAYS suppresses the address. Before, a mailbox full for months was
    tried with every digest and failed every run (exit 6), never suppressed."""
    papers = [Paper("Agents for tasks", "LLM agents use tools.")]
    items = rank(papers, Profile((Interest("agents"),)))
    renderer = Renderer()

    def digests(day: int) -> list[Outgoing]:  # a new window each run: a new digest
        return [
            renderer.render(Reader(a, None, ("agents",)), items, EDITION, day, day + 1)
            for a in ("ok@one.example", "full@two.example")
        ]

    smtp.script.reject["full@two.example"] = "552 5.2.2 <full@two.example>: Mailbox full"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    details = []
    for day in range(3):
        outcomes = send_one_run(smtp, store, digests(day), store.start_run())
        assert [o.status for o in outcomes] == ["sent", "failed"]
        details.append(outcomes[1].detail)
        assert bool(store.suppressions(["full@two.example"])) is (day == 2)
    assert all("a soft bounce, not suppressed" in d for d in details[:2])
    assert "address suppressed after 3 soft bounces" in details[2]
    found = store.suppression("full@two.example")
    assert found.reason == "bounced" and "3 soft bounces" in found.detail
    assert "Mailbox full" in found.detail


@pytest.mark.parametrize("readers", [2, 6])
def test_one_domain_refused_as_unknown_with_nothing_accepted_pauses_and_suppresses_nobody(
    smtp, tmp_path, readers: int
) -> None:
    """ATTACK6 #4: a relay whose recipient map is broken says "user unknown" to every reader
    of a one-domain list (a team's deployment). Three distinct domains never come, so every
    reader was suppressed as a bad mailbox although nothing was accepted. Now: nothing
    accepted and the same reply for most readers is the server's; pause, suppress nobody."""
    smtp.script.reject_all = (
        "550 5.1.1 <x>: Recipient address rejected: User unknown in local recipient table"
    )
    batch = digests_for([f"r{i}@corp.example.com" for i in range(readers)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["retry"] * readers
    assert store.suppressions([m.address for m in batch]) == {}
    reason = store.pause_reason(run)
    assert f"for {readers} readers and accepted no digest" in reason and "User unknown" in reason
    smtp.script.reject_all = None  # the relay fixed: the next run delivers to everyone
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    assert {o.status for o in send_batch(store, transport, batch, run_id=run)} == {"sent"}
    transport.close()


def test_one_unknown_mailbox_among_readers_not_yet_accepted_is_still_suppressed(
    smtp, tmp_path
) -> None:
    """The rule above needs most refusals to agree: one bad mailbox and a different refusal
    (a full mailbox) in a batch with nothing accepted are two readers' own failures."""
    smtp.script.reject["gone@corp.example.com"] = "550 5.1.1 <gone@corp.example.com>: unknown"
    smtp.script.reject["full@corp.example.com"] = "552 5.2.2 <full@corp.example.com>: over quota"
    batch = digests_for(["gone@corp.example.com", "full@corp.example.com"])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    transport = Smtp(smtp_settings(smtp))
    outcomes = send_batch(store, transport, batch, run_id=run, backoff=0.01)
    transport.close()
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert store.pause_reason(run) is None
    assert set(store.suppressions(["gone@corp.example.com"])) == {"gone@corp.example.com"}


def test_a_batch_of_one_refusing_domain_defers_it_when_the_run_was_accepted(smtp, tmp_path):
    """A batch holding only one domain's readers (one company's list file) that refuses us:
    nothing of that batch is accepted, which alone used to pause the whole run (exit 4).
    When the server accepted digests of the run's other batches, it is that domain: deferred,
    the run goes on. In a run where nothing was accepted anywhere it still pauses."""
    smtp.script.domain_rcpt["corp.example"] = "550 5.7.1 Message rejected due to local policy"
    corp = digests_for([f"c{i}@corp.example" for i in range(6)])
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run()
    first = send_one_run(smtp, store, digests_for(["a@one.example", "b@two.example"]), run)
    assert [o.status for o in first] == ["sent", "sent"]
    outcomes = send_one_run(smtp, store, corp, run)
    assert [o.status for o in outcomes] == ["deferred"] * 6
    assert smtp.handler.tried("corp.example") == 3
    assert store.pause_reason(run) is None
    later = send_one_run(smtp, store, digests_for(["c@three.example"]), run)
    assert [o.status for o in later] == ["sent"]
    # a run that has sent nothing: the one domain may be the server refusing everyone
    alone = Store(f"sqlite:///{tmp_path / 'alone.sqlite'}")
    run = alone.start_run()
    outcomes = send_one_run(smtp, alone, corp, run)
    assert [o.status for o in outcomes[:3]] == ["retry"] * 3  # refused, then the pause
    assert {o.status for o in outcomes[3:]} == {"deferred"}  # not tried: the domain first
    assert {s for m in corp for _, s in ids(alone, m.address)} == {"retry"}
    assert "local policy" in alone.pause_reason(run)
    assert alone.suppressions([m.address for m in corp]) == {}
