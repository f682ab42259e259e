"""Third-party text (paper titles, subscriber names, tags, keywords) made safe to show.

Headers are built only from :func:`header_text`: no control, format, separator, unassigned
or private-use characters (CR, LF, NUL, bidi overrides, zero-width...), no RFC 2047
encoded-word syntax (``=?``: on Python 3.11/3.12 the email package decodes encoded words
while folding, so ``=?utf-8?q?=0D=0ABcc:...?=`` would come out as a raw line break), one
line, length-capped, and no look-alike mixed-script words (:func:`unmix_scripts`: the
Cyrillic ``А`` of ``Аgents`` becomes a Latin ``A``).
Bodies keep their text but lose bidi override, embedding and isolate controls
(:func:`strip_bidi`), which can make a line read differently from what it is.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from urllib.parse import urlsplit

# Bidi formatting characters: ALM, LRM, RLM, LRE..RLO, LRI..PDI.
BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
# Invisible characters outside those categories (Unicode's default-ignorable letters and
# marks: Hangul fillers, the grapheme joiner, variation selectors) and the blank Braille
# pattern: they make a Subject look empty or different from what it says.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)
_PRINTABLE_ASCII = re.compile("[ -~]*")
_BREAKS = "\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_SPACE = re.compile(r"\s+")
SUBJECT_CHARS = 110
NAME_CHARS = 80
# Cyrillic and Greek letters drawn like a Latin one (Unicode's confusables, the unambiguous
# ones: lowercase Greek letters other than omicron are left, "αSyn" and "μP" are real names).
_LOOKS_LATIN = {
    **dict(zip("АВЕКМНОРСТХУЅІЈԚԜҮ", "ABEKMHOPCTXYSIJQWY", strict=True)),
    **dict(zip("аеорсухѕіјԁԛԝһӏ", "aeopcyxsijdqwhl", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧο", "ABEZHIKMNOPTYXo", strict=True)),
}
_LOOK_ALIKES: dict[str, dict[str, str]] = {"LATIN": _LOOKS_LATIN}
for _letter, _latin in _LOOKS_LATIN.items():
    _script = unicodedata.name(_letter).split(" ", 1)[0]
    _LOOK_ALIKES.setdefault(_script, {}).setdefault(_latin, _letter)
_WORD = re.compile(r"\w+")
_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f\"'<>\\`\ud800-\udfff]{1,2000}", re.I)
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?", re.I)


def http_url(value: object) -> str | None:
    """A third-party link as it may appear in a digest, or None: http(s) only (no
    ``javascript:``, ``data:``), no credentials or ``@`` before the host (which make
    ``https://huggingface.co@evil.example/`` lead to evil.example), an ASCII host name
    (not its punycode form either: ``xn--gthub-zsa.com`` is ``gíthub.com``),
    no spaces, quotes, angle brackets or backslashes, at most 2,000 characters."""
    if not isinstance(value, str) or not _URL.fullmatch(value.strip()):
        return None
    url = value.strip()
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:  # a port that is not a number
        return None
    host = parts.hostname or ""
    if "@" in parts.netloc or not port_ok or not _HOST.fullmatch(host):
        return None
    if any(label.startswith("xn--") for label in host.split(".")):
        return None  # punycode: the ASCII form of a non-ASCII name (xn--gthub-zsa = gíthub)
    return url


_BIDI_CHARS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def strip_bidi(text: str) -> str:
    """``text`` without bidi formatting characters (each digest's bodies pass through here:
    looking for each character first is several times faster than the regex when, as
    almost always, there is none)."""
    if any(ch in text for ch in _BIDI_CHARS):
        return BIDI.sub("", text)
    return text


def header_text(text: str, limit: int) -> str:
    """Third-party text as a safe one-line header value of at most ``limit`` characters."""
    if len(text) <= limit and "=?" not in text and _PRINTABLE_ASCII.fullmatch(text):
        return _SPACE.sub(" ", text).strip()  # the common case, fast
    text = "".join(
        " " if ch in _BREAKS else ch
        for ch in text
        if ch in _BREAKS or unicodedata.category(ch) not in _UNSAFE_CATEGORIES
    )
    text = unmix_scripts(_SPACE.sub(" ", _INVISIBLE.sub("", text)).strip())
    while "=?" in text:  # "=?=?" needs two passes
        text = text.replace("=?", "= ?")
    return shorten_line(text, limit)


def _script(letter: str) -> str | None:
    """LATIN, CYRILLIC or GREEK for a letter of those scripts, else None."""
    if not letter.isalpha():
        return None
    if letter.isascii():
        return "LATIN"
    script = unicodedata.name(letter, "").split(" ", 1)[0]
    return script if script in _LOOK_ALIKES else None


def _writable(word: str, target: str) -> bool:
    """Whether every letter of ``word`` is of ``target``'s script or has a look-alike in it."""
    table = _LOOK_ALIKES[target]
    return all(
        _script(ch) in {target, None}
        or (_LOOKS_LATIN.get(ch, ch) in table if target != "LATIN" else ch in _LOOKS_LATIN)
        for ch in word
    )


def unmix_scripts(text: str) -> str:
    """``text`` with look-alike letters of another script written in the script around them.

    A word (a run of letters and digits) that mixes Latin, Cyrillic and Greek letters is
    written in one script when its letters allow it: the line's script, else the script of
    most of its letters (``μP`` stays as it is). ``Аgents``
    with a Cyrillic ``А`` becomes ``Agents``, ``Москвa`` with a Latin ``a`` all Cyrillic.
    So is a word made only of another script's look-alikes in a line mostly of one script
    (``GPT-4о`` with a Cyrillic ``о``). Words in one script, and mixed words without
    look-alikes (``βVAE``), are kept as written. The result reads as before; mail filters,
    searches and the reader's eye now agree on what it says.
    """
    if text.isascii():
        return text
    scripts = Counter(s for ch in text if (s := _script(ch)))
    if len(scripts) < 2:
        return text
    line = max(scripts, key=lambda s: (scripts[s], s == "LATIN"))

    def unmix(match: re.Match[str]) -> str:
        word = match.group()
        if word.isascii():
            return word
        here = Counter(s for ch in word if (s := _script(ch)))
        if len(here) > 1:  # the line's script, or the script of most of the word's letters
            order = sorted(here, key=lambda s: (s != line, -here[s]))
            fits = (s for s in (line, *order) if s == line or 2 * here[s] > here.total())
            target = next((s for s in fits if _writable(word, s)), order[0])
        else:
            (only,) = here or (line,)
            if only == line or not all(ch in _LOOKS_LATIN for ch in word if ch.isalpha()):
                return word
            target = line
        table = _LOOK_ALIKES[target]

        def written_in_target(ch: str) -> str:
            if _script(ch) in {target, None}:
                return ch
            latin = _LOOKS_LATIN.get(ch, ch)  # a Latin letter is itself
            return latin if target == "LATIN" else table.get(latin, ch)

        return "".join(map(written_in_target, word))

    return _WORD.sub(unmix, text)


# What a remote server says (an SMTP reply, a bounce report's Diagnostic-Code) as stored and
# printed: one line of at most this many characters.
REPLY_CHARS = 300
# Terminal escape sequences, removed whole: CSI (ESC [ or U+009B ... final byte), OSC / DCS /
# SOS / PM / APC strings (ESC ] P X ^ _ or U+0090/0098/009D/009E/009F ... BEL or ST, or the end
# of the text), and the two-character ESC sequences.
_TERMINAL_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b.?",
    re.S,
)


def reply_text(text: str, limit: int = REPLY_CHARS) -> str:
    """Third-party text (an SMTP reply, a bounce's diagnostic, a paper title or tag in a
    terminal table) as one line that is safe to store, print to a terminal and put in
    ``--json``: terminal escape sequences
    removed whole (colour, clear-screen, window-title ``ESC ] 0;...BEL``), other control,
    format and bidi characters dropped, line breaks and runs of whitespace made one space,
    cut at a word boundary to ``limit`` characters (with ``…``)."""
    if len(text) <= limit and _PRINTABLE_ASCII.fullmatch(text):
        return _SPACE.sub(" ", text).strip()  # the common case, fast
    text = _TERMINAL_ESCAPE.sub("", text[: 20 * limit])  # bounded work for a huge reply
    text = "".join(
        " " if ch in _BREAKS else ch
        for ch in text
        if ch in _BREAKS or unicodedata.category(ch) not in _UNSAFE_CATEGORIES
    )
    return shorten_line(_SPACE.sub(" ", text).strip(), limit)


def shorten_line(text: str, limit: int) -> str:
    """Cut one line at a word boundary so that it is at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"
