"""Hostile titles, names and keywords cannot add a header or a body (run on Python 3.11).

Each digest's bytes are parsed back with the email package; the header names, the single
recipient and the two body parts must be exactly what paperpost writes.
"""

from __future__ import annotations

import base64
import email
import quopri
from datetime import date
from email import policy
from email.message import EmailMessage
from urllib.parse import urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import FULL_TESTS
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, Ranked, rank
from paperpost.render import Edition, Reader, Renderer
from paperpost.sanitize import (
    BIDI,
    NAME_CHARS,
    REPLY_CHARS,
    SUBJECT_CHARS,
    header_text,
    http_url,
    reply_text,
)

EDITION = Edition(
    "paperpost <digest@example.org>", "secret", "https://pp.example.org", date(2026, 11, 25), 3
)
INJECTED = "Bcc: victim@evil.example"
EVIL_BODY = "<h1>Your account is locked</h1>"
RENDERER = Renderer()


def q_word(payload: str, charset: str = "utf-8") -> str:
    encoded = quopri.encodestring(payload.encode(), header=True).decode().replace("=\n", "")
    return f"=?{charset}?q?{encoded}?="


def b_word(payload: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(payload.encode()).decode()}?="


HOSTILE = [
    q_word(f"Hello\r\n{INJECTED}"),
    "=?utf-8?q?Hello=0D=0ABcc:_victim@evil.example?=",  # as the adversarial pass found it
    b_word(f"Hello\r\n\r\n{EVIL_BODY}"),
    b_word(f"x\r\nContent-Type: text/html\r\n\r\n{EVIL_BODY}"),
    f"Hello\r\n{INJECTED}",
    f"Hello\n\n{EVIL_BODY}",
    "Hello\x00\x0b\x1b[31m\u2028Bcc: victim@evil.example",
    "evil\u202egnp.exe cool paper",
    "=?=?utf-8?q?=0D=0A?=?=",
]


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def assert_only_our_headers_and_bodies(data: bytes, address: str) -> EmailMessage:
    msg = parse(data)
    assert list(msg.keys()) == HEADERS  # the same as a harmless digest's
    assert not msg.defects
    assert [a.addr_spec for a in msg["To"].addresses] == [address]
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [list(p.keys()) for p in parts] == [["Content-Type", "Content-Transfer-Encoding"]] * 2
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert not [line for line in head.split("\r\n") if line.lower().startswith("bcc")]
    for value in (msg["Subject"], msg["To"]):
        assert not set(str(value)) & set("\r\n\x00\u202e")
        assert "=?" not in str(value)
    for part in parts:
        assert not BIDI.search(part.get_content())
    return msg


def digest(title: str, name: str, keyword: str) -> tuple[bytes, str]:
    paper = Paper(title=title, abstract=f"An abstract about agents. {title}", arxiv_id="2611.1")
    item = Ranked(paper, 1.0, ("agents", keyword), f'keyword "{keyword}" in the title')
    reader = Reader("ann@example.org", name, ("agents", keyword))
    return RENDERER.render(reader, [item], EDITION, 0, 1).data, reader.email


HEADERS = list(parse(digest("Agents for tool use", "Ann Example", "tools")[0]).keys())


def test_hostile_titles_names_and_keywords_add_no_header_or_body() -> None:
    for hostile in HOSTILE:
        data, address = digest(f"Agents {hostile} for tool use", hostile, hostile)
        msg = assert_only_our_headers_and_bodies(data, address)
        assert str(msg["Subject"]).startswith("1 new paper for you: Agents ")
        html = msg.get_body(("html",)).get_content()
        assert EVIL_BODY not in html  # autoescaped where it appears at all


def test_a_hostile_keyword_through_the_ranker(tmp_path) -> None:
    keyword = f"agents {q_word(chr(13) + chr(10) + INJECTED)} \u202e"
    paper = Paper(title=f"Tool-using {keyword} agents", abstract="LLM agents that use tools.")
    items = rank([paper], Profile((Interest("agents", 1.0, (keyword,)),)))
    assert items
    reader = Reader("ann@example.org", keyword, ("agents",))
    out = RENDERER.render(reader, items, EDITION, 0, 1)
    assert_only_our_headers_and_bodies(out.data, reader.email)


def test_right_to_left_override_never_reaches_subject_or_bodies() -> None:
    data, address = digest("Safe \u202eelif.exe\u202c paper \u2067isolate\u2069", "Ann", "x")
    msg = assert_only_our_headers_and_bodies(data, address)
    assert str(msg["Subject"]) == "1 new paper for you: Safe elif.exe paper isolate"


