"""Subscriber YAML files: typed models, a safe loader, and errors that point at the line.

A file holds one subscriber (a mapping) or several (a list of mappings). Every
problem becomes a :class:`SubscriberError` such as
``subscribers/bob.yaml:4:3: tags[2]: expected a string or a mapping with "tag", got a
number``; one bad file never stops the others from loading.
"""

from __future__ import annotations

import difflib
import gc
import os
import re
import reprlib
import sqlite3
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import yaml
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError
from yaml.composer import Composer, ComposerError
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from paperpost.models import has_words, pickled_by_fields
from paperpost.rank import DEFAULT_MIN_SCORE, read_tag
from paperpost.sanitize import BIDI

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ARXIV_REF = re.compile(
    r"(?:arxiv:|https?://(?:www\.)?(?:arxiv\.org/(?:abs|pdf)|huggingface\.co/papers)/)?"
    r"(\d{4}\.\d{4,5})(?:v\d+)?(?:\.pdf)?/?",
    re.I,
)
# Size limits: a hand-written file never comes near them; a runaway one is refused with a
# clear error instead of producing a huge digest.
MAX_FILE_BYTES = 256_000_000  # list files are streamed; 100,000 subscribers are ~15 MB
MAX_NAME_CHARS = 100
MAX_TAGS = 50
MAX_WORDS = 50  # keywords per tag, exclude entries
MAX_REFERENCES = 500  # like, authors, organizations
LOCAL_PART_CHARS = 64  # RFC 5321 4.5.3.1.1 (email-validator checks the rest)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


# Bounded at every level: an alias bomb ("billion laughs") is a few shared lists that
# would print as billions of items.
_REPR = reprlib.Repr()  # Python 3.11 takes no keyword arguments here
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = 70


def _shown(value: object, limit: int = 60) -> str:
    """A value quoted for an error message, cut short (a runaway value stays one line)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _control(text: str) -> str | None:
    """The first control character in ``text`` (as U+XXXX), if any: C0/C1 controls, and
    bidi controls (which make a name read differently in a terminal or a list)."""
    if text.isascii() and text.isprintable():  # the common case: ' ' to '~' only
        return None
    bad = next((ch for ch in text if unicodedata.category(ch) == "Cc" or BIDI.match(ch)), None)
    return f"U+{ord(bad):04X}" if bad else None


def _clean_text(value: Any) -> Any:
    """Hand-written text on one line: no control characters (NUL, ESC, ...; they would
    reach terminals and the database), outer space stripped, inner space single."""
    if not isinstance(value, str):
        return value
    if bad := _control(value.replace("\t", " ")):
        raise PydanticCustomError(
            "control_char", "contains the control character {char}; remove it", {"char": bad}
        )
    return " ".join(value.split())


def _has_words(value: str) -> str:
    if not has_words(value):
        raise PydanticCustomError(
            "no_words",
            "{value} has no letters or digits",
            {"value": _shown(value) if value else "(blank)"},
        )
    return value


def _matchable(value: str) -> str:
    """A tag or exclusion the ranker can read: at least one word it matches on."""
    if not read_tag(value).facets:
        raise PydanticCustomError(
            "no_words",
            '{value} has no words to match (only punctuation, common words like "the", or '
            'letters outside a-z); write a topic such as "diffusion models"',
            {"value": _shown(value) if value else "(blank)"},
        )
    return value


# One line of hand-written text each (limits first: they are then checked as text).
_Clean = BeforeValidator(_clean_text)
Topic = Annotated[str, Field(min_length=1, max_length=80), _Clean, AfterValidator(_matchable)]
Keyword = Annotated[str, Field(min_length=1, max_length=80), _Clean, AfterValidator(_has_words)]
PaperRef = Annotated[str, Field(min_length=1, max_length=300), _Clean, AfterValidator(_has_words)]
Name = Annotated[str, Field(min_length=1, max_length=200), _Clean, AfterValidator(_has_words)]


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {_shown(value)}"


def _none_yet(limit: int) -> Any:
    """A list that is empty unless given: a new list per entry (pydantic deep-copies a
    ``default=[]`` for every entry it loads, 7% of loading a long list), [] in the schema."""
    return Field(default_factory=list, max_length=limit, json_schema_extra={"default": []})


class TagInterest(BaseModel):
    """One interest: a topic tag, how much it counts, and extra keywords of the reader's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: Topic
    weight: Annotated[float, Field(gt=0, le=10)] = 1.0
    keywords: list[Keyword] = _none_yet(MAX_WORDS)


