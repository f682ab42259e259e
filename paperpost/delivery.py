"""Deliver rendered digests, exactly once, through the ledger in the database.

Two transports share one small interface: :class:`Outbox` writes a Maildir (each
digest is written under ``tmp/`` and renamed into ``new/``, named per subscriber and
digest, so a killed write never looks like a message and a rerun cannot make a second
copy) and :class:`Smtp` talks to a mail server. :func:`send_batch` wraps the
transport calls in the ledger, a group of digests at a time: ``sending`` is committed
for the group before any is sent, ``data-sent`` just before each SMTP end-of-data (the
final dot) goes out, and ``sent`` (with the subscriber's cursor) once the server's reply
was read (SMTP: with the next ``data-sent`` commit or at the group's end) or once the
outbox made the group durable. A crash before the dot leaves ``sending``, which the next
run resends safely; only ``data-sent`` (the dot went out, no reply recorded) is ambiguous.
docs/delivery.md describes the groups and what a crash at each point leaves.

SMTP failures are classified by scope from the enhanced status code (RFC 3463), see
:func:`classify`: a bad mailbox suppresses that address; a sender- or server-wide
refusal pauses the run and suppresses nobody.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import queue
import random
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from paperpost.deadline import BoundedReader, Cuts
from paperpost.exitcodes import LEASE_LOST, OUTBOX_UNWRITABLE
from paperpost.models import pickled_by_fields
from paperpost.render import Outgoing
from paperpost.sanitize import reply_text
from paperpost.settings import Settings
from paperpost.store import Lease, Settlement, Store, Wanted, now
from paperpost.verp import envelope_sender

ERROR_SAMPLE = 20  # deliveries tried before the error rate can pause a run
PAUSE_CHECK_EVERY = 25  # messages between looks at whether another batch paused the run
GROUP = 100  # digests claimed together; the outbox makes them durable, then settles them, together
TEMPORARY = "temporary"  # 4xx, connection lost before end-of-data: retry with backoff
RECIPIENT = "recipient"  # permanent for this address (bad mailbox): fail, suppress it
MESSAGE = "message"  # permanent for this message only (mailbox full, content): fail it
SYSTEMIC = "systemic"  # the sender or the server is refused (relaying, auth): pause the run
# a policy (5.7.x) or size/capacity (5.3.x) refusal at RCPT or DATA: about this message unless
# the same reply comes for several domains, or the batch's server accepts nothing (_Scope)
POLICY = "policy"
# a 4xx saying we send too much or too fast (THROTTLE): not retried in this run, and like POLICY
# counted against the recipient's domain (DOMAIN_REFUSALS in a row defer the domain)
THROTTLED = "throttled"
HELD = {RECIPIENT, MESSAGE, POLICY}  # refusals held back until the server accepts a message
AMBIGUOUS = "ambiguous"  # end-of-data sent, no reply read: it may or may not have arrived
# the detail of a digest left for the next run because this one paused (or lost its lease)
NOT_ATTEMPTED = "not attempted: "
# policy or rate-limit refusals in a row from one recipient domain after which the run sends
# nothing more to that domain: its other readers are deferred to the next run (docs/delivery.md)
DOMAIN_REFUSALS = 3


class DeliveryError(Exception):
    """A transport failure with its scope (one of the kinds above) and the server's reply."""

    def __init__(self, kind: str, detail: str, fix: str = "", phase: str = "") -> None:
        detail = reply_text(detail)  # a server's words: no terminal escapes, one short line
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.fix = fix
        self.phase = phase  # the SMTP command it answered (MAIL, RCPT, DATA), if any


def _nothing() -> None:
    return None


class Transport(Protocol):
    def send(self, outgoing: Outgoing, end_of_data: Callable[[], None] = _nothing) -> None:
        """Deliver one message; call ``end_of_data`` just before the point of no return."""
        ...

    def delivered(self, address: str, digest: str) -> bool | None:
        """True/False when the transport can tell whether a message went out, else None."""
        ...

    def close(self) -> None: ...


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Outcome:
    address: str
    digest: str
    status: str  # sent, failed, retry, deferred (its domain refuses us; retried), ambiguous,
    # already-sent
    papers: int
    detail: str = ""


# --- failure scope (RFC 3463 enhanced status codes) ---------------------------------

ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
RECIPIENT_CODES = {"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.4", "5.1.6", "5.1.10", "5.2.1"}
SENDER_CODES = {"5.1.7", "5.1.8"}  # the sender's own address is refused
AUTH_CODES = {530, 534, 535, 538}
# What big receivers say when they limit us: Gmail "4.7.28 ... unusual rate of unsolicited mail",
# "4.7.26 ... rate limited because it is unauthenticated"; Yahoo "4.7.0 [TSS04] Messages from
# ... temporarily deferred due to unexpected volume or user complaints"; Microsoft "4.7.500-699
# Access denied / Server busy, please try again later" (its throttling range); Postfix/Exim
# rate limits ("too many connections", "rate limit exceeded", "452 4.5.3 too many recipients").
# Greylisting ("451 4.7.1 Greylisted, please try again later") is not one: it asks for each
# message again later, and a domain deferred for it would never see most of its readers.
THROTTLE = re.compile(
    r"\brate\b|rate[- ]?limit|too many|too fast|volume|throttl|slow down|temporarily deferred",
    re.IGNORECASE,
)


