"""Bounces, complaints and mailto unsubscribes: read a mailbox, suppress who must not be mailed.

What arrives at the bounce address (``PAPERPOST_BOUNCE_MAILBOX``):

* **DSNs** (RFC 3464, ``multipart/report; report-type=delivery-status``) from relays and
  providers that accepted a digest and could not deliver it later; older Exim sends a
  plain-text notice with ``X-Failed-Recipients`` instead, which is read too.
* **Complaints** as ARF reports (RFC 5965, ``report-type=feedback-report``) from feedback
  loops (Yahoo, Microsoft JMRP, ...).
* **Unsubscribe requests** sent to the ``mailto:`` of ``List-Unsubscribe`` (subject
  ``unsubscribe <signed token>``).

A report counts only when it names a digest paperpost sent: through the signed VERP
envelope sender (:mod:`paperpost.verp`), or the digest's keyed Message-ID (an HMAC, see
:func:`paperpost.render.message_hash`; a report naming several Message-IDs names none)
together with the same recipient. A hard bounce (bad mailbox) and a complaint suppress the
address at once, a soft bounce (mailbox full, expired) after ``PAPERPOST_SOFT_BOUNCE_LIMIT`` digests
bounced within ``PAPERPOST_SOFT_BOUNCE_DAYS`` (copies of one digest's report count once). A
``5.7.x`` refusal (the receiving system refuses the sender: reputation, blocklist,
SPF/DKIM/DMARC) is recorded as ``policy`` and suppresses nobody. Every report is recorded
once by its Message-ID (processing it again changes nothing) and flagged in the mailbox: an IMAP
keyword ``$PaperpostDone`` plus ``\\Seen``; in a Maildir it moves to ``cur/`` as seen.

:func:`parse_report` is pure; :func:`process` does the I/O.
"""

from __future__ import annotations

import contextlib
import email
import email.utils
import hashlib
import hmac
import imaplib
import mailbox
import os
import re
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import InterfaceError, OperationalError

from paperpost.deadline import BoundedReader, Cuts
from paperpost.delivery import RECIPIENT_CODES, REPLY_READS, enhanced_code
from paperpost.feedback import address_of
from paperpost.render import message_hash
from paperpost.sanitize import reply_text
from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.unsubscribe import BadToken, read_token
from paperpost.verp import HASH, read_verp

DONE_KEYWORD = "$PaperpostDone"
COMPLAINT_TYPES = {"abuse", "fraud", "virus"}
# Diagnostics of a bad mailbox from servers that give no (or only a generic) enhanced code.
NO_SUCH_USER = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|"
    r"doesn't exist|address (couldn't be|could not be|not) found|recipient not found|"
    r"invalid (mailbox|recipient)|mailbox (is )?disabled|account (has been )?disabled",
    re.IGNORECASE,
)
STATUS_IN_TEXT = re.compile(r"\b([245])\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b")
# An SMTP reply quoted in a plain-text bounce: "550 No such user" or "550 5.1.1 <a@b>: ..."
SMTP_REPLY = re.compile(
    r"(?m)(?:^|[:\s])([45][0-5]\d)[ -]((?:[245]\.\d{1,3}\.\d{1,3} )?[A-Za-z<].*)$"
)
# r.<reader id>.<tag>, or <base64 address>.<tag> in digests sent before session 6
TOKEN_IN_SUBJECT = re.compile(
    r"\bunsubscribe\s+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)?)", re.IGNORECASE
)


class BounceError(Exception):
    """The mailbox could not be read (one line, with what to check)."""


@dataclass(frozen=True, slots=True)
class Report:
    """What one message in the bounce mailbox says."""

    kind: str  # hard, soft, policy, complaint, unsubscribe, delayed, ignored
    detail: str
    recipient: str | None = None  # the address the report names, when it names one
    digest_hash: str | None = None  # from a correctly signed VERP address
    message_id: str | None = None  # the original's Message-ID, if the report names one only
    token: str | None = None  # unsubscribe token

    def __post_init__(self) -> None:  # anyone can write a report: its words, made safe
        object.__setattr__(self, "detail", reply_text(self.detail))


# --- parsing (pure) ------------------------------------------------------------------


