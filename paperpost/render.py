"""Render digests: Jinja2 HTML (CSS inlined) + a plain-text part, as RFC 5322 messages.

Inlining: premailer is slow (milliseconds per document), so it runs once per
process, on a sample digest that uses every element of the template. From its
output we learn which attributes premailer gives each ``(tag, class)`` pair and
what is left of the ``<style>`` block (media queries); every real digest is then
rendered by Jinja and gets those attributes by one regex pass. Because the CSS
uses only class and element selectors, this gives the same elements and inline
styles as running premailer on each digest (``tests/test_render.py`` compares).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from functools import cached_property, lru_cache
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import cssutils
import jinja2
import lxml.html
from markupsafe import Markup
from premailer import Premailer

from paperpost.feedback import vote_expiry, vote_urls
from paperpost.models import Paper, normalize_space, pickled_by_fields
from paperpost.rank import Ranked
from paperpost.sanitize import NAME_CHARS, SUBJECT_CHARS, header_text, http_url, strip_bidi
from paperpost.unsubscribe import make_address_token, make_token

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
HTML_LIMIT = 95_000  # Gmail clips HTML parts over ~102 KB, hiding the unsubscribe link
ABSTRACT_CHARS = 450
RUN_CHARS = 30  # longest unbroken run shown in HTML; longer ones are cut in pieces of
PIECE_CHARS = 15  # at most 260 px at the title's 18 px (a phone's column is ~330 px)
LISTING_URL = "https://huggingface.co/papers"
_START_TAG = re.compile(r'<([a-z0-9]+)([^<>]*?) class="([^"]*)"')
_STYLE_BLOCK = re.compile(r"<style>.*?</style>", re.S)
PARTS_CACHED = 8192  # papers whose rendered card parts a renderer keeps

# Headers may be long (List-Unsubscribe URLs) but must not be RFC 2047-encoded to fit 78
POLICY = SMTP.clone(max_line_length=998)
cssutils.log.setLevel(logging.CRITICAL)  # premailer's CSS parser warns on email-only CSS


_RUNAWAY = re.compile(f"[^\\s\u200b]{{{RUN_CHARS + 1},}}")


def breakable(text: str) -> str:
    """Text with a zero-width space every PIECE_CHARS characters of an unbroken run longer
    than RUN_CHARS (a runaway "word" in a title, a long URL), so that it wraps in every
    mail client: otherwise the card table grows to fit it (Outlook's Word engine ignores
    CSS ``word-break``). The text part shows these fields through :func:`unbreak`."""
    return _RUNAWAY.sub(
        lambda m: "\u200b".join(
            m[0][i : i + PIECE_CHARS] for i in range(0, len(m[0]), PIECE_CHARS)
        ),
        text,
    )


def unbreak(text: str) -> str:
    """The text part's copy of a :func:`breakable` field: without the zero-width spaces
    (plain text wraps anywhere, and a reader who copies a model's name from it must get
    the name, not hidden characters that make a search fail)."""
    return text.replace("\u200b", "")


def shorten(text: str, limit: int = ABSTRACT_CHARS) -> str:
    """Cut at a word boundary near ``limit`` characters, with an ellipsis."""
    text = normalize_space(text)
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:.-—")
    return cut + "…"


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Reader:
    """Who a digest is for, as rendering needs it."""

    email: str
    name: str | None
    tags: tuple[str, ...]
    text_only: bool = False
    reader_id: str | None = None  # the opaque id vote links carry (paperpost.feedback)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Edition:
    """Per-run constants shared by every digest."""

    sender: str
    secret_key: str
    base_url: str | None
    day: date
    new_papers: int
    max_cards: int = 50


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Outgoing:
    """A rendered digest ready for a transport."""

    address: str
    digest: str
    lo: int
    hi: int
    message_id: str
    subject: str
    papers: int
    data: bytes


def _meta(paper: Paper) -> list[str]:
    meta = []
    if paper.organization:
        meta.append(paper.organization)
    if paper.author_count:
        meta.append(f"{paper.author_count} author{'s' if paper.author_count != 1 else ''}")
    if paper.published:
        meta.append(paper.published.strftime("%b %-d, %Y"))
    if paper.upvotes:
        meta.append(f"▲ {paper.upvotes} upvote{'s' if paper.upvotes != 1 else ''}")
    return meta


def _links(paper: Paper) -> list[tuple[str, str]]:
    links = []
    if paper.arxiv_id:
        links.append(("arXiv", f"https://arxiv.org/abs/{quote(paper.arxiv_id)}"))
    for label, url in (("Code", paper.github_repo), ("Project page", paper.project_page)):
        safe = http_url(url)
        if safe:
            links.append((label, safe))
    return links


class Card(NamedTuple):
    """What the templates show for one paper (attribute access keeps Jinja fast)."""

    title: str
    url: str
    tldr: str | None
    abstract: str
    abstract_text: str  # wrapped and indented for the text part
    meta: tuple[str, ...]
    links: tuple[tuple[str, str], ...]  # (label, url)
    matched: tuple[str, ...] = ()
    why: str = ""
    more_url: str | None = None  # "more like this" / "fewer like this" vote links
    fewer_url: str | None = None
    # the paper's own parts of the card as the templates render them (their blocks
    # paper_html, links_html, paper_text, links_text), made once per paper by
    # Renderer.paper_parts; None: the templates render those parts in place
    paper_html: str | None = None
    links_html: str | None = None
    paper_text: str | None = None
    links_text: str | None = None


def card(item: Ranked) -> Card:
    """A paper's card with why it is in this reader's digest."""
    return paper_card(item.paper)._replace(matched=item.matched, why=item.why)


@lru_cache(maxsize=8192)
def paper_card(paper: Paper) -> Card:
    """The reader-independent part of a card (cached: every reader of a paper shares it).
    Runaway words are broken up here once (:func:`breakable`), not per digest."""
    abstract = shorten(paper.abstract)
    return Card(
        title=breakable(normalize_space(paper.title)),
        url=http_url(paper.url) or LISTING_URL,
        tldr=breakable(normalize_space(paper.ai_summary)) if paper.ai_summary else None,
        abstract=breakable(abstract),
        abstract_text=textwrap.fill(
            abstract, 75, initial_indent="   ", subsequent_indent="   ", break_on_hyphens=False
        ),
        meta=tuple(breakable(m) for m in _meta(paper)),
        links=tuple(_links(paper)),
    )


def sender_domain(sender: str) -> str:
    """The domain of the sender's address (Message-IDs, List-Id, the unsubscribe mailto, the
    VERP bounce address): from the parsed address, never from an ``@`` in the display name
    (``"ML@ACME-Lab.com digest" <digest@news.example.org>``)."""
    _, at, domain = parseaddr(sender)[1].rpartition("@")
    return domain if at and re.fullmatch(r"[A-Za-z0-9.-]+", domain) else "paperpost.invalid"


def message_hash(key: str, address: str, digest: str) -> str:
    """The local part of a digest's Message-ID: an HMAC of (subscriber, digest) with
    ``PAPERPOST_SECRET_KEY``. Deterministic, so a resend is recognisably the same message,
    and nobody without the key can compute it, so a report that names it is about a digest
    we sent. (Until session 6 it was an unkeyed hash of the address and the digest window,
    which anyone could compute: ledger rows with such ids are matched only by VERP.)"""
    message = f"message-id:{address.lower()}|{digest}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:32]


def message_id(key: str, address: str, digest: str, sender: str) -> str:
    return f"<{message_hash(key, address, digest)}@{sender_domain(sender)}>"


def subject_line(items: Sequence[Ranked]) -> str:
    """The Subject: the count and the top title, through the header sanitiser."""
    return _subject(len(items), items[0].paper.title if items else "")


@lru_cache(maxsize=4096)  # shared by every reader with the same count and top paper
def _subject(count: int, top: str) -> str:
    line = f"{count} new paper{'s' if count != 1 else ''} for you: {top}"
    return header_text(line, SUBJECT_CHARS)


class Renderer:
    """Templates loaded once; premailer's result learned once (lazily)."""

    def __init__(self, templates: Path = TEMPLATES_DIR) -> None:
        loader = jinja2.FileSystemLoader(templates)
        self.html_env = jinja2.Environment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined
        )
        self.html_env.filters["breakable"] = breakable
        self.text_env = jinja2.Environment(
            loader=loader,
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        self.text_env.filters["unbreak"] = unbreak
        self.html_template = self.html_env.get_template("digest.html.j2")
        self.text_template = self.text_env.get_template("digest.txt.j2")
        self._parts: dict[Paper, Card] = {}

    # --- HTML ----------------------------------------------------------------------------

    def html_unstyled(self, context: dict[str, object]) -> str:
        """The template rendered, CSS still in its ``<style>`` block."""
        return self.html_template.render(**context)

    @staticmethod
    def premailer(html: str) -> str:
        """Inline CSS with premailer: no network, ``!important`` kept, no warnings."""
        return Premailer(
            html,
            allow_network=False,
            strip_important=False,
            keep_style_tags=False,
            disable_validation=True,
            cssutils_logging_level=logging.CRITICAL,
            remove_classes=False,
        ).transform(pretty_print=False)

    @cached_property
    def styled_template(self) -> jinja2.Template:
        """The HTML template with premailer's inline styles written into its tags.

        premailer runs once, on a sample digest that uses every element; the attributes
        it gives each ``(tag, class)`` pair are copied into the template's own tags and
        the ``<style>`` block is replaced by what premailer left of it (media queries).
        Rendering this template then yields what premailer would, with no per-digest work.
        """
        plain = self.html_unstyled(sample_context())
        before = lxml.html.document_fromstring(plain)
        after = lxml.html.document_fromstring(self.premailer(plain))
        learned: dict[tuple[str, str], str] = {}
        for old, new in zip(before.iter(), after.iter(), strict=True):
            classes = old.get("class") if isinstance(old.tag, str) else None
            if classes is None:
                continue
            extra = {k: v for k, v in new.attrib.items() if old.get(k) != v}
            text = "".join(f' {k}="{_attr(v)}"' for k, v in sorted(extra.items()))
            if learned.setdefault((old.tag, classes), text) != text:
                raise ValueError(
                    f"templates/digest.html.j2: <{old.tag} class={classes!r}> is styled "
                    "differently in different places; use class and element selectors only"
                )
        head_css = "".join(lxml.html.tostring(s, encoding="unicode") for s in after.iter("style"))

        def attrs(match: re.Match[str]) -> str:
            extra = learned.get((match[1], match[3]))
            if extra is None:
                raise ValueError(
                    f"templates/digest.html.j2: <{match[1]} class={match[3]!r}> is not in the "
                    "sample digest (render.sample_context); add it there"
                )
            return match[0] + extra

        loader = self.html_env.loader
        assert loader is not None
        source = loader.get_source(self.html_env, "digest.html.j2")[0]
        styled = _START_TAG.sub(attrs, source)
        styled = _STYLE_BLOCK.sub(lambda _: "{% raw %}" + head_css + "{% endraw %}", styled, 1)
        return self.html_env.from_string(styled)

    def html(self, context: dict[str, object]) -> str:
        """The digest with inline styles, as premailer would produce it (no bidi controls)."""
        return strip_bidi(self.styled_template.render(**context))

    def text(self, context: dict[str, object]) -> str:
        return strip_bidi(self.text_template.render(**context))

    # --- messages --------------------------------------------------------------------------

    def paper_parts(self, paper: Paper) -> Card:
        """The paper's card with its own parts rendered (the templates' paper and links
        blocks, HTML with inline styles and text): made once per paper and renderer, so
        that a digest renders only what is its reader's (rank, matched tags, why, votes)."""
        parts = self._parts.get(paper)
        if parts is None:
            if len(self._parts) >= PARTS_CACHED:
                self._parts.clear()
            base = paper_card(paper)
            html, text = self.styled_template, self.text_template
            html_context = html.new_context({"card": base})
            text_context = text.new_context({"card": base})
            parts = self._parts[paper] = base._replace(
                paper_html=Markup("".join(html.blocks["paper_html"](html_context))),
                links_html=Markup("".join(html.blocks["links_html"](html_context))),
                paper_text="".join(text.blocks["paper_text"](text_context)),
                links_text="".join(text.blocks["links_text"](text_context)),
            )
        return parts

    def context(
        self,
        reader: Reader,
        items: Sequence[Ranked],
        edition: Edition,
        unsubscribe_url: str,
        digest: str | None = None,
    ) -> dict[str, object]:
        cards = [
            self.paper_parts(item.paper)._replace(matched=item.matched, why=item.why)
            for item in items[: edition.max_cards]
        ]
        if reader.reader_id and edition.base_url and digest:
            expires = vote_expiry(edition.day)
            for i, item in enumerate(items[: len(cards)]):
                more, fewer = vote_urls(
                    edition.secret_key,
                    edition.base_url,
                    reader.reader_id,
                    item.paper,
                    digest,
                    expires,
                )
                cards[i] = cards[i]._replace(more_url=more, fewer_url=fewer)
        count = len(items)
        topics = sorted({tag for item in items for tag in item.matched}, key=str.lower)
        return {
            "subject": subject_line(items),
            "preheader": shorten(
                f"{count} new paper{'s' if count != 1 else ''} on "
                f"{', '.join(topics) or 'your topics'}"
                f" — top: {', '.join(c.title for c in cards[:3])}",
                180,
            ),
            "date_label": edition.day.strftime("%A, %b %-d, %Y"),
            "headline": f"{count} new paper{'s' if count != 1 else ''} for you",
            "counts": f"Picked for {', '.join(reader.tags)} from {edition.new_papers} new "
            f"paper{'s' if edition.new_papers != 1 else ''} on Hugging Face Daily Papers.",
            "cards": cards,
            "more": count - len(cards),
            "more_url": LISTING_URL,
            "reader": reader.email,
            "tags": list(reader.tags),
            "unsubscribe_url": unsubscribe_url,
        }

    def render(
        self, reader: Reader, items: Sequence[Ranked], edition: Edition, lo: int, hi: int
    ) -> Outgoing:
        """One subscriber's digest as message bytes, kept under Gmail's clipping limit."""
        digest = f"{lo}-{hi}"
        msg_id = message_id(edition.secret_key, reader.email, digest, edition.sender)
        token = (  # the opaque id, never the address (a link is seen by proxies, scanners)
            make_token(edition.secret_key, reader.reader_id)
            if reader.reader_id
            else make_address_token(edition.secret_key, reader.email)
        )
        mailto = f"mailto:unsubscribe@{sender_domain(edition.sender)}?subject=unsubscribe%20{token}"
        web = f"{edition.base_url}/unsubscribe/{token}" if edition.base_url else None
        context = self.context(reader, items, edition, web or mailto, digest)
        html = None
        if not reader.text_only:
            html = self.html(context)
            cards = list(context["cards"])  # type: ignore[call-overload]
            while (
                len(html) > HTML_LIMIT // 4 and len(html.encode()) > HTML_LIMIT and len(cards) > 1
            ):
                keep = max(1, int(len(cards) * HTML_LIMIT / len(html.encode())) - 1)
                cards = cards[:keep]
                context = {**context, "cards": cards, "more": len(items) - keep}
                html = self.html(context)
        text = self.text(context)

        # Third-party values (name, subject) are sanitised (paperpost.sanitize), then
        # written as the SMTP policy folds them (reader_headers); the rest are ASCII
        # values paperpost makes.
        mime_head, body = mime_body(text, html, msg_id)
        unsubscribe = ", ".join(f"<{u}>" for u in (web, mailto) if u)
        head = (
            edition_headers(edition)
            + reader_headers(
                header_text(reader.name or "", NAME_CHARS), reader.email, str(context["subject"])
            )
            + (f"Message-ID: {msg_id}\r\nList-Unsubscribe: {unsubscribe}\r\n").encode("ascii")
            + mime_head
            + b"\r\n"
        )
        return Outgoing(
            address=reader.email.lower(),
            digest=digest,
            lo=lo,
            hi=hi,
            message_id=msg_id,
            subject=str(context["subject"]),
            papers=len(context["cards"]),  # type: ignore[arg-type]
            data=head + body,
        )


@lru_cache(maxsize=16)
def edition_headers(edition: Edition) -> bytes:
    """Headers every digest of a run shares, built once with EmailMessage."""
    message = EmailMessage(policy=POLICY)
    message["From"] = edition.sender
    message["Date"] = format_datetime(datetime.now(UTC))
    message["List-Id"] = f"paperpost digest <digest.{sender_domain(edition.sender)}>"
    if edition.base_url:
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    return b"".join(POLICY.fold_binary(k, v) for k, v in message.items())


# Display names and addresses the SMTP policy writes exactly as given (no quoting, no
# RFC 2047), and subject text it leaves alone: printable ASCII, single spaces, no "=?".
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+( [A-Za-z0-9!#$%&'*+/^_`{|}~-]+)*")
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*"
)
_PLAIN_TEXT = re.compile(r"[!-~]+( [!-~]+)*")


def reader_headers(name: str, email: str, subject: str) -> bytes:
    """``To`` and ``Subject`` as the SMTP policy folds them.

    Reader-controlled values go through EmailMessage (quoting, RFC 2047, no CR/LF), which
    costs about half a millisecond a message; values that policy would write unchanged
    (plain ASCII words, an unquoted address, a short one-line subject) are written
    directly, and a subject (shared by every reader with the same top paper and count) is
    folded once. ``tests/test_render.py`` checks both paths give the same bytes.
    """
    to = f"{name} <{email}>" if name else email
    if (
        (not name or _PLAIN_NAME.fullmatch(name))
        and _PLAIN_ADDRESS.fullmatch(email)
        and len(to) < 900
    ):
        head = f"To: {to}\r\n".encode("ascii")
    else:
        head = _folded("To", Address(display_name=name, addr_spec=email))
    return head + _subject_header(subject)


@lru_cache(maxsize=4096)
def _subject_header(subject: str) -> bytes:
    if _PLAIN_TEXT.fullmatch(subject) and "=?" not in subject and len(subject) < 900:
        return f"Subject: {subject}\r\n".encode("ascii")
    return _folded("Subject", subject)


def _folded(name: str, value: object) -> bytes:
    message = EmailMessage(policy=POLICY)
    message[name] = value
    return b"".join(POLICY.fold_binary(k, v) for k, v in message.items())


_QP_LINES: dict[str, bytes] = {}
_QP_CACHE_LIMIT = 50_000


def _qp(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends (binascii's C encoder), line by line.

    Quoted-printable encodes each line on its own, so a digest's encoding is the join of
    its lines' encodings; lines every digest shares (the template, a paper's card) are
    encoded once and remembered, leaving only each reader's own lines to encode.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the text ended with a line break; set_content adds one otherwise
    cache = _QP_LINES
    if len(cache) > _QP_CACHE_LIMIT:
        cache.clear()
    out = list(map(cache.get, lines))  # one C loop over the lines; None where not known
    if None in out:
        for i, line in enumerate(lines):
            if out[i] is None:
                out[i] = cache[line] = binascii.b2a_qp((line + "\r\n").encode("utf-8"), istext=True)
    return b"".join(out)  # type: ignore[arg-type]


def mime_body(text: str, html: str | None, msg_id: str) -> tuple[bytes, bytes]:
    """The MIME headers and the encoded body of a digest.

    The standard library's ``set_content``/``add_alternative`` cost about a millisecond
    a message; the parts here are the same (UTF-8, quoted-printable, CRLF) but encoded
    by binascii. The boundary starts with ``=_``, which quoted-printable text cannot
    contain, so it never collides with the content.
    """
    if html is None:
        return _TEXT_PART_HEADERS, _qp(text)
    boundary = "=_pp_" + hashlib.sha256(msg_id.encode()).hexdigest()[:24]
    head = (
        f'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="{boundary}"\r\n'
    ).encode("ascii")
    mark = f"--{boundary}\r\n".encode()
    body = b"".join(
        (
            mark,
            _TEXT_PART_HEADERS[len(b"MIME-Version: 1.0\r\n") :],
            b"\r\n",
            _qp(text),
            b"\r\n",
            mark,
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(html),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    return head, body


_TEXT_PART_HEADERS = (
    b'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
)


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def sample_context() -> dict[str, object]:
    """A digest that uses every element of the template (for learning inline styles)."""
    paper = Paper(
        title="Sample",
        abstract="Sample abstract.",
        arxiv_id="2401.00001",
        author_count=3,
        organization="Org",
        published=date(2024, 1, 1),
        upvotes=3,
        ai_summary="Sample TL;DR.",
        github_repo="https://github.com/example/example",
        project_page="https://example.org",
    )
    item = Ranked(paper, 1.0, ("sample",), 'title: "sample"')
    return {
        "subject": "Sample",
        "preheader": "Sample",
        "date_label": "Monday",
        "headline": "Sample",
        "counts": "Sample",
        "cards": [
            card(item)._replace(
                more_url="https://example.org/vote/more/x",
                fewer_url="https://example.org/vote/fewer/x",
            )
        ]
        * 2,
        "more": 2,
        "more_url": LISTING_URL,
        "reader": "reader@example.org",
        "tags": ["sample"],
        "unsubscribe_url": "https://example.org/unsubscribe/x",
    }
