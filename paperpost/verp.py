"""VERP: a per-message envelope sender, so that every bounce names one address and one digest.

The envelope sender of a digest is ``bounces+<hash>-<signature>@<domain>``: ``<hash>`` is
the hash part of the digest's Message-ID (which the delivery ledger stores next to the
address and digest), ``<signature>`` an HMAC of it with ``PAPERPOST_SECRET_KEY``, like the
unsubscribe token. Nothing in it is readable (no address, no internal id), and a bounce
for a token paperpost did not sign is ignored. Lower-case hex only: some mail systems
change the case of local parts.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from paperpost.render import sender_domain
from paperpost.settings import Settings

HASH = re.compile(r"<([0-9a-f]{32})@")
TOKEN = re.compile(r"\+([0-9a-f]{32})-([0-9a-f]{20})@", re.IGNORECASE)


def _signature(key: str, digest_hash: str) -> str:
    return hmac.new(key.encode(), b"bounce:" + digest_hash.encode(), hashlib.sha256).hexdigest()[
        :20
    ]


def bounce_base(settings: Settings) -> tuple[str, str]:
    """The local part and domain VERP addresses are built on (``PAPERPOST_BOUNCE_ADDRESS``,
    by default ``bounces@`` the sender's domain)."""
    base = settings.bounce_address or f"bounces@{sender_domain(settings.sender)}"
    local, _, domain = base.rpartition("@")
    return local, domain


def envelope_sender(settings: Settings, message_id: str) -> str:
    """The VERP return path for a digest with this Message-ID."""
    local, domain = bounce_base(settings)
    match = HASH.match(message_id)
    if match is None:  # not a paperpost Message-ID: the plain bounce address
        return f"{local}@{domain}"
    key = settings.secret_key.get_secret_value()
    return f"{local}+{match[1]}-{_signature(key, match[1])}@{domain}"


def read_verp(key: str, text: str) -> str | None:
    """The Message-ID hash in the first correctly signed VERP address found in ``text``."""
    for match in TOKEN.finditer(text):
        digest_hash, signature = match[1].lower(), match[2].lower()
        if hmac.compare_digest(signature, _signature(key, digest_hash)):
            return digest_hash
    return None