def _address(value: str | None) -> str | None:
    """``rfc822; user@host`` or ``<user@host>`` -> ``user@host`` (lower case)."""
    if not value:
        return None
    value = value.split(";", 1)[1] if ";" in value else value
    found = email.utils.parseaddr(value.strip())[1]
    return found.lower() if "@" in found else None


def _parts(message: Message, content_type: str) -> list[Message]:
    return [p for p in message.walk() if p.get_content_type() == content_type]


def _original_headers(message: Message) -> list[Message]:
    """The original message's headers, as included in a report."""
    found = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            text = part.get_payload(decode=True) or b""
            found.append(HeaderParser().parsestr(text.decode("utf-8", "replace")))
        elif kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                found.append(inner[0])
    return found


def _text(message: Message) -> str:
    """All text/plain parts, decoded."""
    chunks = []
    for part in _parts(message, "text/plain"):
        payload = part.get_payload(decode=True) or b""
        try:
            chunks.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        except LookupError:  # an unknown charset
            chunks.append(payload.decode("utf-8", "replace"))
    return "\n".join(chunks)


def _kind(status: str | None, diagnostic: str) -> str:
    """hard (bad mailbox), policy (5.7.x: the receiving system refuses *us*: reputation,
    blocklist, SPF/DKIM/DMARC; not the reader's doing, as at send time) or soft."""
    if _is_hard(status, diagnostic):
        return "hard"
    codes = {status, enhanced_code(diagnostic.split(None, 1)[-1] if diagnostic else "")}
    codes |= {m[1] for m in STATUS_IN_TEXT.finditer(diagnostic)}
    if any(c and c.startswith("5.7.") for c in codes):
        return "policy"
    return "soft"


def _is_hard(status: str | None, diagnostic: str) -> bool:
    codes = {status, enhanced_code(diagnostic.split(None, 1)[-1] if diagnostic else "")}
    codes |= {m[1] for m in STATUS_IN_TEXT.finditer(diagnostic)}
    if codes & RECIPIENT_CODES:
        return True
    if any(c and c.startswith("5.") and c not in {"5.0.0", "5.1.0"} for c in codes):
        return False  # a specific code that is not a bad mailbox: mailbox full, policy, ...
    return bool(status and status.startswith("5.")) and bool(NO_SUCH_USER.search(diagnostic))