class Subscriber(BaseModel):
    """A reader and what they want. Defaults here are the documented defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    tags: list[TagInterest] = Field(min_length=1, max_length=MAX_TAGS)
    exclude: list[Topic] = _none_yet(MAX_WORDS)
    like: list[PaperRef] = _none_yet(MAX_REFERENCES)
    authors: list[Name] = _none_yet(MAX_REFERENCES)
    organizations: list[Name] = _none_yet(MAX_REFERENCES)
    cadence: Literal["daily", "weekly"] = "daily"
    weekday: Literal[WEEKDAYS] = "monday"  # type: ignore[valid-type]
    max_items: Annotated[int, Field(ge=1, le=100)] = 10
    min_score: Annotated[float, Field(ge=0, le=1)] = DEFAULT_MIN_SCORE
    format: Literal["html", "text"] = "html"
    active: bool = True

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, value: Any) -> str:
        """An address the send path can use: email-validator's syntax and RFC 5321 length
        rules, an ASCII local part (no SMTPUTF8), a public domain; stored in ASCII form."""
        if not isinstance(value, str):
            raise PydanticCustomError(
                "email",
                "expected an email address like ada@example.org, got {got}",
                {"got": _kind(value)},
            )
        try:
            local_part, ascii_email = _checked_email(value.strip())
        except EmailNotValidError as exc:
            raise PydanticCustomError(
                "email",
                "expected an email address like ada@example.org, got {got} ({reason})",
                {"got": _shown(value.strip()), "reason": str(exc)},
            ) from None
        if len(local_part) > LOCAL_PART_CHARS:
            raise PydanticCustomError(
                "email",
                "expected an email address like ada@example.org, got {got} (the part before "
                "the @-sign has {count} characters; at most {limit} are allowed)",
                {
                    "got": _shown(value.strip()),
                    "count": len(local_part),
                    "limit": LOCAL_PART_CHARS,
                },
            )
        return ascii_email

    @field_validator("name", mode="before")
    @classmethod
    def _one_line_name(cls, value: Any) -> Any:
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            raise PydanticCustomError("name", "the name must be on one line")
        return _clean_text(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise PydanticCustomError(
                "tags", "expected a list of tags, got {got}", {"got": _kind(value)}
            )
        items = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                items.append({"tag": item})
            elif isinstance(item, dict) and "tag" in item:
                items.append(item)
            else:
                raise PydanticCustomError(
                    "tag_item",
                    'tags[{index}]: expected a string or a mapping with "tag", got {got}',
                    {"index": index, "got": _kind(item)},
                )
        return items

    @field_validator("exclude", "like", "authors", "organizations", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("like")
    @classmethod
    def _paper_refs(cls, value: list[str]) -> list[str]:
        """An arXiv id, abs/pdf or Hugging Face paper URL becomes the bare id; else a title."""
        out = []
        for ref in value:
            ref = " ".join(ref.split())
            found = _ARXIV_REF.fullmatch(ref)
            out.append(found[1] if found else ref)
        return out

    @field_validator("weekday", mode="before")
    @classmethod
    def _weekday(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return next((day for day in WEEKDAYS if day.startswith(lowered[:3])), lowered)
        return value

    @field_validator("max_items", "min_score", mode="before")
    @classmethod
    def _not_yes_or_no(cls, value: Any) -> Any:
        """YAML's true/false are numbers to pydantic (``max_items: true`` became 1)."""
        if isinstance(value, bool):
            raise PydanticCustomError(
                "number", "expected a number, got {got}", {"got": str(value).lower()}
            )
        return value

    def warnings(self) -> list[str]:
        """What loads but is likely not what the reader meant (``subscribers validate``)."""
        found = []
        if self.cadence == "daily" and "weekday" in self.model_fields_set:
            found.append(
                f"weekday: {self.weekday} has no effect: the cadence is daily (the default); "
                "add `cadence: weekly` or remove the weekday"
            )
        tags = {" ".join(t.tag.casefold().replace("-", " ").split()) for t in self.tags}
        for entry in self.exclude:
            if " ".join(entry.casefold().replace("-", " ").split()) in tags:
                found.append(
                    f"exclude: {entry} is also one of the tags: every paper about it is "
                    "excluded, so that tag brings nothing; remove one of the two"
                )
        return found

    @property
    def address(self) -> str:
        """The email address as the identity of a subscriber (case-folded)."""
        return self.email.lower()


