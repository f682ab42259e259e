"""Signed unsubscribe tokens (with no expiry), and the queue that keeps an unsubscribe the
database could not take at the moment it came.

A token names the reader by the opaque id vote links carry (``readers.reader_id``), never
by the address: ``r.<reader id>.<HMAC-SHA256 tag>``. Digests sent before session 6 carry
``<base64 of the address>.<tag>``; those links are read as they always were, for good: an
unsubscribe must never fail because the format changed."""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Iterator
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


READER_PREFIX = "r."  # a token of the current form (no address form starts so: "r" is no base64)


def _tag(key: str, address: str) -> bytes:
    """The tag of the address form (digests sent before session 6)."""
    return hmac.new(key.encode(), b"unsubscribe:" + address.encode(), hashlib.sha256).digest()[:16]


def _reader_tag(key: str, reader_id: str) -> bytes:
    return hmac.new(
        key.encode(), b"unsubscribe-reader:" + reader_id.encode(), hashlib.sha256
    ).digest()[:16]


def make_token(key: str, reader_id: str) -> str:
    """The token for the reader with this opaque id; the same reader always gets the same."""
    return f"{READER_PREFIX}{reader_id}.{_b64(_reader_tag(key, reader_id))}"


def make_address_token(key: str, address: str) -> str:
    """The address form, for a digest rendered without a reader id (outside a run: no
    database to hold the id). Every digest a run sends has the reader form."""
    address = address.lower()
    return f"{_b64(address.encode())}.{_b64(_tag(key, address))}"


_MALFORMED = "this unsubscribe link is malformed; copy the whole link"
_FORGED = "this unsubscribe link was not issued by this paperpost (bad signature)"


def token_reader(key: str, token: str) -> str | None:
    """The reader id a token of the reader form was signed for (:class:`BadToken` if it
    was not); None for a token of the address form."""
    token = token.strip()
    if not token.startswith(READER_PREFIX):
        return None
    reader_id, _, tag = token.removeprefix(READER_PREFIX).partition(".")
    try:
        given = _unb64(tag)
    except (ValueError, binascii.Error):
        raise BadToken(_MALFORMED) from None
    if not reader_id or not hmac.compare_digest(given, _reader_tag(key, reader_id)):
        raise BadToken(_FORGED)
    return reader_id


def read_token(key: str, token: str, address_of: Callable[[str], str | None]) -> str:
    """The address a token was made for, or :class:`BadToken`. ``address_of`` maps a
    reader id to its address (``feedback.address_of`` on the store)."""
    token = token.strip()
    reader_id = token_reader(key, token)
    if reader_id is not None:
        address = address_of(reader_id)
        if address is None:
            raise BadToken(
                "this unsubscribe link names a reader this paperpost has no record of (was "
                "the database replaced?); ask whoever runs it to remove you"
            )
        return address
    try:  # the address form of digests sent before session 6
        body, tag = token.split(".", 1)
        address = _unb64(body).decode("utf-8")
        given = _unb64(tag)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadToken(_MALFORMED) from None
    if not hmac.compare_digest(given, _tag(key, address)):
        raise BadToken(_FORGED)
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


def queue_unsubscribe(
    state_dir: Path, at: str, address: str | None = None, reader: str | None = None
) -> None:
    """Keep an unsubscribe on disk (flushed and synced) until the database takes it: the
    address, or the reader id of a signed token when the database could not even say whose
    it is.

    An RFC 8058 one-click POST comes from the mailbox provider, which does not try again:
    a request answered "busy" would be lost and the reader would keep getting digests.
    """
    entry = {"address": address.lower()} if address else {"reader_id": str(reader)}
    with _locked(state_dir) as path:
        if path.exists() and any(
            {k: v for k, v in queued.items() if k != "at"} == entry for _, queued in _entries(path)
        ):
            return  # queued already: one line per reader, however often the link is posted
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({**entry, "at": at}) + "\n")
            out.flush()
            os.fsync(out.fileno())


def _entries(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(
                entry.get("address") or entry.get("reader_id"), str
            ):
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
        from paperpost.feedback import address_of

        entries = [entry for _, entry in _entries(path)]
        for entry in entries:
            at = entry.get("at", "?")
            address = entry.get("address") or address_of(store, entry["reader_id"])
            if address is None:  # a signed id the database does not know (replaced?)
                log.warning("queued unsubscribe of an unknown reader id skipped: %s", entry)
                continue
            store.suppress(address, "unsubscribed", f"queued at {at}: database busy")
        path.unlink()
    return len(entries)