def _fields(part: Message) -> Message:
    """The header-style fields of a report part (parsed or left as text by the parser)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload else Message()
    raw = part.get_payload(decode=True) or b""
    return HeaderParser().parsestr(raw.decode("utf-8", "replace"))


def _field(block: Message, name: str) -> str:
    return re.sub(r"\s+", " ", str(block.get(name, ""))).strip()


def _dsn(message: Message, status_part: Message) -> tuple[str, str, str | None]:
    """kind, detail and recipient from a message/delivery-status part."""
    blocks = status_part.get_payload()
    if not isinstance(blocks, list):  # some parsers leave it as text: parse the blocks
        raw = status_part.get_payload(decode=True) or b""
        text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
        blocks = [HeaderParser().parsestr(b) for b in re.split(r"\n\s*\n", text) if b.strip()]
    recipients = [b for b in blocks[1:] if b.get("Final-Recipient") or b.get("Action")]
    failed = [b for b in recipients if _field(b, "Action").lower() == "failed"]
    if not failed:
        delayed = any(_field(b, "Action").lower() == "delayed" for b in recipients)
        first = recipients[0] if recipients else Message()
        return (
            "delayed" if delayed else "ignored",
            f"DSN action {_field(first, 'Action') or 'unknown'}",
            _address(_field(first, "Final-Recipient")),
        )
    block = failed[0]
    status = enhanced_code(_field(block, "Status"))
    diagnostic = _field(block, "Diagnostic-Code")
    diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic else diagnostic
    recipient = _address(_field(block, "Final-Recipient")) or _address(
        _field(block, "Original-Recipient")
    )
    detail = diagnostic or f"status {status or 'unknown'}"
    return _kind(status, diagnostic), detail, recipient


def _plain_bounce(message: Message) -> tuple[str, str, str | None] | None:
    """A non-standard bounce (older Exim, some appliances): X-Failed-Recipients + text."""
    failed = _field(message, "X-Failed-Recipients")
    sender = _field(message, "From").lower()
    if not failed and "mailer-daemon" not in sender and "postmaster" not in sender:
        return None
    text = _text(message)
    codes = STATUS_IN_TEXT.search(text)
    reply = SMTP_REPLY.search(text)
    detail = f"{reply[1]} {reply[2]}".strip() if reply else "non-standard bounce"
    status = codes[2] if codes else None
    permanent = (status or "").startswith("5.") or "permanent error" in text.lower()
    if not permanent:
        return "soft", detail, _address(failed)
    status = status or "5.0.0"
    return _kind(status, text), detail, _address(failed)


# Lines that may start a MIME part: a report has a few parts (a DSN 2-4, Gmail's 6, with our
# digest returned in it a few more); anyone can mail the bounce address 150,000 of them, each
# a cost Python's mail parser pays in every run (the message is left for a person).
MIME_LINES = 5000


def read_message(raw: bytes) -> Message:
    """The one parse of a message from the bounce mailbox (ValueError when it has more
    possible MIME parts than any report: not parsed at all)."""
    lines = raw.count(b"\n--") + raw.startswith(b"--")
    if lines > MIME_LINES:
        raise ValueError(
            f"has {lines:,} lines that may start a MIME part, more than any bounce or "
            f"complaint ({MIME_LINES:,}); not parsed"
        )
    return email.message_from_bytes(raw)


def parse_report(raw: bytes | Message, key: str) -> Report:
    """Classify one message from the bounce mailbox (``key``: the secret key, for VERP)."""
    message = read_message(raw) if isinstance(raw, bytes) else raw
    originals = _original_headers(message)
    # a report is about one message: one naming several (a forger's thousands of guesses)
    # is matched only by its VERP address
    named = {str(h["Message-ID"]).strip() for h in originals if h.get("Message-ID")}
    message_id = named.pop() if len(named) == 1 else None
    digest_hash = read_verp(
        key, "\n".join(f"{k}: {v}" for m in (message, *originals) for k, v in m.items())
    )
    content_type = message.get_content_type()
    report_type = str(email.utils.collapse_rfc2231_value(message.get_param("report-type") or ""))

    feedback = _parts(message, "message/feedback-report")
    if feedback or (
        content_type == "multipart/report" and report_type.lower() == "feedback-report"
    ):
        fields = _fields(feedback[0]) if feedback else Message()
        kind_field = _field(fields, "Feedback-Type").lower()
        agent = _field(fields, "User-Agent")
        digest_hash = read_verp(key, _field(fields, "Original-Mail-From")) or digest_hash
        return Report(
            "complaint" if kind_field in COMPLAINT_TYPES else "ignored",
            f"ARF {kind_field or 'report'} report" + (f" from {agent}" if agent else ""),
            _address(_field(fields, "Original-Rcpt-To")),
            digest_hash,
            message_id,
        )

    status_parts = _parts(message, "message/delivery-status")
    if status_parts:
        kind, detail, recipient = _dsn(message, status_parts[0])
        return Report(kind, detail, recipient, digest_hash, message_id)

    plain = _plain_bounce(message)
    if plain:
        kind, detail, recipient = plain
        return Report(kind, detail, recipient, digest_hash, message_id)

    token = TOKEN_IN_SUBJECT.search(str(message.get("Subject", "")))
    if token:  # a mail client following the List-Unsubscribe mailto: link
        return Report("unsubscribe", "unsubscribe request by mail", token=token[1])
    return Report("ignored", "not a bounce, complaint or unsubscribe request")


def message_key(raw: bytes, message: Message) -> str:
    """The report's identity for idempotency: its Message-ID, else a hash of its bytes."""
    message_id = message.get("Message-ID")
    if message_id and len(str(message_id).strip()) <= 200:
        return str(message_id).strip()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def report_time(message: Message) -> datetime:
    """When the report was written (its Date), never in the future; now if it has none."""
    stamp = datetime.now(UTC)
    value = message.get("Date")
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        parsed = email.utils.parsedate_to_datetime(str(value))  # (9999-12-31 -1200: year 10000)
        if parsed.tzinfo is not None:
            return min(parsed.astimezone(UTC), stamp)
    return stamp