def throttles(code: int, text: str) -> bool:
    """Whether a 4xx reply says we send too much or too fast (not a mailbox's state)."""
    if not 400 <= code < 500:
        return False
    status = enhanced_code(text) or ""
    if status.startswith(("4.1.", "4.2.")):  # one mailbox (Gmail's 4.2.1 "receiving mail at a
        return False  # rate that prevents additional messages" is about that reader's inbox)
    subject = status.rsplit(".", 1)[-1] if status.startswith("4.7.") else ""
    return bool(THROTTLE.search(text)) or (subject.isdigit() and 500 <= int(subject) <= 699)


def enhanced_code(text: str) -> str | None:
    match = ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify(code: int, text: str, phase: str = "DATA") -> DeliveryError:
    """The scope of an SMTP reply; ``phase`` is MAIL, RCPT or DATA (the README has the table)."""
    error = _classify(code, text, phase)
    error.phase = phase
    return error


def _classify(code: int, text: str, phase: str) -> DeliveryError:
    detail = f"{code} {text}".strip()
    if code < 500 and throttles(code, text):
        if phase == "MAIL":  # before any recipient: the server limits us, whoever we write to
            return DeliveryError(
                SYSTEMIC,
                detail,
                "the server limits how much we send; wait, lower PAPERPOST_SMTP_RATE_LIMIT "
                "or raise the account's sending quota",
            )
        return DeliveryError(THROTTLED, detail)
    if code < 500:
        return DeliveryError(TEMPORARY, detail)
    status = enhanced_code(text)
    klass = status.rsplit(".", 1)[0] if status else None
    if code in AUTH_CODES or (status in {"5.7.8", "5.7.0"} and "auth" in text.lower()):
        return DeliveryError(
            SYSTEMIC,
            detail,
            "the server refuses our login; check PAPERPOST_SMTP_USERNAME and "
            "PAPERPOST_SMTP_PASSWORD",
        )
    if status in SENDER_CODES or phase == "MAIL":
        return DeliveryError(
            SYSTEMIC, detail, "the server refuses the sender address; check PAPERPOST_SENDER"
        )
    if klass == "5.7":
        return DeliveryError(
            POLICY if phase in {"RCPT", "DATA"} else SYSTEMIC,
            detail,
            "the server's policy refuses mail from us (relaying, authentication, SPF/DKIM/DMARC"
            " or reputation); check PAPERPOST_SMTP_HOST, the SMTP login and that "
            "PAPERPOST_SENDER's domain may send through this server",
        )
    if klass == "5.5" or (status is None and 500 <= code <= 504):
        return DeliveryError(
            SYSTEMIC,
            detail,
            "the server rejected a protocol command; check PAPERPOST_SMTP_HOST, "
            "PAPERPOST_SMTP_PORT and PAPERPOST_SMTP_SECURITY",
        )
    if klass == "5.3":
        return DeliveryError(
            POLICY if phase in {"RCPT", "DATA"} else SYSTEMIC,
            detail,
            "the mail system cannot take our messages (size or capacity); check the "
            "server's limits",
        )
    if status in RECIPIENT_CODES or (
        status is None and phase == "RCPT" and code in {550, 551, 553}
    ):
        return DeliveryError(RECIPIENT, detail)
    return DeliveryError(MESSAGE, detail)


# --- outbox (a Maildir) ----------------------------------------

WRITER_THREADS = 32  # outbox files being written and synced at once
_pools: dict[int, ThreadPoolExecutor] = {}  # by process id: threads do not survive a fork
_pools_lock = threading.Lock()


def _writers() -> ThreadPoolExecutor:
    with _pools_lock:
        pid = os.getpid()
        if pid not in _pools:
            _pools[pid] = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="outbox")
        return _pools[pid]