def test_header_text_caps_length_at_a_word_boundary() -> None:
    capped = header_text("word " * 100, SUBJECT_CHARS)
    assert len(capped) <= SUBJECT_CHARS and capped.endswith("word…")
    assert header_text("x" * 10_000, NAME_CHARS) == "x" * (NAME_CHARS - 1) + "…"
    assert header_text("  Ann \t Example ", NAME_CHARS) == "Ann Example"


def test_look_alike_letters_of_another_script_leave_subject_but_not_the_body() -> None:
    # before: "Аgents that Plаn" (Cyrillic А and а) reached Subject as written
    data, address = digest("\u0410gents that Pl\u0430n for GPT-4\u043e", "J\u043ehn", "x")
    msg = assert_only_our_headers_and_bodies(data, address)
    assert str(msg["Subject"]) == "1 new paper for you: Agents that Plan for GPT-4o"
    assert msg["To"].addresses[0].display_name == "John"
    html = msg.get_body(("html",)).get_content()
    assert "\u0410gents that Pl\u0430n for GPT-4\u043e" in html  # the body keeps the text


def test_words_in_one_script_and_real_mixed_names_are_kept() -> None:
    for kept in (
        "Модель о GPT",  # a Cyrillic line: its "о" is a Cyrillic word
        "βVAE and αSyn and μP",  # Greek letters with no Latin look-alike in names
        "Café Ünïcode naïve",
        "Diffusion for 中文 Text",
    ):
        assert header_text(kept, SUBJECT_CHARS) == kept
    assert header_text("Москвa и Питер", SUBJECT_CHARS) == "Москва и Питер"  # Latin a
    assert header_text("Р\u0430\u0443р\u0430l login", SUBJECT_CHARS) == "Paypal login"


# --- properties --------------------------------------------------------------------------

NASTY = "\r\n\t\x00\x0b\x0c\x1b\x7f\x85\u2028\u2029\u200b\u200e\u202a\u202e\u2066\u2069\ufeff"
SPECIALS = "=?_:;,<>\"'()[]\\@. "
# invisible but "printable": before, they reached Subject (a title of Hangul fillers
# looked blank; a grapheme joiner or variation selector hid inside words)
INVISIBLE = "\u034f\u115f\u1160\u17b4\u3164\uffa0\u2800\ufe0f\U000e0100"


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    payload = draw(
        st.lists(
            st.sampled_from(
                ["\r\n", "\r\n\r\n", INJECTED, EVIL_BODY, "Content-Type: text/html", "x", "\u202e"]
            ),
            max_size=4,
        ).map("".join)
    )
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii", "x-unknown"]))
    encode = draw(st.sampled_from([q_word, b_word]))
    try:
        return encode(payload, charset)
    except UnicodeEncodeError:
        return encode(payload)


hostile_text = st.lists(
    st.one_of(
        st.text(
            alphabet=st.characters(codec="utf-8") | st.sampled_from(NASTY + SPECIALS + INVISIBLE)
        ),
        encoded_words(),
    ),
    max_size=4,
).map("".join)


@settings(max_examples=600 if FULL_TESTS else 100, deadline=None)
@given(title=hostile_text, name=hostile_text, keyword=hostile_text)
def test_any_title_name_and_keyword_keep_the_message_shape(
    title: str, name: str, keyword: str
) -> None:
    data, address = digest(title or "x", name, keyword)
    assert_only_our_headers_and_bodies(data, address)


@given(text=hostile_text, limit=st.integers(min_value=2, max_value=200))
@example(text=INVISIBLE, limit=110)
@example(text="Agents\u3164\u2800 plan\u034fning", limit=110)
def test_header_text_is_one_safe_line(text: str, limit: int) -> None:
    value = header_text(text, limit)
    assert len(value) <= limit
    assert "=?" not in value and not BIDI.search(value)
    assert value.isprintable() and value == value.strip()
    assert not any(ch in INVISIBLE for ch in value)


LOOK_ALIKES = {
    "A": "\u0410",
    "a": "\u0430",
    "e": "\u0435",
    "o": "\u043e",
    "p": "\u0440",
    "c": "\u0441",
    "x": "\u0445",
    "O": "\u039f",
    "T": "\u03a4",
    "H": "\u041d",
}