# --- mailboxes ---------------------------------------------------------------------------


class Source(Protocol):
    def messages(self) -> Iterator[tuple[str, bytes]]:
        """(id within the mailbox, raw bytes) of each message not yet flagged done."""
        ...

    def done(self, ident: str) -> None: ...

    def close(self) -> None: ...


# One command's answer is kept in memory by imaplib: FETCH brings one report (mail systems
# refuse messages over some tens of MB), SEARCH a list of numbers.
ANSWER_BYTES = 64 << 20


class _Deadlined(imaplib.IMAP4):
    """imaplib's connection with a total deadline per command: the greeting, or one command
    and all the lines of its answer, get REPLY_READS read timeouts in total (a server that
    keeps sending untagged lines, each within the read timeout, never ends a command; as for
    SMTP replies), and ANSWER_BYTES. Every wait on the socket is bounded by what is left
    (:class:`~paperpost.deadline.BoundedReader`)."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        self.read_timeout = read_timeout
        self.command_seconds = REPLY_READS * read_timeout
        self._cut = False  # an earlier command's answer was cut
        self._greeting_ends = time.monotonic() + self.command_seconds  # connecting included
        super().__init__(*args, timeout=read_timeout, **kwargs)

    @property
    def expired(self) -> bool:
        """A command ran out of time or room: the connection is in no known state."""
        return self._cut or self._answer.expired

    def _reader(self, what: str, ends: float) -> BoundedReader:
        return BoundedReader(
            self.file,
            self.sock,
            read_timeout=self.read_timeout,
            ends=ends,
            max_bytes=ANSWER_BYTES,  # imaplib keeps every line of an answer in memory
            cuts=Cuts(
                too_large=f"the server's answer to {what} went on past {ANSWER_BYTES >> 20} MB "
                "(no report is that large)",
                too_late=f"the server did not finish its answer to {what} within "
                f"{self.command_seconds:g} s (it kept sending lines without ending it)",
                idle=f"the server sent nothing for {self.read_timeout:g} s in its answer to {what}",
            ),
        )

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)
        self._answer = self._reader("the greeting", self._greeting_ends)

    def _command(self, name: str, *args: Any) -> Any:
        self._cut = self.expired
        self._answer = self._reader(name, time.monotonic() + self.command_seconds)
        return super()._command(name, *args)

    def readline(self) -> bytes:
        line = self._answer.readline(imaplib._MAXLINE + 1)
        if len(line) > imaplib._MAXLINE:
            raise self.error(f"got more than {imaplib._MAXLINE} bytes in one line")
        return line

    def read(self, size: int) -> bytes:
        return self._answer.read(size)


class _DeadlinedSsl(_Deadlined, imaplib.IMAP4_SSL):
    pass


class Imap:
    """An IMAP folder over implicit TLS or STARTTLS; certificates are always verified, and
    each command has a deadline (:class:`_Deadlined`)."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        if not s.imap_username or s.imap_password is None:
            raise BounceError(
                "PAPERPOST_BOUNCE_MAILBOX=imap needs PAPERPOST_IMAP_USERNAME and "
                "PAPERPOST_IMAP_PASSWORD"
            )
        context = ssl.create_default_context(cafile=str(s.imap_ca_file) if s.imap_ca_file else None)
        self.where = where = f"{s.imap_host}:{s.imap_port}"
        try:
            if s.imap_security == "tls":
                self.conn: _Deadlined = _DeadlinedSsl(
                    s.imap_host, s.imap_port, ssl_context=context, read_timeout=s.imap_timeout
                )
            else:
                self.conn = _Deadlined(s.imap_host, s.imap_port, read_timeout=s.imap_timeout)
                self.conn.starttls(ssl_context=context)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise BounceError(
                f"cannot connect to the IMAP server {where}: {exc}; check PAPERPOST_IMAP_HOST, "
                "PAPERPOST_IMAP_PORT and PAPERPOST_IMAP_SECURITY"
            ) from None
        try:
            self.conn.login(s.imap_username, s.imap_password.get_secret_value())
        except imaplib.IMAP4.abort as exc:  # the connection broke: not a refusal
            self.close()
            raise self.failed(exc) from None
        except imaplib.IMAP4.error:
            self.close()
            raise BounceError(
                f"the IMAP server {where} refused the login; check PAPERPOST_IMAP_USERNAME "
                "and PAPERPOST_IMAP_PASSWORD"
            ) from None
        except OSError as exc:
            self.close()
            raise self.failed(exc) from None
        try:
            status, data = self.conn.select(_quote(s.imap_folder))
        except (OSError, imaplib.IMAP4.error) as exc:  # BAD, a dropped connection, a deadline
            self.close()
            raise self.failed(exc) from None
        if status != "OK":
            self.close()
            said = reply_text(
                b" ".join(d for d in data if isinstance(d, bytes)).decode("ascii", "replace")
            )
            raise BounceError(
                f"the IMAP server {where} cannot open the folder {s.imap_folder!r} ({said}); "
                "check PAPERPOST_IMAP_FOLDER"
            )

    def failed(self, exc: Exception) -> BounceError:
        return BounceError(
            f"reading the bounce mailbox at the IMAP server {self.where} failed: "
            f"{reply_text(str(exc))}; nothing was lost (its reports are read next run); check "
            "that server (PAPERPOST_IMAP_HOST)"
        )

    def messages(self) -> Iterator[tuple[str, bytes]]:
        status, data = self.conn.uid("SEARCH", "UNKEYWORD", DONE_KEYWORD)
        if status != "OK":
            raise BounceError(f"IMAP SEARCH failed: {data!r}")
        for uid in (data[0] or b"").split():
            status, fetched = self.conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((item[1] for item in fetched if isinstance(item, tuple)), None)
            if status == "OK" and raw is not None:
                yield uid.decode(), raw

    def done(self, ident: str) -> None:
        self.conn.uid("STORE", ident, "+FLAGS.SILENT", f"({DONE_KEYWORD} \\Seen)")

    def close(self) -> None:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            if self.conn.expired:  # no LOGOUT to a server that does not finish its answers
                self.conn.shutdown()
            else:
                self.conn.logout()


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Local:
    """A Maildir folder (processed messages move to ``cur/`` as seen) or an mbox file (left
    as it is; the database remembers what was processed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, Path] = {}  # Maildir: key -> its file, while being processed
        if path.is_dir():
            self.box: mailbox.Mailbox = mailbox.Maildir(path, factory=None, create=False)
        elif path.is_file():
            self.box = mailbox.mbox(path, create=False)
        else:
            raise BounceError(
                f"no mailbox at {path}; PAPERPOST_BOUNCE_MAILBOX must be a Maildir folder, "
                'an mbox file or "imap"'
            )

    def messages(self) -> Iterator[tuple[str, bytes]]:
        if not isinstance(self.box, mailbox.Maildir):
            for key in list(self.box.keys()):
                yield key, self.box.get_bytes(key)
            return
        # a Maildir message's state is in its file name (new/, or cur/ with flags after
        # ":2,"): read there, never by parsing the message (which a hostile one can break)
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(self.path / sub)):
                key, _, info = name.partition(":")
                if name.startswith(".") or (sub == "cur" and "S" in info.partition(",")[2]):
                    continue
                self.files[key] = self.path / sub / name
                yield key, self.files[key].read_bytes()

    def done(self, ident: str) -> None:
        """A Maildir message moves to cur/ as seen (the file itself is not rewritten)."""
        file = self.files.pop(ident, None)
        if file is None:
            return
        key, _, info = file.name.partition(":")
        flags = "".join(sorted(set(info.partition(",")[2]) | {"S"}))
        file.rename(self.path / "cur" / f"{key}:2,{flags}")

    def close(self) -> None:
        self.box.close()


def open_source(settings: Settings) -> Source:
    assert settings.bounce_mailbox
    if settings.bounce_mailbox == "imap":
        return Imap(settings)
    return Local(Path(settings.bounce_mailbox))


# --- applying reports ----------------------------------------------------------------------


@dataclass(slots=True)
class BounceSummary:
    counts: Counter[str] = field(default_factory=Counter)
    suppressed: list[tuple[str, str, str]] = field(default_factory=list)  # address, why, detail
    unreadable: list[str] = field(default_factory=list)  # messages left in the mailbox, and why

    def to_json(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "suppressed": [{"address": a, "reason": r, "detail": d} for a, r, d in self.suppressed],
            "unreadable": list(self.unreadable),
        }


def _target(store: Store, key: str, report: Report) -> tuple[str, str | None] | None:
    """(address, digest) a report is about, only if paperpost can trust it."""
    if report.kind == "unsubscribe" and report.token:
        try:
            return read_token(key, report.token, lambda r: address_of(store, r)), None
        except BadToken:
            return None
    if report.digest_hash:
        found = store.delivery_by_hash(report.digest_hash)
        if found:
            return found
    if report.message_id:  # without VERP: only a Message-ID nobody else could have made,
        # with the same recipient (an old unkeyed one, computable by anyone, never)
        found = store.delivery_by_message_id(report.message_id)
        if found and report.recipient == found[0] and _keyed(key, report.message_id, *found):
            return found
    return None


def _keyed(key: str, message_id: str, address: str, digest: str) -> bool:
    """Whether a digest's Message-ID is the keyed one (:func:`render.message_hash`)."""
    match = HASH.match(message_id)
    return bool(match) and hmac.compare_digest(match[1], message_hash(key, address, digest))


