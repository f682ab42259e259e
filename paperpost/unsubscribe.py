"""Signed unsubscribe tokens: the address and an HMAC-SHA256 tag, with no expiry."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac


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