def _checked_email(address: str) -> tuple[str, str]:
    """email-validator's local part and ASCII form of ``address`` (its errors raised as
    they are). A plain ASCII local part (dot-atom text) at a domain seen before takes a
    short way with the same result: the domain's checks (IDNA, most of the cost) depend
    on the domain alone, so they are made once per domain (a list of a million readers
    has far fewer domains), and such a local part is valid as it is."""
    local, at, domain = address.rpartition("@")
    if at and DOT_ATOM_TEXT.match(local) and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES:
        forms = _domain_forms(domain)
        if forms is not None and all(
            len(f"{local}@{form}".encode()) <= EMAIL_MAX_LENGTH for form in (domain, *forms)
        ):
            return local, f"{local}@{forms[1]}"
    checked = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    return checked.local_part, checked.ascii_email  # type: ignore[return-value]


@lru_cache(maxsize=4096)
def _domain_forms(domain: str) -> tuple[str, str] | None:
    """The normalized and ASCII forms email-validator gives ``domain`` (None if it refuses
    it: the full check then says why)."""
    try:
        checked = validate_email(f"x@{domain}", check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return checked.domain, checked.ascii_domain


@dataclass(frozen=True, slots=True)
class SubscriberError:
    """One problem in one subscriber file, located as precisely as the YAML allows."""

    path: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class SubscriberErrors:
    """The errors found while reading a subscriber list, in bounded memory: every error is
    counted by file, the first ``keep`` of each file are kept (with their file:line), and
    ``report`` (if given) sees every one as it is found. A file of millions of bad entries
    costs a count, not a list of millions of errors."""

    def __init__(
        self, keep: int | None = None, report: Callable[[SubscriberError], None] | None = None
    ) -> None:
        self.keep = keep  # None: keep all (a single file, `subscribers add`/`remove`)
        self.report = report
        self.kept: list[SubscriberError] = []
        self.counts: dict[str, int] = {}  # by file, in the order first found

    def append(self, error: SubscriberError) -> None:
        found = self.counts.get(error.path, 0)
        self.counts[error.path] = found + 1
        if self.keep is None or found < self.keep:
            self.kept.append(error)
        if self.report:
            self.report(error)

    def extend(self, errors: Iterable[SubscriberError]) -> None:
        for error in errors:
            self.append(error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_file(self) -> list[tuple[str, list[SubscriberError], int]]:
        """Each file with errors: its kept errors and how many it had in all."""
        kept: dict[str, list[SubscriberError]] = {path: [] for path in self.counts}
        for error in self.kept:
            kept[error.path].append(error)
        return [(path, kept[path], count) for path, count in self.counts.items()]


# where the readers put errors: a run's bounded SubscriberErrors, or a plain list
ErrorSink = SubscriberErrors | list[SubscriberError]


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class LoadedSubscriber:
    subscriber: Subscriber
    path: str
    line: int


# --- locating errors in the YAML node tree ----------------------------------------


# Where each alias was used, by (id of the node holding it, its key or index; an entry
# of the file: (id(None), None)): an alias composes to the anchored node itself, whose
# marks are the anchor's.
AliasUses = dict[tuple[int, Any], yaml.Mark]


def _node_at(
    node: yaml.Node, loc: tuple[Any, ...], uses: AliasUses | None = None
) -> tuple[yaml.Node, yaml.Mark]:
    """The node at a pydantic error location (or the deepest one found) and where to point
    at it: its own place, or, inside a value given by an alias, the place of that alias."""
    via_alias = uses.get((id(None), None)) if uses else None  # the entry is an alias
    for part in loc:
        parent = node
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            # the last: merged pairs (<<: *defaults) come first, the entry's own win
            for key, value in reversed(node.value):
                if key.value == part:
                    node = value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        elif isinstance(node, yaml.ScalarNode) and isinstance(part, int):
            continue  # a single string given where a list was expected
        else:
            break
        if via_alias is None and uses:
            via_alias = uses.get((id(parent), part))
    return node, via_alias or node.start_mark


def _key_node(node: yaml.Node, name: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, _ in reversed(node.value):
            if key.value == name:
                return key
    return None


def _field_label(loc: tuple[Any, ...]) -> str:
    label = ""
    for part in loc:
        label += f"[{part}]" if isinstance(part, int) else (f".{part}" if label else part)
    return label


def _describe(error: dict[str, Any], allowed: Iterable[str]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return "this field is required"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        close = difflib.get_close_matches(name, list(allowed), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else f"; known fields: {', '.join(allowed)}"
        return f'unknown field "{name}"{hint}'
    if kind == "literal_error":
        expected = error["ctx"]["expected"].replace("'", "")
        return f"expected one of {expected}, got {_shown(value)}"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"expected a whole number, got {_shown(value)}"
    if kind in {"float_parsing", "float_type"}:
        return f"expected a number, got {_shown(value)}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"expected true or false, got {_shown(value)}"
    if kind in {"string_type"}:
        return f"expected text, got {_kind(value)}"
    if kind == "string_too_short":
        return "this is blank; write a value or remove the entry"
    if kind == "too_short" and error["loc"][-1:] == ("tags",):
        return "give at least one tag"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than"}:
        return f"{error['msg'].lower()}, got {_shown(value)}"
    return error["msg"]


def _errors_from_validation(
    exc: ValidationError,
    entry: yaml.Node,
    path: str,
    prefix: tuple[Any, ...],
    uses: AliasUses | None = None,
) -> list[SubscriberError]:
    """Errors of one entry (``entry`` its node; ``prefix`` its place in the file)."""
    found = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = _describe(error, _allowed_fields(loc))
        if error["type"] == "tag_item":  # the message carries the index itself
            index = error["ctx"]["index"]
            loc = (*loc, index)
            message = message.split(": ", 1)[1]
        _, mark = _node_at(entry, loc, uses)
        if error["type"] == "extra_forbidden":
            parent, parent_mark = _node_at(entry, loc[:-1], uses)
            key = _key_node(parent, str(loc[-1]))
            if key is not None:  # the key's place, or the alias that brought its mapping
                mark = parent_mark if parent_mark is not parent.start_mark else key.start_mark
        found.append(
            SubscriberError(
                path, mark.line + 1, mark.column + 1, _field_label(prefix + loc), message
            )
        )
    return sorted(found, key=lambda e: (e.line, e.column))


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    if loc and loc[0] == "tags" and len(loc) > 2:
        return list(TagInterest.model_fields)
    return list(Subscriber.model_fields)


def _duplicate_keys(node: yaml.Node, path: str, prefix: tuple[Any, ...]) -> list[SubscriberError]:
    """A key given twice in one mapping (YAML would silently keep the last), anywhere in
    one subscriber entry, reported at the second with the line of the first."""
    found = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(node, prefix)]
    while stack:
        current, loc = stack.pop()
        if id(current) in seen:  # aliases share nodes
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in first:
                        mark = key.start_mark
                        found.append(
                            SubscriberError(
                                path,
                                mark.line + 1,
                                mark.column + 1,
                                _field_label((*loc, key.value)),
                                f'duplicate key "{_shown(key.value)[1:-1]}", also on line '
                                f"{first[key.value].start_mark.line + 1}; keep one of them",
                            )
                        )
                    first.setdefault(key.value, key)
                stack.append((value, (*loc, key.value)))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(current.value))
    return sorted(found, key=lambda e: (e.line, e.column))


# --- loading ----------------------------------------


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for error locations) and the data, from one safe parse.

    The garbage collector is paused meanwhile: a list file of 100,000 entries creates
    millions of objects and otherwise triggers collections over and over.
    """
    loader = _Loader(text)
    enabled = gc.isenabled()
    gc.disable()
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
        if enabled:
            gc.enable()


class _EntryLoader(_Loader, Composer):  # type: ignore[misc]
    """The (C) parser's events composed one top-level entry at a time by PyYAML's
    Composer, so a list file of a million subscribers never exists as one node tree."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.anchors: dict[str, yaml.Node] = {}
        self.uses: AliasUses = {}  # of the entry being composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if not self.check_event(AliasEvent):
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        mark = self.peek_event().start_mark
        node = super().compose_node(parent, index)
        place = index.value if isinstance(index, yaml.ScalarNode) else index
        self.uses[(id(parent), place)] = mark
        return node  # type: ignore[no-any-return]


def _encoding(path: Path) -> str:
    """UTF-8 (a byte-order mark is skipped), or UTF-16/32 when a byte-order mark says so
    (Windows editors save "Unicode" that way)."""
    with path.open("rb") as handle:
        start = handle.read(4)
    if start.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if start.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "utf-8-sig"


def _decode_error(path: Path, encoding: str) -> SubscriberError:
    """Where a file stops being text in its encoding (line and column), and what to do."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.end].hex(" ").upper()
        return SubscriberError(
            str(path),
            line,
            column,
            "",
            f"not UTF-8 text (byte {bad} here); save the file as UTF-8 (a Latin-1 or "
            "Windows-1252 editor setting does this)",
        )
    return SubscriberError(str(path), 1, 1, "", "cannot read the file as text")


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be a subscriber file (a folder, a pipe, a link leading out of
    its folder or nowhere), or None."""
    if path.is_symlink():
        target = path.resolve()
        if not target.exists():
            return f"is a broken link (to {target}); remove it or point it at a file"
        if not target.is_relative_to(path.parent.resolve()):
            return (
                f"is a link to {target}, outside {path.parent.resolve()}; copy the file into the "
                "folder instead (links may not lead out of it)"
            )
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a folder, not a subscriber file; rename it (no .yaml ending) or move it"
    if not path.is_file():
        return "is not a regular file (a pipe or a device?); remove it"
    return None


# The parser starts a document after the first only at an explicit start marker.
DOCUMENT_START = "---"


def _check_syntax(path: Path, encoding: str) -> None:
    """Raise the parser's error, if any, before any entry of the file is used: a file
    with broken YAML loads nothing (events only, no nodes or values are built). A file
    with no DOCUMENT_START anywhere holds at most one document, so the C parser checks it
    alone, without making an event object per scalar (most of this check's time)."""
    if hasattr(_Loader, "raw_parse") and not _holds_document_start(path, encoding):
        with path.open(encoding=encoding) as stream:
            parser = _Loader(stream)
            try:
                parser.raw_parse()
            finally:
                parser.dispose()
        return
    with path.open(encoding=encoding) as stream:
        parser = _Loader(stream)
        try:
            first = None
            while parser.check_event():
                event = parser.get_event()
                if isinstance(event, DocumentStartEvent):
                    if first is not None:
                        raise ComposerError(
                            "expected a single document in the stream",
                            first.start_mark,
                            "but found another document",
                            event.start_mark,
                        )
                    first = event
        finally:
            parser.dispose()


def _holds_document_start(path: Path, encoding: str) -> bool:
    """True when the text of ``path`` holds DOCUMENT_START anywhere (read a MB at a time)."""
    tail = ""
    with path.open(encoding=encoding) as stream:
        while chunk := stream.read(1 << 20):
            text = tail + chunk
            if DOCUMENT_START in text:
                return True
            tail = text[-2:]  # a marker cut in two by the chunks
    return False


def _entries(loader: _EntryLoader) -> Iterator[tuple[tuple[Any, ...], yaml.Node]]:
    """(place in the file, node) of each entry: a top-level list's items, else the document."""
    loader.get_event()  # stream start
    if loader.check_event(StreamEndEvent):
        return
    loader.get_event()  # document start
    if loader.check_event(SequenceStartEvent):
        loader.get_event()
        index = 0
        while not loader.check_event(SequenceEndEvent):
            loader.uses.clear()
            yield (index,), loader.compose_node(None, None)
            index += 1
    else:
        loader.uses.clear()
        yield (), loader.compose_node(None, None)


def _yaml_error(name: str, exc: yaml.YAMLError) -> SubscriberError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return SubscriberError(name, line, column, "", f"YAML syntax: {problem}")
    return SubscriberError(name, 1, 1, "", f"YAML syntax: {exc}")


def iter_file(path: Path, errors: ErrorSink) -> Iterator[LoadedSubscriber]:
    """The valid subscribers of one YAML file (a subscriber mapping or a list of them), one
    at a time; every problem is appended to ``errors``. Memory stays that of one entry."""
    name = str(path)
    problem = _not_a_file(path)
    if problem:
        errors.append(SubscriberError(name, 1, 1, "", problem))
        return
    try:
        encoding = _encoding(path)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            errors.append(
                SubscriberError(
                    name,
                    1,
                    1,
                    "",
                    f"the file is {size / 1e6:.0f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB "
                    "limit for a subscriber file; split it into several files",
                )
            )
            return
        _check_syntax(path, encoding)
    except UnicodeDecodeError:
        errors.append(_decode_error(path, encoding))
        return
    except OSError as exc:
        errors.append(
            SubscriberError(name, 1, 1, "", f"cannot read the file: {exc.strerror or exc}")
        )
        return
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(name, exc))
        return
    except (RecursionError, ValueError) as exc:
        errors.append(SubscriberError(name, 1, 1, "", f"YAML syntax: {exc}"))
        return
    found = unreadable = False
    with path.open(encoding=encoding) as stream:
        loader = _EntryLoader(stream)
        try:
            for prefix, node in _entries(loader):
                found = True
                # before constructing: a merge key (<<: *defaults) puts the merged pairs
                # into the node itself, where an overridden key would look given twice
                duplicates = _duplicate_keys(node, name, prefix)
                if duplicates:
                    errors.extend(duplicates)
                    continue
                try:
                    item = loader.construct_document(node)
                except yaml.YAMLError as exc:  # e.g. a tag the safe loader refuses
                    errors.append(_yaml_error(name, exc))
                    continue
                except (RecursionError, ValueError) as exc:
                    _, mark = _node_at(node, (), loader.uses)
                    problem = (
                        "a number with thousands of digits; no setting takes one"
                        if "integer string conversion" in str(exc)
                        else f"YAML syntax: {exc}"
                    )
                    errors.append(
                        SubscriberError(
                            name, mark.line + 1, mark.column + 1, _field_label(prefix), problem
                        )
                    )
                    continue
                if item is None and prefix == ():
                    found = False
                    break
                if not isinstance(item, dict):
                    _, mark = _node_at(node, (), loader.uses)
                    errors.append(
                        SubscriberError(
                            name,
                            mark.line + 1,
                            mark.column + 1,
                            _field_label(prefix),
                            f"expected a subscriber mapping (email, tags, ...), got {_kind(item)}",
                        )
                    )
                    continue
                try:
                    subscriber = Subscriber.model_validate(item)
                except ValidationError as exc:
                    errors.extend(_errors_from_validation(exc, node, name, prefix, loader.uses))
                    continue
                _, email_mark = _node_at(node, ("email",), loader.uses)
                yield LoadedSubscriber(subscriber, name, email_mark.line + 1)
        except yaml.YAMLError as exc:  # composing: an undefined alias and the like
            errors.append(_yaml_error(name, exc))
            unreadable = True
        except RecursionError as exc:
            errors.append(SubscriberError(name, 1, 1, "", f"YAML syntax: {exc}"))
            unreadable = True
        finally:
            loader.dispose()
    if not found and not unreadable:  # (a file that stops at a YAML error is not empty)
        errors.append(SubscriberError(name, 1, 1, "", "the file is empty; expected a subscriber"))


def load_file(path: Path) -> tuple[list[LoadedSubscriber], list[SubscriberError]]:
    """Load one YAML file holding a subscriber mapping or a list of them."""
    errors = SubscriberErrors()
    return list(iter_file(path, errors)), errors.kept


SCHEMA_FILE = Path(__file__).with_name("data") / "subscriber.schema.json"


def json_schema() -> dict[str, Any]:
    """JSON Schema for a subscriber file (one mapping, or a list of them), for editors."""
    single = Subscriber.model_json_schema()
    defs = single.pop("$defs", {})
    # the loader also accepts plain strings where the model holds mappings
    props = single["properties"]
    props["tags"]["items"] = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/TagInterest"}]}
    props["tags"] = {"anyOf": [{"type": "string"}, props["tags"]]}
    for name in ("exclude", "like", "authors", "organizations"):
        props[name] = {"anyOf": [{"type": "string"}, props[name]]}
    defs["Subscriber"] = single
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "paperpost subscriber file",
        "oneOf": [
            {"$ref": "#/$defs/Subscriber"},
            {"type": "array", "items": {"$ref": "#/$defs/Subscriber"}},
        ],
        "$defs": defs,
    }