def apply(settings: Settings, store: Store, raw: bytes, summary: BounceSummary) -> None:
    key = settings.secret_key.get_secret_value()
    message = read_message(raw)  # once: a hostile message costs one bounded parse a run
    report = parse_report(message, key)
    target = _target(store, key, report) if report.kind != "ignored" else None
    kind = report.kind if target or report.kind == "ignored" else "unmatched"
    address, digest = target if target else (report.recipient, None)
    at = report_time(message)
    suppression = None
    if target and kind == "hard":
        suppression = ("bounced", f"bounce: {report.detail}")
    elif target and kind == "complaint":
        suppression = ("complained", report.detail)
    elif target and kind == "unsubscribe":
        suppression = ("unsubscribed", report.detail)
    result = store.record_bounce(
        message_key(raw, message),
        kind,
        address if target else None,
        digest,
        report.detail
        if target
        else reply_text(f"{report.detail} (recipient {address or 'unknown'})"),
        at,
        suppression,
        soft_limit=settings.soft_bounce_limit,
        soft_since=at - timedelta(days=settings.soft_bounce_days),
    )
    if result is None:
        summary.counts["already processed"] += 1
        return
    summary.counts[kind] += 1
    if result and address:
        reason, detail = result
        summary.suppressed.append((address, reason, detail))