@st.composite
def spoofed_lines(draw: st.DrawFn) -> tuple[str, str]:
    """A Latin line, and the same line with some of its letters (under half) swapped for
    Cyrillic or Greek look-alikes."""
    words = draw(st.lists(st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True), min_size=1, max_size=8))
    line = " ".join(words)
    where = [i for i, ch in enumerate(line) if ch in LOOK_ALIKES]
    letters = sum(ch.isalpha() for ch in line)
    swap = draw(st.sets(st.sampled_from(where), max_size=(letters - 1) // 2)) if where else set()
    spoofed = "".join(LOOK_ALIKES[ch] if i in swap else ch for i, ch in enumerate(line))
    return line, spoofed


@given(spoofed_lines())
@example(("Agents", "\u0410gents"))
@example(("AT AAA", "\u0410\u03a4 AAA"))  # Cyrillic and Greek, no Latin letter in the word
@example(("Paypal login", "Р\u0430\u0443р\u0430l login"))
def test_a_latin_line_with_look_alikes_reads_as_the_latin_line(lines: tuple[str, str]) -> None:
    line, spoofed = lines
    assert header_text(spoofed, 200) == line


@given(text=hostile_text)
def test_header_text_is_stable(text: str) -> None:
    once = header_text(text, 200)
    assert header_text(once, 200) == once


# --- links from dumps ------------------------------------------------------------------

HOSTILE_LINKS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox",
    "file:///etc/passwd",
    "https://user:secret@github.com/a/b",  # before: kept, credentials shown in the digest
    "https://github.com@evil.example/a/b",  # before: kept, leads to evil.example
    "https://github.com:443@evil.example",
    "https://github.com\\@evil.example/",
    'https://github.com/a"onmouseover="alert(1)',
    "https://github.com/a`x",
    "https://gíthub.com/a/b",  # not ASCII: a look-alike host
    "https://xn--gthub-zsa.com/x",  # ... and the same host in punycode
    "https://docs.XN--GTHUB-ZSA.com:443/x",
    "https://github.com:99999/",
    "https://",
]


def test_hostile_links_never_reach_a_digest() -> None:
    for link in HOSTILE_LINKS:
        assert http_url(link) is None, link
    paper = Paper("Linked agents", "About agents.", github_repo=HOSTILE_LINKS[6])
    item = Ranked(paper, 1.0, ("agents",), "")
    out = RENDERER.render(Reader("ann@example.org", None, ("agents",)), [item], EDITION, 0, 1)
    assert b"evil.example" not in out.data


@given(st.text(max_size=80) | st.from_regex(r"https?://[ -~]{0,60}", fullmatch=True))
@settings(max_examples=500 if FULL_TESTS else 100, deadline=None)
def test_a_kept_link_is_a_plain_http_link_to_the_host_it_shows(text: str) -> None:
    url = http_url(text)
    if url is None:
        return
    parts = urlsplit(url)
    assert parts.scheme.lower() in {"http", "https"} and parts.hostname
    assert "@" not in parts.netloc
    assert parts.netloc.isascii() and not any(c in url for c in " \"'<>\\`\r\n\t")
    assert not any(label.startswith("xn--") for label in parts.hostname.split("."))


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzíïаеоο", min_size=1, max_size=12))
@settings(max_examples=300 if FULL_TESTS else 100, deadline=None)
def test_a_host_is_refused_in_punycode_as_in_unicode(label: str) -> None:
    """Before: `https://xn--gthub-zsa.com/x` (gíthub.com in punycode) passed the check that
    refuses `https://gíthub.com/x`."""
    ascii_form = label.encode("idna").decode()
    for host in (label, ascii_form):
        kept = http_url(f"https://{host}.com/x") is not None
        assert kept == label.isascii(), host


_ESCAPES = [
    "\x1b[31m",
    "\x1b]0;owned\x07",
    "\x1b]8;;https://evil.example\x1b\\",
    "\x1b[2J",
    "\x9b1;31m",
    "\x1bP+q\x1b\\",
    "\x1b",
    "\x07",
    "\x9d",
]


@given(
    st.lists(st.text(max_size=30) | st.sampled_from(_ESCAPES), max_size=12).map("".join),
    st.integers(min_value=2, max_value=REPLY_CHARS),
)
@settings(max_examples=500 if FULL_TESTS else 150, deadline=None)
def test_a_servers_reply_is_one_printable_bounded_line(text: str, limit: int) -> None:
    """SMTP replies and bounce diagnostics are a remote server's words: before, a reply
    with ESC [31m or ESC ] 0;title BEL reached the operator's terminal as is, and in full."""
    value = reply_text(text, limit)
    assert len(value) <= limit and value == value.strip()
    assert value.isprintable() and not BIDI.search(value)
    assert reply_text(value, limit) == value  # clean text is kept as it is


def test_a_replys_escape_sequences_go_whole_and_its_words_stay() -> None:
    reply = "550 5.1.1 \x1b[31mRED\x1b]0;owned\x07 user\r\n unknown"
    assert reply_text(reply) == "550 5.1.1 RED user unknown"
    assert reply_text("550 " + "X" * 5000).endswith("…") and len(reply_text("5" * 5000)) == 300