class SubscriberFileError(ValueError):
    """A subscriber file cannot be added to or removed from as asked."""


def add_subscriber(folder: Path, subscriber: Subscriber) -> Path:
    """Write a new one-subscriber file; refuses to overwrite or to duplicate an address."""
    existing, _ = load_subscribers(folder) if folder.exists() else ([], [])
    for entry in existing:
        if entry.subscriber.address == subscriber.address:
            raise SubscriberFileError(
                f"{subscriber.email} is already subscribed in {entry.path}:{entry.line}"
            )
    stem = re.sub(r"[^a-z0-9._-]+", "-", subscriber.address.split("@")[0]) or "subscriber"
    path = folder / f"{stem}.yaml"
    if path.exists():
        path = (
            folder / f"{stem}-{re.sub(r'[^a-z0-9.-]+', '-', subscriber.address.split('@')[1])}.yaml"
        )
    if path.exists():
        raise SubscriberFileError(f"{path} already exists; not overwriting it")
    data = subscriber.model_dump(exclude_defaults=True, mode="json")
    data["email"] = subscriber.email
    data["tags"] = [
        t["tag"] if set(t) == {"tag"} else t
        for t in subscriber.model_dump(mode="json", exclude_defaults=True)["tags"]
    ]
    folder.mkdir(parents=True, exist_ok=True)
    header = "# yaml-language-server: $schema=../paperpost/data/subscriber.schema.json\n"
    with path.open("x", encoding="utf-8") as handle:  # "x": never overwrite
        handle.write(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def remove_subscriber(folder: Path, email: str) -> Path:
    """Remove a subscriber: delete their own file, or cut their entry out of a list file.

    A list file is rewritten only if everyone else in it still loads as before (an entry
    can hold an anchor that later entries use), and atomically (a new file renamed over the
    old one): a crash mid-write never leaves half a list."""
    address = email.lower()
    for path in subscriber_files(folder):
        loaded, errors = load_file(path)
        if not any(e.subscriber.address == address for e in loaded):
            continue
        encoding = _encoding(path)
        if encoding == "utf-8-sig" and not path.read_bytes().startswith(b"\xef\xbb\xbf"):
            encoding = "utf-8"  # write no byte-order mark the file did not have
        text = path.read_text(encoding=encoding)
        root, _ = _compose(text)
        if isinstance(root, yaml.MappingNode) or len(root.value) == 1:  # theirs alone
            path.unlink()
            return path
        lines = text.splitlines(keepends=True)
        items = root.value
        for index, item in enumerate(items):
            email_node, _ = _node_at(item, ("email",))
            if str(getattr(email_node, "value", "")).strip().lower() != address:
                continue
            start = item.start_mark.line
            end = items[index + 1].start_mark.line if index + 1 < len(items) else len(lines)
            others = sorted(e.subscriber.address for e in loaded if e.subscriber.address != address)
            _rewrite(path, "".join(lines[:start] + lines[end:]), encoding, others, len(errors))
            return path
    raise SubscriberFileError(f"no subscriber {email} in {folder}")


def _rewrite(path: Path, text: str, encoding: str, others: list[str], errors: int) -> None:
    """Replace ``path`` with ``text`` if the subscribers ``others`` still load from it, with
    no more errors than before; else leave it and say why."""
    new = path.with_name(f".{path.name}.new")  # not *.yaml: never read as a subscriber file
    new.write_text(text, encoding=encoding)
    after, problems = load_file(new)
    if sorted(e.subscriber.address for e in after) != others or len(problems) > errors:
        new.unlink()
        why = next((p.message for p in problems), "a subscriber would be lost")
        raise SubscriberFileError(
            f"{path} left as it is: without this entry the rest of the file would not load "
            f"as before ({why}; an anchor the entry holds may be used by others); edit it by hand"
        )
    with new.open("rb") as handle:
        os.fsync(handle.fileno())
    new.replace(path)


def subscriber_files(folder: Path) -> list[Path]:
    """The subscriber files in a folder (``*.yaml`` and ``*.yml``), in name order; whatever
    has such a name but is not a usable file is listed too, so that loading reports it."""
    if not folder.is_dir():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml"})


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be a run's list of subscribers (it does not exist, or holds no
    subscriber file), or None. A run without its list would take the new papers as sent to
    nobody: the readers would never get them."""
    try:
        if folder.is_dir():
            return None if subscriber_files(folder) else "holds no subscriber file (*.yaml, *.yml)"
        if folder.exists():
            return None  # one file: loading it says what is wrong with it, if anything
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "does not exist (a typo, a share that is not mounted, a renamed folder?)"


def iter_subscribers(folder: Path, errors: ErrorSink) -> Iterator[LoadedSubscriber]:
    """Every valid subscriber under ``folder``, one at a time (file by file, entry by
    entry: memory does not grow with the list); every error is appended to ``errors``."""
    if not folder.exists() and not folder.is_symlink():
        errors.append(SubscriberError(str(folder), 1, 1, "", "subscribers folder does not exist"))
        return
    files = subscriber_files(folder)
    with closing(_Seen()) as seen:
        for index, path in enumerate(files):
            for entry in iter_file(path, errors):
                first = seen.first(entry.subscriber.address, index)
                if first is not None:
                    errors.append(
                        SubscriberError(
                            entry.path,
                            entry.line,
                            1,
                            "email",
                            f"{entry.subscriber.email} is already subscribed in {files[first]};"
                            " keep one of the two",
                        )
                    )
                    continue
                yield entry


class _Seen:
    """The addresses read so far, each with the index of the file it was first read from,
    in a private temporary SQLite database: SQLite keeps a few MB of it in memory and
    writes the rest to a temporary file, so reading a list of a million readers does not
    hold a million addresses (as a dict they were 106 MB at 1,000,000)."""

    def __init__(self) -> None:
        # "": private, on disk only past its cache, deleted on close. Used by one thread at a
        # time, but not always the one that started reading (a generator may be resumed or
        # closed from another), so the same-thread check is off.
        self.db = sqlite3.connect("", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("CREATE TABLE seen (address TEXT PRIMARY KEY, file INTEGER) WITHOUT ROWID")

    def first(self, address: str, file: int) -> int | None:
        """Record ``address`` as read from ``file``; the file it was read from before, if any."""
        if self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (address, file)).rowcount:
            return None
        row = self.db.execute("SELECT file FROM seen WHERE address = ?", (address,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()


def load_subscribers(folder: Path) -> tuple[list[LoadedSubscriber], list[SubscriberError]]:
    """Every valid subscriber under ``folder``, and every error found on the way."""
    errors = SubscriberErrors()
    return list(iter_subscribers(folder, errors)), errors.kept