def process(settings: Settings, store: Store) -> BounceSummary:
    """Read every new message in the bounce mailbox, apply it, flag it done."""
    summary = BounceSummary()
    try:
        source = open_source(settings)
    except BounceError:
        raise
    except Exception as exc:  # whatever else a mailbox does: one line, the run goes on
        raise BounceError(f"cannot open the bounce mailbox: {_why(exc)}") from None
    try:
        for ident, raw in source.messages():
            try:
                apply(settings, store, raw, summary)
            except (OperationalError, InterfaceError):
                raise  # the database itself is unusable: not this message's fault
            except Exception as exc:  # anyone can mail the bounce address: one message is
                # never the end of the others (nor of the run); it stays for a later paperpost
                summary.counts["unreadable"] += 1
                reason = reply_text((str(exc).strip().splitlines() or [""])[0], 200)
                summary.unreadable.append(
                    f"message {ident}: {type(exc).__name__}: {reason} (left in the mailbox)"
                )
                continue
            source.done(ident)
    except (BounceError, OperationalError, InterfaceError):
        raise
    except Exception as exc:  # a broken connection, an unexpected answer: one line
        if isinstance(source, Imap):
            raise source.failed(exc) from None
        raise BounceError(f"reading the bounce mailbox failed: {_why(exc)}") from None
    finally:
        with contextlib.suppress(Exception):
            source.close()
    return summary


def _why(exc: Exception) -> str:
    return reply_text(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
