"""Signed unsubscribe tokens (the address and an HMAC-SHA256 tag, with no expiry), and the
queue that keeps an unsubscribe the database could not take at the moment it came."""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paperpost.store import Store

QUEUE = "unsubscribe-queue.jsonl"
log = logging.getLogger(__name__)


class BadToken(ValueError):
    """A token that was altered, truncated or signed with another key."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(key: str, address: str) -> bytes:
    return hmac.new(key.encode(), b"unsubscribe:" + address.encode(), hashlib.sha256).digest()[:16]


def make_token(key: str, address: str) -> str:
    """The token for ``address``; the same address always gets the same token."""
    address = address.lower()
    return f"{_b64(address.encode())}.{_b64(_tag(key, address))}"


def read_token(key: str, token: str) -> str:
    """The address a token was made for, or :class:`BadToken`."""
    try:
        body, tag = token.strip().split(".", 1)
        address = _unb64(body).decode("utf-8")
        given = _unb64(tag)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadToken("this unsubscribe link is malformed; copy the whole link") from None
    if not hmac.compare_digest(given, _tag(key, address)):
        raise BadToken("this unsubscribe link was not issued by this paperpost (bad signature)")
    return address


@contextmanager
def _locked(state_dir: Path) -> Iterator[Path]:
    """The queue file, under an exclusive lock shared by ``paperpost web`` and runs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / f"{QUEUE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield state_dir / QUEUE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def queue_unsubscribe(state_dir: Path, address: str, at: str) -> None:
    """Keep an unsubscribe on disk (flushed and synced) until the database takes it.

    An RFC 8058 one-click POST comes from the mailbox provider, which does not try again:
    a request answered "busy" would be lost and the reader would keep getting digests.
    """
    address = address.lower()
    with _locked(state_dir) as path:
        if path.exists() and address in {entry["address"] for _, entry in _entries(path)}:
            return  # queued already: one line per address, however often the link is posted
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"address": address, "at": at}) + "\n")
            out.flush()
            os.fsync(out.fileno())


def _entries(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("address"), str):
                yield number, entry
                continue
        except json.JSONDecodeError:
            pass
        # only a write cut short by a crash, before the request was answered, leaves this
        log.warning("%s:%d: not a queued unsubscribe, skipped: %.80r", path, number, line)


def apply_queued(state_dir: Path, store: Store) -> int:
    """Record every queued unsubscribe as a suppression, then empty the queue.

    Recording twice is harmless (a suppression is kept once), so a crash half-way only
    means the next call records the rest again. Returns how many addresses were queued.
    """
    if not (state_dir / QUEUE).exists():
        return 0
    with _locked(state_dir) as path:
        if not path.exists():
            return 0
        entries = [entry for _, entry in _entries(path)]
        for entry in entries:
            at = entry.get("at", "?")
            store.suppress(entry["address"], "unsubscribed", f"queued at {at}: database busy")
        path.unlink()
    return len(entries)
