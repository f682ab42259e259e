"""Deliver rendered digests, exactly once, through the ledger in the database.

Two transports share one small interface: :class:`Outbox` writes ``.eml`` files
(atomically, named per subscriber and digest, so a rerun cannot make a second
copy) and :class:`Smtp` talks to a mail server. :func:`send_batch` wraps every
transport call in the ledger: ``sending`` is committed before the call and
``sent`` (with the subscriber's cursor) after it, so a crash in between leaves a
row that the next run reports as ambiguous instead of silently resending.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import random
import re
import smtplib
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from paperpost.render import Outgoing
from paperpost.settings import Settings
from paperpost.store import Store

ERROR_SAMPLE = 20  # deliveries tried before the error rate can pause a run
PAUSE_CHECK_EVERY = 25  # messages between looks at whether another batch paused the run
TEMPORARY = "temporary"  # 4xx, dropped connection: retry with backoff
PERMANENT = "permanent"  # 5xx for this recipient: record, suppress, never retry
FATAL = "fatal"  # the transport itself is misconfigured (login refused): stop the batch


class DeliveryError(Exception):
    """A transport failure, classified as ``temporary`` (retry) or ``permanent``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Transport(Protocol):
    def send(self, outgoing: Outgoing) -> None: ...

    def delivered(self, address: str, digest: str) -> bool | None:
        """True/False when the transport can tell whether a message went out, else None."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    address: str
    digest: str
    status: str  # sent, failed, retry, ambiguous, already-sent
    papers: int
    detail: str = ""


# --- outbox ----------------------------------------


def outbox_name(address: str, digest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", address.lower())[:80]
    tag = hashlib.sha256(f"{address.lower()}|{digest}".encode()).hexdigest()[:8]
    return f"{safe}_{digest}_{tag}.eml"


class Outbox:
    """``.eml`` files in a folder: one per (subscriber, digest), written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, address: str, digest: str) -> Path:
        return self.folder / outbox_name(address, digest)

    def send(self, outgoing: Outgoing) -> None:
        target = self.path(outgoing.address, outgoing.digest)
        if target.exists():
            return
        try:
            fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
            with os.fdopen(fd, "wb") as handle:
                handle.write(outgoing.data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except OSError as exc:
            raise DeliveryError(TEMPORARY, f"cannot write {target}: {exc.strerror}") from None

    def delivered(self, address: str, digest: str) -> bool | None:
        return self.path(address, digest).exists()

    def close(self) -> None:
        return None


# --- SMTP ----------------------------------------


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
            if s.smtp_security == "tls":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=self._context
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if conn.sock is not None:  # Nagle + delayed ACK stalls pipelined SMTP commands
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.ehlo()
            if s.smtp_security == "starttls":
                conn.starttls(context=self._context)
                conn.ehlo()
            if s.smtp_username and s.smtp_password is not None:
                conn.login(s.smtp_username, s.smtp_password.get_secret_value())
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                FATAL,
                f"SMTP login refused ({exc.smtp_code}); check PAPERPOST_SMTP_USERNAME"
                " and PAPERPOST_SMTP_PASSWORD",
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(
                TEMPORARY, f"cannot connect to {s.smtp_host}:{s.smtp_port}: {_describe(exc)}"
            ) from None
        return conn

    def send(self, outgoing: Outgoing) -> None:
        if self._conn is None or self._sent_on_conn >= self.recycle_after:
            self.close()
            self._conn = self._connect()
            self._sent_on_conn = 0
        sender = _envelope_sender(self.settings.sender)
        try:
            refused = self._conn.sendmail(sender, [outgoing.address], outgoing.data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, message = next(iter(exc.recipients.values()))
            raise _classified(code, message) from None
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                self.close()
            raise _classified(exc.smtp_code, exc.smtp_error) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._conn = None
            raise DeliveryError(TEMPORARY, f"connection lost: {_describe(exc)}") from None
        if refused:
            code, message = next(iter(refused.values()))
            raise _classified(code, message)
        self._sent_on_conn += 1

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

    def send(self, outgoing: Outgoing) -> None:
        if self.bucket is not None:
            self.bucket.acquire()
        conn = self.connections.get()
        try:
            conn.send(outgoing)
        finally:
            self.connections.put(conn)

    def delivered(self, address: str, digest: str) -> bool | None:
        return None

    def close(self) -> None:
        while not self.connections.empty():
            self.connections.get().close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _classified(code: int, message: bytes | str) -> DeliveryError:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    kind = PERMANENT if 500 <= code < 600 else TEMPORARY
    return DeliveryError(kind, f"{code} {text}".strip())


def _envelope_sender(sender: str) -> str:
    match = re.search(r"<([^>]+)>", sender)
    return match[1] if match else sender.strip()


def transport_for(settings: Settings) -> Transport:
    if settings.delivery == "smtp":
        return SmtpPool(settings)
    return Outbox(settings.outbox_dir)


# --- the ledger around each transport call ----------------------------------------


def resolve_interrupted(store: Store, transport: Transport, resend: bool) -> list[Outcome]:
    """Settle deliveries a crashed run left in ``sending``, before anything else is sent.

    When the transport can tell (the outbox can), the row becomes ``sent`` or is
    retried. Otherwise it is *ambiguous*: by default it counts as delivered (the
    cursor moves past it, nothing is resent) and is reported; with ``resend`` it is
    released so the subscriber's next digest covers those papers again.
    """
    outcomes = []
    for address, digest, hi, _message_id in store.interrupted():
        known = transport.delivered(address, digest)
        if known:
            store.settle(address, digest, "sent", hi, None)
            outcomes.append(Outcome(address, digest, "sent", 0, "confirmed after a crash"))
        elif known is False or resend:
            store.settle(address, digest, "released", hi, "interrupted; will be resent")
        else:
            store.settle(address, digest, "ambiguous", hi, "interrupted mid-send; not resent")
            outcomes.append(
                Outcome(
                    address,
                    digest,
                    "ambiguous",
                    0,
                    "a crash interrupted this send; "
                    "it may or may not have arrived (set PAPERPOST_RESEND_AMBIGUOUS=true "
                    "to resend such digests)",
                )
            )
    return outcomes


def send_batch(
    store: Store,
    transport: Transport,
    outgoing: Sequence[Outgoing],
    run_id: int,
    attempts: int = 3,
    backoff: float = 1.0,
    workers: int = 1,
    max_error_rate: float = 1.0,
) -> list[Outcome]:
    """Send each digest once: skip what the ledger says is done, retry 4xx, suppress 5xx.

    ``workers`` messages are in flight at a time (the transport must be thread-safe).
    Once at least ERROR_SAMPLE messages were tried and more than ``max_error_rate`` of
    them failed, the run pauses: the rest are left for the next run, and the reason is
    recorded on the run so every batch of it stops.
    """
    lock = threading.Lock()
    tried = failed = seen = 0
    paused: str | None = store.pause_reason(run_id)

    def one(message: Outgoing) -> Outcome:
        nonlocal tried, failed, seen, paused
        with lock:
            seen += 1
            if not paused and seen % PAUSE_CHECK_EVERY == 0:  # another batch may have paused
                paused = store.pause_reason(run_id)
        if paused:
            return Outcome(
                message.address, message.digest, "retry", message.papers, f"not attempted: {paused}"
            )
        claim = store.claim(
            message.address, message.digest, message.lo, message.hi, message.message_id, run_id
        )
        if not claim.proceed:
            return Outcome(
                message.address, message.digest, "already-" + claim.status, message.papers
            )
        error = _send_with_retries(transport, message, attempts, backoff)
        with lock:
            tried += 1
            failed += error is not None
            rate = failed / tried
            if error is not None and error.kind == FATAL:
                store.pause_run(run_id, f"delivery stopped: {error.detail}")
                paused = store.pause_reason(run_id)
            elif tried >= ERROR_SAMPLE and rate > max_error_rate and not paused:
                store.pause_run(
                    run_id,
                    f"paused: {failed} of {tried} deliveries failed ({rate:.0%}, over the "
                    f"{max_error_rate:.0%} threshold); check the mail server, then run again",
                )
                paused = store.pause_reason(run_id)
        if error is None:
            store.settle(message.address, message.digest, "sent", message.hi, None)
            return Outcome(message.address, message.digest, "sent", message.papers)
        if error.kind == PERMANENT:
            store.settle(message.address, message.digest, "failed", message.hi, error.detail)
            store.suppress(message.address, "bounced", error.detail)
            return Outcome(
                message.address,
                message.digest,
                "failed",
                message.papers,
                f"permanent: {error.detail}; address suppressed",
            )
        store.settle(message.address, message.digest, "retry", message.hi, error.detail)
        return Outcome(
            message.address,
            message.digest,
            "retry",
            message.papers,
            f"temporary: {error.detail}; will retry next run",
        )

    if workers <= 1:
        return [one(message) for message in outgoing]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="send") as pool:
        return list(pool.map(one, outgoing))


def _send_with_retries(
    transport: Transport, message: Outgoing, attempts: int, backoff: float
) -> DeliveryError | None:
    """None when sent; the last error otherwise (4xx and dropped connections are retried
    with exponential backoff and jitter; 5xx and fatal errors are not)."""
    error: DeliveryError | None = None
    for attempt in range(attempts):
        try:
            transport.send(message)
            return None
        except DeliveryError as exc:
            error = exc
            if exc.kind != TEMPORARY or attempt == attempts - 1:
                break
            time.sleep(backoff * (2**attempt) * (0.5 + random.random()))
    return error
