"""Typed records passed between the pipeline stages."""

from __future__ import annotations

import hashlib
import operator
import re
import unicodedata
from dataclasses import dataclass, fields
from datetime import date
from typing import TypeVar
from urllib.parse import quote_plus

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_SPACE = re.compile(r"\s+")
# Characters no database column or message should hold: NUL (PostgreSQL text refuses it),
# other control characters, C1 controls (U+0080-U+009F: U+009B is a terminal's CSI, as ESC [
# is; U+0085, a line break, is whitespace below) and lone surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")
C = TypeVar("C", bound=type)


def pickled_by_fields(cls: C) -> C:
    """Pickle a dataclass as a call of its constructor with its field values, in order.

    Batches go to and from worker processes pickled (``paperpost.pipeline.offload``); for
    a ``slots=True`` dataclass the default looks its fields up again for every object, which
    was most of the cost of sending a batch. Only for classes whose fields are all ``init``
    fields.
    """
    values = operator.attrgetter(*(f.name for f in fields(cls)))
    cls.__reduce__ = lambda self: (cls, values(self))  # type: ignore[method-assign]
    return cls


def normalize_space(text: str) -> str:
    """Collapse runs of whitespace (including raw line breaks) into single spaces, and drop
    control characters and lone surrogates."""
    return _SPACE.sub(" ", _UNSTORABLE.sub("", text)).strip()


# Letters (Unicode category Lo) that show as nothing: the Hangul fillers
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def has_words(text: str) -> bool:
    """Whether ``text`` has a visible letter or digit (a title of blank Braille, Hangul
    fillers and zero-width spaces has none)."""
    return any(ch.isalnum() and ch not in _INVISIBLE_LETTERS for ch in text)


def title_key(title: str) -> str:
    """The identity of a paper that has no arXiv id: its title, folded.

    Case, Unicode compatibility forms, accents, punctuation and whitespace are
    ignored, so the same paper matches across a text dump and the API.
    """
    folded = unicodedata.normalize("NFKD", title).casefold()
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", folded).strip()


# An abstract this short ("No abstract", "TBD") may be shared by different papers.
ABSTRACT_KEY_WORDS = 20


def abstract_key(abstract: str) -> str | None:
    """A second identity for a paper without an arXiv id: its abstract, folded like a
    title, when it has at least ABSTRACT_KEY_WORDS words. It stays when the listing
    rewords the title (``LLM Agents that Plan`` -> ``LLM Agents That Plan Ahead``)."""
    folded = title_key(abstract)
    return folded if folded.count(" ") + 1 >= ABSTRACT_KEY_WORDS else None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Paper:
    """One paper as a source reported it."""

    title: str
    abstract: str
    arxiv_id: str | None = None
    authors: tuple[str, ...] | None = None
    author_count: int | None = None
    organization: str | None = None
    published: date | None = None
    upvotes: int | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    github_repo: str | None = None
    project_page: str | None = None
    source: str = ""
    listing_date: date | None = None

    @property
    def key(self) -> str:
        """The folded title: how papers without an arXiv id are matched."""
        return title_key(self.title)

    @property
    def id(self) -> str:
        """The arXiv id when known, else a stable id derived from the title."""
        if self.arxiv_id:
            return self.arxiv_id
        return "title-" + hashlib.sha256(self.key.encode()).hexdigest()[:12]

    @property
    def url(self) -> str:
        """The paper's Hugging Face page, or an arXiv title search without an id."""
        if self.arxiv_id:
            return f"https://huggingface.co/papers/{self.arxiv_id}"
        return "https://arxiv.org/search/?searchtype=title&query=" + quote_plus(self.title)

    def to_json(self) -> dict[str, object]:
        """The stable JSON shape printed by ``paperpost parse --jsonl``."""
        return {
            "id": self.id,
            "title": self.title,
            "abstract": self.abstract,
            "arxiv_id": self.arxiv_id,
            "authors": list(self.authors) if self.authors is not None else None,
            "author_count": self.author_count,
            "organization": self.organization,
            "published": self.published.isoformat() if self.published else None,
            "upvotes": self.upvotes,
            "url": self.url,
            "ai_summary": self.ai_summary,
            "ai_keywords": list(self.ai_keywords),
            "github_repo": self.github_repo,
            "project_page": self.project_page,
        }

    @classmethod
    def from_json(cls, data: dict) -> Paper:
        """Inverse of :meth:`to_json` (the database stores papers this way)."""
        published = data.get("published")
        return cls(
            title=data["title"],
            abstract=data["abstract"],
            arxiv_id=data.get("arxiv_id"),
            authors=tuple(data["authors"]) if data.get("authors") is not None else None,
            author_count=data.get("author_count"),
            organization=data.get("organization"),
            published=date.fromisoformat(published) if published else None,
            upvotes=data.get("upvotes"),
            ai_summary=data.get("ai_summary"),
            ai_keywords=tuple(data.get("ai_keywords") or ()),
            github_repo=data.get("github_repo"),
            project_page=data.get("project_page"),
        )