def _write_synced(path: str, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it; nothing is left
    at ``path`` if that fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def outbox_name(address: str, digest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", address.lower())[:80]
    tag = hashlib.sha256(f"{address.lower()}|{digest}".encode()).hexdigest()[:8]
    return f"{safe}_{digest}_{tag}.eml"


def _has_prefix(names: list[str], name: str) -> bool:
    """Whether a name in sorted ``names`` starts with ``name``: a mail client that read a
    digest moved it to ``cur/`` with its flags appended (``<name>:2,S``; Dovecot also adds
    ``,S=<size>`` before them)."""
    at = bisect.bisect_left(names, name)
    return at < len(names) and names[at].startswith(name)


class Outbox:
    """A Maildir: each (subscriber, digest) written under ``tmp/``, then renamed into ``new/``.

    Mail tools (mutt -f, Python's ``mailbox.Maildir``, Dovecot) read it as is; a write
    killed half-way stays in ``tmp/`` and is never taken for a message.

    :meth:`send` makes one digest durable at once. :func:`send_batch` uses
    :meth:`stage` and :meth:`flush` instead: a group of digests is written and synced
    concurrently, renamed into ``new/`` and ``new/`` synced once, and only then settled in
    the ledger (an fsync per file, each waiting for its own journal commit, was most of the
    outbox's cost).
    """

    STALE_TMP = 36 * 3600  # the Maildir convention: a tmp/ file this old is a dead write

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        self._tmp, self._new = str(folder / "tmp"), str(folder / "new")
        # (file written, its tmp/ path, its name in new/, end_of_data) per staged digest
        self._staged: list[tuple[Future[None], str, str, Callable[[], None]]] = []
        cutoff = time.time() - self.STALE_TMP
        for leftover in (folder / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def path(self, address: str, digest: str) -> Path:
        return self.folder / "new" / outbox_name(address, digest)

    def send(self, outgoing: Outgoing, end_of_data: Callable[[], None] = _nothing) -> None:
        self.stage(outgoing, end_of_data)
        self.flush()

    def stage(self, outgoing: Outgoing, end_of_data: Callable[[], None] = _nothing) -> None:
        """Start writing a digest under ``tmp/`` (and syncing it) on the outbox's writer
        threads; it is neither durable nor delivered until :meth:`flush`. A digest already
        in ``new/`` is not written again; one in ``cur/`` is found by :meth:`flush`."""
        name = outbox_name(outgoing.address, outgoing.digest)
        if os.path.exists(os.path.join(self._new, name)):
            return
        temp = os.path.join(self._tmp, f"{name}.{os.getpid()}.{random.getrandbits(40):x}")
        written = _writers().submit(_write_synced, temp, outgoing.data)
        self._staged.append((written, temp, name, end_of_data))

    def flush(self) -> None:
        """Deliver what :meth:`stage` wrote: wait until every file is written and synced,
        rename each into ``new/`` (calling its ``end_of_data`` first), then sync ``new/`` so
        the renames last. If any file of the group cannot be written, none is delivered.
        A digest a mail client has meanwhile read (moved from ``new/`` to ``cur/``: it was
        delivered before) is dropped from ``tmp/`` instead: ``cur/`` is read once per group,
        after every digest of the group was looked for in ``new/``, so none is missed.

        The files are written and synced on WRITER_THREADS threads while this thread goes
        on: the file system then commits their journal entries together instead of one
        commit per file, which was most of the outbox's time on a busy disk (5-6 ms a file
        one after another, 0.1-0.3 ms concurrently on this machine). Each file is synced
        before it is renamed."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        try:
            for written, _temp, _name, _ in staged:
                written.result()
            read = self._read()
            for _written, temp, name, end_of_data in staged:
                if read and _has_prefix(read, name):
                    os.unlink(temp)
                    continue
                end_of_data()
                os.replace(temp, os.path.join(self._new, name))
            folder = os.open(self.folder / "new", os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            self._drop(staged)
            raise DeliveryError(TEMPORARY, f"cannot write {self.folder}: {exc.strerror}") from None

    def _drop(self, staged: list[tuple[Future[None], str, str, Callable[[], None]]]) -> None:
        for written, temp, _name, _ in staged:
            with contextlib.suppress(OSError):
                written.exception()  # finished, so its file is closed
                os.unlink(temp)

    def _read(self) -> list[str]:
        """The names in ``cur/`` (digests a mail client has read), sorted."""
        with os.scandir(self.folder / "cur") as entries:
            return sorted(entry.name for entry in entries)

    def delivered(self, address: str, digest: str) -> bool | None:
        name = outbox_name(address, digest)
        if os.path.exists(os.path.join(self._new, name)):
            return True
        # read by a mail client: moved to cur/ with flags appended ("<name>:2,S")
        with os.scandir(self.folder / "cur") as entries:
            return any(entry.name.startswith(name) for entry in entries)

    def close(self) -> None:
        """Drop what was staged and never flushed (its ledger rows were not settled)."""
        staged, self._staged = self._staged, []
        self._drop(staged)


# --- SMTP ----------------------------------------


def _crlf_dot_stuffed(data: bytes) -> bytes:
    """The message as DATA content: CRLF line ends, leading dots doubled, ending in CRLF."""
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


# A server that sends one line of a reply now and then ("250-still thinking", a tarpit) never
# trips the per-read timeout; one reply (all its lines) gets this many read timeouts in total.
REPLY_READS = 6
# ... and one that streams lines fast would fill memory (smtplib keeps every line of a reply):
# a reply is cut at this size (an EHLO reply, the longest, is well under 1 KB).
REPLY_BYTES = 64 << 10


class _Deadlined(smtplib.SMTP):
    """smtplib's connection with a total deadline per reply (REPLY_READS read timeouts) and a
    size (REPLY_BYTES), read by :class:`~paperpost.deadline.BoundedReader`."""

    def __init__(self, *args: Any, reply_seconds: float, **kwargs: Any) -> None:
        self.reply_seconds = reply_seconds  # before __init__, which reads the greeting
        super().__init__(*args, **kwargs)

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = self.sock.makefile("rb")
        if self.file is not None and self.sock is not None:
            raw = self.file.file if isinstance(self.file, BoundedReader) else self.file
            self.file = BoundedReader(  # type: ignore[assignment]
                raw,
                self.sock,
                read_timeout=self.timeout,
                ends=time.monotonic() + self.reply_seconds,
                max_bytes=REPLY_BYTES,
                cuts=Cuts(  # smtplib closes the connection on an OSError
                    too_large=f"the server's reply went on past {REPLY_BYTES >> 10} KB",
                    too_late=f"the server's reply did not end within {self.reply_seconds:g} s",
                ),
            )
        return super().getreply()


class _DeadlinedSsl(_Deadlined, smtplib.SMTP_SSL):
    pass


class Smtp:
    """One reused SMTP connection (plain, STARTTLS or implicit TLS), recycled every N messages."""

    def __init__(self, settings: Settings, recycle_after: int = 100) -> None:
        self.settings = settings
        self.recycle_after = recycle_after
        self._conn: smtplib.SMTP | None = None
        self._sent_on_conn = 0
        self._context = ssl.create_default_context(
            cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
        )

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            reply_seconds = REPLY_READS * s.smtp_timeout
            if s.smtp_security == "tls":
                conn: smtplib.SMTP = _DeadlinedSsl(
                    s.smtp_host,
                    s.smtp_port,
                    timeout=s.smtp_timeout,
                    context=self._context,
                    reply_seconds=reply_seconds,
                )
            else:
                conn = _Deadlined(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, reply_seconds=reply_seconds
                )
            if conn.sock is not None:  # Nagle + delayed ACK stalls pipelined SMTP commands
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _greet(conn)
            if s.smtp_security == "starttls":
                conn.starttls(context=self._context)
                _greet(conn)
            if s.smtp_username and s.smtp_password is not None:
                conn.login(s.smtp_username, s.smtp_password.get_secret_value())
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                SYSTEMIC,
                f"SMTP login refused ({exc.smtp_code})",
                "check PAPERPOST_SMTP_USERNAME and PAPERPOST_SMTP_PASSWORD",
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError(
                SYSTEMIC,
                f"{s.smtp_host}:{s.smtp_port} does not offer STARTTLS or AUTH",
                "check PAPERPOST_SMTP_SECURITY and PAPERPOST_SMTP_PORT",
            ) from None
        except ssl.SSLError as exc:
            if s.smtp_security == "tls" and exc.reason == "WRONG_VERSION_NUMBER":
                raise DeliveryError(  # the server greeted in plain text: not an outage
                    SYSTEMIC,
                    f"{s.smtp_host}:{s.smtp_port} speaks plain SMTP, not TLS, on this port "
                    f"({_describe(exc)})",
                    "use PAPERPOST_SMTP_SECURITY=starttls (usually port 587) or none, or "
                    "PAPERPOST_SMTP_PORT=465 with tls",
                ) from None
            raise DeliveryError(
                TEMPORARY, f"cannot connect to {s.smtp_host}:{s.smtp_port}: {_describe(exc)}"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(
                TEMPORARY, f"cannot connect to {s.smtp_host}:{s.smtp_port}: {_describe(exc)}"
            ) from None
        return conn

    def send(self, outgoing: Outgoing, end_of_data: Callable[[], None] = _nothing) -> None:
        """One SMTP transaction, by hand so that ``end_of_data`` runs right before the dot."""
        if self._conn is None or self._sent_on_conn >= self.recycle_after:
            self.close()
            self._conn = self._connect()
            self._sent_on_conn = 0
        conn = self._conn
        sender = envelope_sender(self.settings, outgoing.message_id)
        phase = "MAIL"
        try:
            code, reply = conn.mail(sender)
            if code == 250:
                phase = "RCPT"
                code, reply = conn.rcpt(outgoing.address)
            if code in {250, 251}:
                phase = "DATA"
                conn.putcmd("data")
                code, reply = conn.getreply()
            if code == 354:
                conn.send(_crlf_dot_stuffed(outgoing.data))
                end_of_data()
                phase = "END"
                conn.send(b".\r\n")
                code, reply = conn.getreply()
                if code == 250:
                    self._sent_on_conn += 1
                    return
            elif code != 421:
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    conn.rset()
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._conn = None
            if phase == "END":
                raise DeliveryError(
                    AMBIGUOUS,
                    f"connection lost after the end of data, before the reply: {_describe(exc)}",
                ) from None
            raise DeliveryError(TEMPORARY, f"connection lost: {_describe(exc)}") from None
        except BaseException:
            # Anything else mid-transaction (an address smtplib cannot write, a ledger write
            # failing before the dot): the connection may hold an open transaction or half a
            # message body, so it is dropped without QUIT (which would become body text) and
            # the server discards the incomplete message.
            with contextlib.suppress(OSError):
                conn.close()
            self._conn = None
            raise
        if code == 421:
            self.close()
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        if code < 400:  # not a refusal: a reply to some other command (the server sent extra)
            with contextlib.suppress(OSError):
                conn.close()  # no QUIT: the replies no longer match the commands
            self._conn = None
            raise DeliveryError(
                TEMPORARY,
                f'the server\'s replies are out of step with our commands ("{code} {text}" '
                f"answered {phase}: it sent more replies than commands); the connection was "
                "dropped and the digest is tried again on a new one",
            )
        raise classify(code, text, "DATA" if phase == "END" else phase)

    def delivered(self, address: str, digest: str) -> bool | None:
        return None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._conn.quit()
            self._conn = None


class TokenBucket:
    """At most ``rate`` acquisitions a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.capacity = max(burst, 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class SmtpPool:
    """A few reused SMTP connections shared by sending threads, with an optional rate cap."""

    def __init__(self, settings: Settings) -> None:
        self.connections: queue.LifoQueue[Smtp] = queue.LifoQueue()
        for _ in range(settings.smtp_connections):
            self.connections.put(Smtp(settings, settings.smtp_recycle_after))
        self.bucket = TokenBucket(settings.smtp_rate_limit) if settings.smtp_rate_limit else None

    def send(self, outgoing: Outgoing, end_of_data: Callable[[], None] = _nothing) -> None:
        if self.bucket is not None:
            self.bucket.acquire()
        conn = self.connections.get()
        try:
            conn.send(outgoing, end_of_data)
        finally:
            self.connections.put(conn)

    def delivered(self, address: str, digest: str) -> bool | None:
        return None

    def close(self) -> None:
        while not self.connections.empty():
            self.connections.get().close()


def _greet(conn: smtplib.SMTP) -> None:
    """EHLO, else HELO. A refusal is this host's greeting refused (its name, reverse DNS, the
    relay's HELO restrictions), said as such: the next command would get "503 send HELO/EHLO
    first", which reads as a refused sender."""
    code, reply = conn.ehlo()
    if code == 250:
        return
    helo_code, helo_reply = conn.helo()
    if helo_code == 250:
        return
    code, reply = (helo_code, helo_reply) if helo_code >= 500 else (code, reply)
    conn.close()
    raise DeliveryError(
        SYSTEMIC if code >= 500 else TEMPORARY,
        f"the server refuses this host's greeting (EHLO {conn.local_hostname}): {code} "
        f"{reply.decode('utf-8', 'replace')}",
        "check this host's name and reverse DNS, or the relay's HELO restrictions "
        "(smtpd_helo_restrictions)",
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def transport_for(settings: Settings) -> Transport:
    if settings.delivery == "smtp":
        return SmtpPool(settings)
    return Outbox(settings.outbox_dir)


# --- the ledger around each transport call ----------------------------------------


AMBIGUOUS_NOTE = (
    "the end of data was sent but no reply was read (a crash or a dropped connection); "
    "it has most likely arrived and is not resent (PAPERPOST_RESEND_AMBIGUOUS=true resends "
    "with the same Message-ID)"
)


def resolve_interrupted(store: Store, transport: Transport, resend: bool) -> list[Outcome]:
    """Settle deliveries a crashed run left unfinished, before anything else is sent.

    When the transport can tell (the outbox can), the row becomes ``sent`` or is
    released for resending. Otherwise a row still ``sending`` never got to its
    end-of-data, so nothing reached the server: it is released and resent. A row in
    ``data-sent`` is *ambiguous*: by default it counts as delivered (the cursor moves
    past it, nothing is resent) and is reported; with ``resend`` it is released.
    """
    outcomes = []
    settled = []
    for address, digest, hi, status in store.interrupted():
        known = transport.delivered(address, digest)
        if known:
            settled.append(Settlement(address, digest, "sent", hi))
            outcomes.append(Outcome(address, digest, "sent", 0, "confirmed after a crash"))
        elif known is False or status == "sending" or resend:
            settled.append(
                Settlement(address, digest, "released", hi, "interrupted; will be resent")
            )
        else:
            settled.append(
                Settlement(address, digest, "ambiguous", hi, "interrupted after end of data")
            )
            outcomes.append(Outcome(address, digest, "ambiguous", 0, AMBIGUOUS_NOTE))
    store.settle_group(settled)
    return outcomes


@dataclass(slots=True)
class _Scope:
    """Tells a server that refuses everyone from one that refuses some addresses.

    Until the first accepted message, permanent refusals are held back (the digest is
    failed, a bad mailbox's suppression waits). If the same reply comes for ``domains`` distinct
    recipient domains before any success, or the batch ends with nothing accepted and most
    refusals the same (two readers at least), the server refuses everyone: nobody is
    suppressed and the run pauses. One success, or the end of the batch, releases the
    held suppressions.
    """

    domains: int
    proven: bool = False
    held: list[tuple[Outgoing, DeliveryError]] = field(default_factory=list)
    # domains whose digest ended temporary or ambiguous before any success, and how many
    unanswered: set[str] = field(default_factory=set)
    transient: int = 0

    def same_reply_readers(self) -> list[tuple[Outgoing, DeliveryError]]:
        """The held refusals that share the most common reply (recipient left out)."""
        groups: dict[str, list[tuple[Outgoing, DeliveryError]]] = {}
        for message, error in self.held:
            groups.setdefault(_reply_key(error.detail), []).append((message, error))
        return max(groups.values(), key=len, default=[])

    def same_reply_domains(self, error: DeliveryError) -> set[str]:
        key = _reply_key(error.detail)
        return {m.address.rpartition("@")[2] for m, e in self.held if _reply_key(e.detail) == key}


def _nothing_accepted(count: int, last: DeliveryError | None) -> str:
    if last is not None and last.kind == AMBIGUOUS:
        what = "closed the connection or never answered after the end of data"
        then = "those digests may have arrived and are not resent (listed above)"
    else:
        what = "could not be reached or refused temporarily"
        then = "they are retried next run"
    return (
        f"paused: the mail server accepted none of the {count} digest"
        f"{'' if count == 1 else 's'} tried; it {what} (last: {last.detail if last else '?'}); "
        f"{then}; check PAPERPOST_SMTP_HOST, PAPERPOST_SMTP_PORT and the server, then run again"
    )


def _reply_key(detail: str) -> str:
    """A reply without the parts that name the recipient: code, enhanced code, first words."""
    code, _, rest = detail.partition(" ")
    status = enhanced_code(rest) or ""
    words = re.sub(r"<[^>]*>|\S+@\S+", "", rest.removeprefix(status)).split()[:3]
    return " ".join([code, status, *words]).lower()


def send_batch(
    store: Store,
    transport: Transport,
    outgoing: Sequence[Outgoing],
    run_id: int,
    attempts: int = 3,
    backoff: float = 1.0,
    workers: int = 1,
    max_error_rate: float = 1.0,
    resend_ambiguous: bool = False,
    systemic_domains: int = 3,
    lease: Lease | None = None,
    soft_bounce_limit: int = 3,
    soft_bounce_days: int = 14,
) -> list[Outcome]:
    """Send each digest once: skip what the ledger says is done, retry 4xx, classify 5xx.

    Digests go in groups of GROUP: the group is claimed in one transaction, sent, and its
    outcomes recorded in one transaction (the outbox makes the group durable first). Over
    SMTP the ``data-sent`` mark of each digest is its own commit right before its final
    dot, and the reply read is committed before that connection sends its next message, so a
    kill leaves at most one digest per connection in ``data-sent`` (the protocol's window).

    ``workers`` messages are in flight at a time (the transport must be thread-safe).
    A sender- or server-wide refusal (see :func:`classify`, and :class:`_Scope` for the
    same reply across ``systemic_domains`` domains) pauses the run with what to fix.
    Once at least ERROR_SAMPLE messages were tried and more than ``max_error_rate`` of
    them failed, the run pauses too. A pause is recorded on the run so every batch of it
    stops; the rest are left for the next run.

    A refusal of one message at RCPT or DATA that is neither a bad mailbox nor a policy
    (``552 5.2.2`` mailbox full, ``554 5.6.0`` content) is a soft bounce, counted with the
    bounce mailbox's: ``soft_bounce_limit`` of them for different digests within
    ``soft_bounce_days`` suppress the address.

    ``lease``: the run's lease, renewed as groups are claimed and digests sent. Once another
    run has taken it (this run outlived it without renewing, e.g. stalled for hours), nothing
    more is claimed or sent and nothing claimed is settled: that run has released what
    this one claimed and sends it.
    """
    lock = threading.Lock()
    committing = threading.Lock()  # taken before ``lock``, never while holding it
    tried = failed = seen = 0
    paused: str | None = store.pause_reason(run_id)
    scope = _Scope(systemic_domains)
    # the outbox makes a group durable at once; its digests are settled after that
    outbox = transport if isinstance(transport, Outbox) else None
    sender = _Staging(outbox) if outbox is not None else transport
    pending: list[Settlement] = []  # outcomes not yet in the ledger, in the order they came
    unblamed: dict[tuple[str, str], str] = {}  # held refusals the server turned out to cause
    last_error: DeliveryError | None = None
    lost = False  # the lease was taken by another run
    # Per receiving domain (SMTP only): refusals in a row by policy or rate limit are counted
    # for the whole run in the database (every batch of it, in any process); ``refusing``: the
    # domains with such refusals as last seen, ``deferred``: the ones the run sends nothing
    # more, and why; ``streaks``: the digests this batch saw refused in a row, per domain, and
    # ``deferred_refused`` those of them settled as deferred
    refusing: set[str] = set()
    deferred: dict[str, str] = {}
    streaks: dict[str, list[Outgoing]] = {}
    deferred_refused: dict[tuple[str, str], str] = {}

    def domains_seen() -> None:
        for domain, (refusals, reason) in store.domain_states(run_id).items():
            if reason is not None:
                deferred[domain] = reason
            elif refusals:
                refusing.add(domain)
            else:
                refusing.discard(domain)

    if outbox is None:
        domains_seen()

    def pause(reason: str) -> None:
        nonlocal paused
        store.pause_run(run_id, reason)
        paused = store.pause_reason(run_id)

    def suppress(message: Outgoing, error: DeliveryError) -> bool:
        """Suppress a bad mailbox; count a soft bounce (True when that suppresses)."""
        if error.kind == RECIPIENT:
            return store.suppress(message.address, "bounced", error.detail)
        if _soft(error):
            at = now()
            return bool(
                store.record_bounce(
                    f"smtp:{message.message_id}",  # one per digest, like a DSN's copies
                    "soft",
                    message.address,
                    message.digest,
                    f"at {error.phase}: {error.detail}",
                    at,
                    None,
                    soft_limit=soft_bounce_limit,
                    soft_since=at - timedelta(days=soft_bounce_days),
                )
            )
        return False

    def settle(message: Outgoing, status: str, detail: str | None) -> None:
        pending.append(Settlement(message.address, message.digest, status, message.hi, detail))

    def unblame(current: Outgoing | None) -> None:
        """The held refusals were the server's: back to ``retry``, nobody suppressed."""
        for held, held_error in scope.held:
            if held is not current:
                settle(held, "retry", held_error.detail)
            unblamed[(held.address, held.digest)] = held_error.detail
        scope.held.clear()

    def record(data_sent: tuple[str, str] | None = None) -> None:
        """Write the pending outcomes (and a ``data-sent`` mark) in one commit. Commits
        happen one at a time, in the order their outcomes were queued: a connection's thread
        may settle another's digest (a held refusal found to be the server's goes back to
        ``retry``), and a later outcome committed first would be overwritten by the earlier."""
        with committing:
            with lock:
                settled = pending[:]
                pending.clear()
            try:
                store.settle_group(settled, data_sent)
            except BaseException:
                with lock:
                    pending[:0] = settled
                raise

    def still_ours() -> bool:
        """True when the lease is lost (checked, and renewed when due); pauses the run."""
        nonlocal lost
        if not lost and lease is not None and not lease.held():
            lost = True
            hours = lease.ttl.total_seconds() / 3600
            pause(
                f"{LEASE_LOST} (this run went {hours:g} hours without renewing it, e.g. stalled); "
                "that run sends the rest and this one sends nothing more"
            )
        return lost

    def not_attempted(message: Outgoing) -> Outcome:
        return Outcome(
            message.address, message.digest, "retry", message.papers, f"{NOT_ATTEMPTED}{paused}"
        )

    def skip(message: Outgoing) -> Outcome | None:
        """The outcome of a claimed digest that is not to be sent now (the run paused, lost
        its lease, or its domain is deferred), queued for the ledger; None to send it."""
        nonlocal seen, paused
        with lock:
            seen += 1
            if still_ours():
                return not_attempted(message)  # the other run settles and sends it
            if not paused and seen % PAUSE_CHECK_EVERY == 0:  # another batch may have paused
                paused = store.pause_reason(run_id)
                if outbox is None:  # ... or counted refusals from a domain, or deferred it
                    domains_seen()
            if paused:
                settle(message, "retry", f"{NOT_ATTEMPTED}{paused}")
                return not_attempted(message)
            reason = deferred.get(_domain(message.address))
            if reason is not None:
                settle(message, "retry", reason)
                return Outcome(message.address, message.digest, "deferred", message.papers, reason)
        return None

    def one(message: Outgoing) -> Outcome:
        """Send one claimed digest (unless :func:`skip` says not to); its outcome is queued
        for the ledger."""
        return skip(message) or attempt(message)

    def attempt(message: Outgoing) -> Outcome:
        nonlocal tried, failed, paused, last_error

        def end_of_data() -> None:
            record((message.address, message.digest))

        error = _send_with_retries(
            sender,
            message,
            attempts,
            backoff,
            _nothing if outbox is not None else end_of_data,
            resend_ambiguous,
        )
        with lock:
            domain = _domain(message.address)
            # the recipient's domain refuses us (policy, size, rate) rather than this reader?
            by_domain = error is not None and error.kind in {POLICY, THROTTLED}
            if error is not None:
                last_error = error
            tried += 1
            soft_suppressed = False
            failed += error is not None and error.kind != AMBIGUOUS
            rate = failed / tried
            if error is None and not scope.proven:
                scope.proven = True
                for held, held_error in scope.held:
                    suppress(held, held_error)
                scope.held.clear()
            elif (
                error is not None
                and error.kind in {SYSTEMIC, POLICY}
                and (scope.proven and error.phase in {"RCPT", "DATA"})
            ):  # this server accepted others of this batch: it refuses this message only
                error = DeliveryError(MESSAGE, error.detail)
            elif error is not None and error.kind == SYSTEMIC:
                pause(f"paused at {message.address}: {error.detail}; {error.fix}, then run again")
            elif error is not None and error.kind in HELD and not scope.proven:
                scope.held.append((message, error))
                domains = scope.same_reply_domains(error)
                if len(domains) >= scope.domains and not paused:
                    pause(
                        f"paused: the server answered {error.detail!r} for {len(domains)} "
                        "different recipient domains before accepting any message; it refuses "
                        "everyone, so nobody was suppressed; check the server and "
                        "PAPERPOST_SENDER, then run again"
                    )
                if paused:  # a refusal read after the pause (in flight meanwhile) is the same
                    unblame(message)
                    error = DeliveryError(SYSTEMIC, error.detail)
                elif error.kind == POLICY:  # one reader's refusal, until several domains share it
                    error = DeliveryError(MESSAGE, error.detail)
            elif error is not None and (error.kind == RECIPIENT or _soft(error)):
                soft_suppressed = suppress(message, error) and error.kind != RECIPIENT
            elif (
                error is not None
                and error.kind in {TEMPORARY, THROTTLED, AMBIGUOUS}
                and not scope.proven
            ):
                scope.transient += 1
                scope.unanswered.add(message.address.rpartition("@")[2])
                if len(scope.unanswered) >= scope.domains and not paused:
                    pause(_nothing_accepted(scope.transient, error))
            if tried >= ERROR_SAMPLE and rate > max_error_rate and not paused:
                pause(
                    f"paused: {failed} of {tried} deliveries failed ({rate:.0%}, over the "
                    f"{max_error_rate:.0%} threshold); check the mail server, then run again"
                )
            if error is None:
                streaks.pop(domain, None)
                if domain in refusing:  # it accepts again: its refusals are not in a row
                    refusing.discard(domain)
                    store.domain_accepted(run_id, domain)
            elif by_domain and not paused:
                streak = streaks.setdefault(domain, [])
                streak.append(message)
                refusing.add(domain)
                if domain not in deferred:
                    refusals, reason = store.domain_refused(run_id, domain)
                    if reason is None and refusals >= DOMAIN_REFUSALS:
                        reason = store.defer_domain(
                            run_id, domain, _deferral(domain, refusals, error.detail)
                        )
                    if reason is not None:
                        deferred[domain] = reason
                if domain in deferred:  # these refusals were the domain's: sent next run
                    reason = deferred[domain]
                    for refused in streak:
                        settle(refused, "retry", reason)
                        deferred_refused[(refused.address, refused.digest)] = reason
                    streak.clear()
                    return Outcome(
                        message.address, message.digest, "deferred", message.papers, reason
                    )
            if error is None:
                settle(message, "sent", None)  # the outbox's group is settled once durable
                return Outcome(message.address, message.digest, "sent", message.papers)
            if error.kind == AMBIGUOUS:
                settle(message, "ambiguous", error.detail)
                return Outcome(
                    message.address, message.digest, "ambiguous", message.papers, AMBIGUOUS_NOTE
                )
            if error.kind in {RECIPIENT, MESSAGE}:
                settle(message, "failed", error.detail)
                consequence = (
                    "address suppressed"
                    if error.kind == RECIPIENT
                    else f"address suppressed after {soft_bounce_limit} soft bounces"
                    if soft_suppressed
                    else "a soft bounce, not suppressed"
                    if _soft(error)
                    else "not suppressed"
                )
                return Outcome(
                    message.address,
                    message.digest,
                    "failed",
                    message.papers,
                    f"permanent: {error.detail}; {consequence}",
                )
            settle(message, "retry", error.detail)
            reason = "run paused" if error.kind == SYSTEMIC else "temporary"
            return Outcome(
                message.address,
                message.digest,
                "retry",
                message.papers,
                f"{reason}: {error.detail}; will retry next run",
            )

    def replied(message: Outgoing) -> Outcome:
        """SMTP: the reply read is in the ledger before this connection's next end-of-data,
        so a kill leaves at most one digest per connection in ``data-sent``. A digest not
        sent (:func:`skip`) is settled with the group (until then it is ``sending``, which a
        rerun resends: nothing of it reached the server)."""
        skipped = skip(message)
        if skipped is not None:
            return skipped
        outcome = attempt(message)
        record()
        return outcome

    def durable(outbox: Outbox, done: list[Outcome]) -> list[Outcome]:
        """Make the outbox's staged group durable; if that fails, its digests are retried."""
        try:
            outbox.flush()
        except DeliveryError as exc:
            if not paused:  # a full or read-only disk fails every later group too
                pause(
                    f"{OUTBOX_UNWRITABLE} ({exc.detail}); nothing of this group was delivered "
                    "and it is retried next run: free space or fix the folder's permissions "
                    "(PAPERPOST_OUTBOX_DIR), then run again"
                )
            pending[:] = [
                Settlement(s.address, s.digest, "retry", s.hi, exc.detail)
                if s.status == "sent"
                else s
                for s in pending
            ]
            note = f"temporary: {exc.detail}; will retry next run"
            return [
                Outcome(o.address, o.digest, "retry", o.papers, note) if o.status == "sent" else o
                for o in done
            ]
        return done

    outcomes: list[Outcome] = []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="send") if workers > 1 else None
    try:
        for start in range(0, len(outgoing), GROUP):
            group = outgoing[start : start + GROUP]
            with lock:
                still_ours()
            if paused:
                outcomes += [not_attempted(m) for m in group]
                continue
            claims = store.claim_group(
                [Wanted(m.address, m.digest, m.lo, m.hi, m.message_id) for m in group], run_id
            )
            claimed = [m for m, c in zip(group, claims, strict=True) if c.proceed]
            each = one if outbox is not None else replied
            done = list(pool.map(each, claimed)) if pool is not None else list(map(each, claimed))
            if outbox is not None:
                done = durable(outbox, done)
            record()
            sent = iter(done)
            outcomes += [
                next(sent)
                if c.proceed
                else Outcome(m.address, m.digest, "already-" + c.status, m.papers)
                for m, c in zip(group, claims, strict=True)
            ]
        if not scope.proven and not paused and outbox is None and (scope.held or scope.transient):
            with lock:
                domains_seen()
            failing = scope.unanswered | {_domain(m.address) for m, _ in scope.held}
            if failing <= deferred.keys() and store.run_accepted(run_id):
                # every refusal of this batch came from domains the run deferred, and the
                # server accepted digests of other batches: those domains refuse us, the
                # server does not (a batch of one company's readers must not pause the run)
                scope.proven = True
        if scope.transient and scope.transient == tried and not scope.proven and not paused:
            # nothing this batch tried was accepted or refused: the server is unreachable,
            # drops every message or never answers; the next run retries (exit code 4)
            pause(_nothing_accepted(scope.transient, last_error))
        policy = [(m, e) for m, e in scope.held if e.kind == POLICY]
        if policy and not scope.proven and not paused:
            # this server accepted none of this batch's digests and refused some by policy or
            # size: that is not evidence against one reader; pause, suppress nobody (exit 4)
            message, error = policy[0]
            pause(f"paused at {message.address}: {error.detail}; {error.fix}, then run again")
        same = scope.same_reply_readers()
        if len(same) >= 2 and 2 * len(same) >= len(scope.held) and not scope.proven and not paused:
            # nothing accepted, and most refusals the same words for different readers (a
            # broken recipient map refuses a one-domain list as "user unknown"): the server's
            _, error = same[0]
            pause(
                f"paused: the server answered {error.detail!r} for {len(same)} readers and "
                "accepted no digest; that looks like its configuration, not bad mailboxes, "
                "so nobody was suppressed; check the server, then run again"
            )
        if scope.held and not scope.proven and store.pause_reason(run_id):
            # this run paused (here or in another batch) before this server accepted any
            # message: the refusals held back are not evidence against these readers
            with lock:
                unblame(None)
            record()
    finally:
        if pool is not None:
            pool.shutdown()
        for held, held_error in scope.held:  # too few domains to blame the server
            suppress(held, held_error)
    return [
        Outcome(
            o.address, o.digest, "retry", o.papers, f"run paused: {unblamed[key]}; not suppressed"
        )
        if (key := (o.address, o.digest)) in unblamed
        else Outcome(o.address, o.digest, "deferred", o.papers, deferred_refused[key])
        if key in deferred_refused
        else o
        for o in outcomes
    ]


def _soft(error: DeliveryError) -> bool:
    """A refusal of one message by its recipient's system that counts as a soft bounce: not
    a bad mailbox or a policy, read at RCPT or DATA (not one made up from another kind)."""
    return error.kind == MESSAGE and error.phase in {"RCPT", "DATA"}


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _deferral(domain: str, refusals: int, last: str) -> str:
    return (
        f"deferred: {domain} refused {refusals} messages in a row by policy or rate limit "
        f"(last: {last}); its readers in this run wait for the next run"
    )


class _Staging:
    """The outbox as :func:`send_batch` drives it: ``send`` only stages the digest."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def send(self, outgoing: Outgoing, end_of_data: Callable[[], None] = _nothing) -> None:
        self.outbox.stage(outgoing, end_of_data)


def _send_with_retries(
    transport: Transport | _Staging,
    message: Outgoing,
    attempts: int,
    backoff: float,
    end_of_data: Callable[[], None],
    resend_ambiguous: bool,
) -> DeliveryError | None:
    """None when sent; the last error otherwise (4xx and connections lost before the end of
    data are retried with exponential backoff and jitter; after the end of data only with
    ``resend_ambiguous``; 5xx never)."""
    error: DeliveryError | None = None
    for attempt in range(attempts):
        try:
            transport.send(message, end_of_data)
            return None
        except ValueError as exc:  # an address or message smtplib refuses to write out
            return DeliveryError(MESSAGE, f"cannot send this message: {exc}")
        except DeliveryError as exc:
            error = exc
            retryable = exc.kind == TEMPORARY or (exc.kind == AMBIGUOUS and resend_ambiguous)
            if not retryable or attempt == attempts - 1:
                break
            time.sleep(backoff * (2**attempt) * (0.5 + random.random()))
    return error
