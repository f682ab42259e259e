"""Rank papers for readers' interest tags: topics and their parts, not substrings.

A tag is *read* as one or more facets (:func:`read_tag`): a tag that names a topic of the
curated vocabulary (``data/topics.yaml``, by id or synonym alias) is that topic; any other
tag is segmented into the fewest known topic names, and its leftover words become word
facets ("protein-design" is read as protein AND design). A paper must show evidence for
every facet to score high: bounded facet scores are combined by a weighted power mean
(stricter than a geometric mean, so one facet matched strongly cannot carry a missing one),
each facet weighing by how informative its words are, and the exact phrase of a multi-word
tag (plus the reader's own keywords) counts as strong evidence of its own.

Evidence is counted per field (title > HF ``ai_keywords``/TL;DR > abstract), within
segments: a phrase never matches across sentence punctuation, commas or keyword items.
Words weigh by how informative they are in the papers' history (:class:`Background`,
document frequency over the papers seen so far), and a paper whose only evidence is one
generic word is held back. Scores are bounded 0..1 on one scale for every tag, so a
reader's ``min_score`` means the same whatever they follow.

Everything is pure and offline. :func:`rank_many` scores all subscribers at once with
numpy (paper × facet matrices shared by everyone), which is what makes 10,000 readers ×
300 papers cheap.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import Stemmer
import yaml

from paperpost.models import Paper, pickled_by_fields

if TYPE_CHECKING:
    from paperpost.profile import Nudge
    from paperpost.semantic import Vectors

TOPICS_FILE = Path(__file__).with_name("data") / "topics.yaml"
FIELD_WEIGHTS = {"title": 3.0, "keywords": 2.0, "abstract": 1.0}
STRENGTH = {"strong": 2.5, "term": 1.0, "weak": 0.4}
MAX_NGRAM = 5
LOOSE_GAP = 2  # words allowed between the words of a phrase for a loose match
LOOSE_FACTOR = 0.6  # a loose phrase match counts this much of an exact one
DUPLICATE_JACCARD = 0.6
# Calibration: raw evidence e maps to 1 - exp(-e / EVIDENCE_SCALE). One informative word
# in a title is e = 3 (score 0.49), a strong phrase in a title e = 7.5 (0.81), a strong
# phrase once in an abstract e = 2.5 (0.43).
EVIDENCE_SCALE = 4.5
RARE_SHARE = 0.02  # a word in at most this share of past papers is fully informative
PRIOR_PAPERS = 50  # a short history counts as this many more papers without the word
TRUST = 0.5  # a term keeps this much of its weight however common its words are
MISSING_FACET = 0.05  # a facet without evidence counts as this score in the mean
FACET_POWER = -0.5  # facets combine by a weighted power mean (0 would be geometric)
FACET_BASE = 0.5  # a facet weighs FACET_BASE + (1 - FACET_BASE) * how informative its words are
ABSTRACT_ONLY = 0.6  # evidence found only in the abstract counts this much
LEAD_TERM = 0.7  # ... and when the title, keywords or TL;DR hold only ordinary terms
ORDER_ABSTRACT_ONLY = 0.9  # the same two factors in the order of what passes (not the bar)
ORDER_LEAD_TERM = 1.0
EXCLUDE_MIN = 0.5  # a paper is "about" an excluded tag at this score
# ... or when it uses the tag's own words this much (the literal share: a title mention) with
# this much topic evidence: word weights fall when one topic floods the day, the share does not
EXCLUDE_LITERAL = 0.7
EXCLUDE_WITH_WORDS = 0.35
DEFAULT_MIN_SCORE = 0.4  # picked from measurements: docs/ranking.md
BACKGROUND_PAPERS = 10_000  # word weights count over the most recent papers of the history
LITERAL_WEIGHT = 0.3  # the order adds this much more of it (0.5 in all with LITERAL_BAR)
LITERAL_BAR = 0.2  # ... and the score moves by this much times (share - LITERAL_MID)
LITERAL_MID = 0.3
LITERAL_K1 = 1.5  # BM25 term-frequency saturation
LITERAL_B = 0.75  # BM25 length normalisation
BLOCK_CELLS = 1 << 19  # readers × papers cells per block of the per-reader arithmetic
SCORED_WINDOWS = 4  # lists of papers whose reading scores a MatchCache keeps (a run's windows)
POPULARITY_TIEBREAK = 0.02  # upvotes raise the ordering score by at most 2% (never the bar)
# The semantic signal (paperpost[semantic], off by default), for tags that are not one vocabulary
# topic: a paper's cosine to the tag is calibrated per tag as a z-score over the background
# papers' cosines (SEMANTIC_BACKGROUND most recent), then
SEMANTIC_BACKGROUND = 1000
SEMANTIC_MIN_BACKGROUND = 200  # with fewer papers seen so far, the z-scores are too noisy: off
SEMANTIC_LOW = 1.0  # ... the order adds SEMANTIC_WEIGHT x how close, 0 at this z ...
SEMANTIC_HIGH = 4.0  # ... to 1 at this z (cross-validated: benchmarks/README.md, session 5)
SEMANTIC_WEIGHT = 0.3
SEMANTIC_ADMIT = 2.5  # a paper this close scores by meaning too (however few words it shares):
SEMANTIC_SLOPE = 0.2  # SEMANTIC_SLOPE x (z - SEMANTIC_ZERO), at most SEMANTIC_CAP, calibrated to
SEMANTIC_ZERO = 1.75  # the share of judged-relevant papers at each lexical score
SEMANTIC_CAP = 0.6
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it of on or the to with via using toward "
    "towards we our this that their its".split()
)
_WORD = re.compile(r"[a-z0-9]+")
# where phrases stop: sentence punctuation, commas, brackets, colons before a space
_BREAK = re.compile(r"[,;!?()\[\]{}\"\u201c\u201d|]|[.:](?=\s|$)|\s[-\u2013\u2014]+\s")
_STEMMER = Stemmer.Stemmer("english")


def tokens(text: str) -> list[str]:
    """Lower-cased Snowball-stemmed word tokens (hyphens and punctuation split words)."""
    return _STEMMER.stemWords(_WORD.findall(text.lower()))


def segments(text: str) -> list[list[str]]:
    """The tokens of each stretch of text between phrase boundaries."""
    return [words for part in _BREAK.split(text) if (words := tokens(part))]


def phrase(text: str) -> tuple[str, ...]:
    return tuple(tokens(text))


def _content(words: Iterable[str]) -> list[str]:
    return [w for w in words if w not in STOPWORDS]


# --- background: how informative words are ----------------------------------------


@dataclass(eq=False)
class Background:
    """Document frequencies of word stems over the papers seen so far (the `papers` table).

    A word's weight is its inverse document frequency relative to a word found in
    ``RARE_SHARE`` of papers: 1 for rare words, near 0 for words most papers use.
    """

    size: int
    df: dict[str, int]
    length: float = 150.0  # mean words per paper (title, keywords, TL;DR, abstract)
    vectors: np.ndarray | None = None  # the semantic signal's background (most recent papers)
    _weights: dict[str, float] = field(default_factory=dict)
    _phrases: dict[tuple[str, ...], float] = field(default_factory=dict)

    @classmethod
    def of(cls, papers: Iterable[Paper], cache: MatchCache | None = None) -> Background:
        """Document frequencies over ``papers`` (their words come from ``cache`` when given)."""
        records = cache.record if cache is not None else lambda p: _record(_fields(p))
        df: Counter[str] = Counter()
        size = words = 0
        recent: list[Paper] = []
        for paper in papers:
            counts = records(paper).counts
            df.update(counts.keys())
            words += sum(counts.values())
            size += 1
            recent.append(paper)
            if len(recent) > 2 * SEMANTIC_BACKGROUND:
                del recent[:SEMANTIC_BACKGROUND]
        vectors = None  # the semantic signal's background, when it is on and long enough
        source = cache.vectors if cache is not None else None
        if source is not None and len(recent) >= SEMANTIC_MIN_BACKGROUND:
            vectors = source.of(recent[-SEMANTIC_BACKGROUND:])
        return cls(size, dict(df), words / size if size else 150.0, vectors)

    def idf(self, stem: str) -> float:
        """BM25's inverse document frequency of a word over the history."""
        df = self.df.get(stem, 0)
        return math.log(1.0 + (self.size - df + 0.5) / (df + 0.5))

    def weight(self, stem: str) -> float:
        cached = self._weights.get(stem)
        if cached is None:
            if stem in STOPWORDS:
                cached = 0.0
            else:
                idf = math.log((self.size + PRIOR_PAPERS) / (self.df.get(stem, 0) + 1))
                cached = min(1.0, idf / math.log(1 / RARE_SHARE))
            self._weights[stem] = cached
        return cached

    def phrase_weight(self, words: tuple[str, ...]) -> float:
        """How informative a phrase is: a noisy-or of its words' weights."""
        cached = self._phrases.get(words)
        if cached is None:
            missing = 1.0
            for word in _content(words):
                missing *= 1.0 - self.weight(word)
            cached = self._phrases[words] = 1.0 - missing
        return cached


# --- vocabulary ----------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    words: tuple[str, ...]
    text: str
    strength: float
    context: tuple[tuple[str, ...], ...] = ()  # counts only if one of these appears too


@dataclass(frozen=True, slots=True, eq=False)  # one object per topic: hashed by identity
class Topic:
    """Evidence for one facet: a vocabulary topic, a word of a tag, or a tag's phrase."""

    id: str
    name: str
    terms: tuple[Term, ...]
    avoid: tuple[tuple[str, ...], ...] = ()
    curated: bool = True  # a vocabulary topic (not a word or phrase of the tag itself)


@dataclass(frozen=True, slots=True)
class Facet:
    topic: Topic
    words: tuple[str, ...]  # the tag's words this facet stands for (its weight comes from them)

    @property
    def is_topic(self) -> bool:
        return self.topic.curated


@dataclass(frozen=True, slots=True)
class Reading:
    """How a tag is read: facets that must all show evidence, and a phrase bonus."""

    tag: str
    facets: tuple[Facet, ...]
    bonus: Topic | None  # the tag's exact phrase and the reader's keywords

    def describe(self) -> str:
        """``protein AND design``; a topic shows as its id."""
        return " AND ".join(f.topic.id if f.is_topic else f.topic.name for f in self.facets)


@dataclass(frozen=True, slots=True)
class Interest:
    """What a reader asked for: a tag, its weight, and extra keywords of their own."""

    tag: str
    weight: float = 1.0
    keywords: tuple[str, ...] = ()


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Ranked:
    paper: Paper
    score: float
    matched: tuple[str, ...]
    why: str  # short, for readers: "speculative decoding, draft model"
    evidence: tuple[dict, ...] = ()  # per tag: score, facet scores, (field, term) hits


@cache
def _slug(tag: str) -> str:
    return " ".join(tokens(tag))


@cache
def vocabulary(path: Path = TOPICS_FILE) -> dict[str, Topic]:
    """Topics by every name they answer to (id and aliases, as slugs)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    table: dict[str, Topic] = {}
    for entry in raw["topics"]:
        context = {
            phrase(k): tuple(phrase(c) for c in v) for k, v in entry.get("context", {}).items()
        }
        terms: list[Term] = []
        for level in ("strong", "term", "weak"):
            for text in entry.get(level, []):
                words = phrase(text)
                terms.append(Term(words, text, STRENGTH[level], context.get(words, ())))
        topic = Topic(
            id=entry["id"],
            name=entry.get("name", entry["id"]),
            terms=_ordered(terms),
            avoid=tuple(phrase(a) for a in entry.get("avoid", [])),
        )
        for name in [entry["id"], *entry.get("aliases", [])]:
            table[_slug(name)] = topic
    return table


@cache
def _vocabulary_words() -> dict[str, str]:
    """Every word the vocabulary uses, stem -> a readable form (for did-you-mean)."""
    words: dict[str, str] = {}
    for topic in vocabulary().values():
        for term in topic.terms:
            for text in _WORD.findall(term.text.lower()):
                words.setdefault(tokens(text)[0], text)
    return words


def _ordered(terms: Sequence[Term]) -> tuple[Term, ...]:
    """One term per distinct phrase (the first listed wins), longest phrases first."""
    unique: dict[tuple[str, ...], Term] = {}
    for term in terms:
        if term.words and term.words not in unique:
            unique[term.words] = term
    return tuple(sorted(unique.values(), key=lambda t: -len(t.words)))


def _segment(words: tuple[str, ...]) -> list[tuple[int, int, Topic | None]]:
    """Split a tag's words into the fewest pieces: known topic names, else single words.

    Stopwords outside a name are dropped. Ties prefer covering more words by names.
    """
    names = vocabulary()
    n = len(words)
    best: list[tuple[int, int, list[tuple[int, int, Topic | None]]] | None] = [None] * (n + 1)
    best[0] = (0, 0, [])
    for end in range(1, n + 1):
        options = []
        for start in range(end):
            prior = best[start]
            if prior is None:
                continue
            pieces, uncovered, path = prior
            topic = names.get(" ".join(words[start:end]))
            if topic is not None:
                options.append((pieces + 1, uncovered, [*path, (start, end, topic)]))
            elif end - start == 1:
                if words[start] in STOPWORDS:
                    options.append((pieces, uncovered, path))
                else:
                    options.append((pieces + 1, uncovered + 1, [*path, (start, end, None)]))
        best[end] = min(options, key=lambda o: (o[0], o[1])) if options else None
    result = best[n]
    return result[2] if result else []


@cache
def _word_topic(stem: str, text: str) -> Topic:
    return Topic(id=stem, name=text, terms=(Term((stem,), text, STRENGTH["term"]),), curated=False)


@cache
def read_tag(tag: str, keywords: tuple[str, ...] = ()) -> Reading:
    """How a tag is read (see the module docstring); the same tag always reads the same."""
    slug = _slug(tag)
    words = tuple(slug.split())
    known = vocabulary().get(slug)
    visible = _WORD.findall(tag.lower())
    if known is not None:
        facets: tuple[Facet, ...] = (Facet(known, words),)
    else:
        pieces = []
        for start, end, topic in _segment(words):
            if topic is None:
                text = visible[start] if len(visible) == len(words) else words[start]
                topic = _word_topic(words[start], text)
            pieces.append(Facet(topic, words[start:end]))
        facets = tuple(pieces)
    bonus_terms = [Term(phrase(k), k, STRENGTH["strong"]) for k in keywords if phrase(k)]
    if known is None and len(_content(words)) > 1:
        bonus_terms.append(Term(words, " ".join(visible), STRENGTH["strong"]))
    bonus = None
    if bonus_terms:
        bonus = Topic(id=f"{tag} (phrase)", name=tag, terms=_ordered(bonus_terms), curated=False)
    return Reading(tag, facets, bonus)


def tag_warnings(tag: str) -> list[str]:
    """What a person should know about a tag that is not a vocabulary topic (or [])."""
    if _slug(tag) in vocabulary():
        return []
    reading = read_tag(tag)
    if not reading.facets:
        return [f"tag {tag!r} has no words to match"]
    names = sorted({topic.id for topic in vocabulary().values()})
    hyphenated = "-".join(_WORD.findall(tag.lower()))
    suggestions = difflib.get_close_matches(hyphenated, names, n=3, cutoff=0.75)
    known_words = _vocabulary_words()
    for facet in reading.facets:
        if not facet.is_topic and facet.topic.id not in known_words:
            near = difflib.get_close_matches(facet.topic.id, list(known_words), n=1, cutoff=0.75)
            if near:
                suggestions.append(tag.lower().replace(facet.topic.name, known_words[near[0]]))
    message = f"tag {tag!r} is not a topic in the vocabulary; read as: {reading.describe()}"
    if suggestions:
        message += "; did you mean " + " or ".join(dict.fromkeys(suggestions)) + "?"
    return [message]


def explain_tag(tag: str) -> list[str]:
    """Lines telling how a tag resolves to facets (``paperpost rank --explain-tag``)."""
    reading = read_tag(tag)
    known = _slug(tag) in vocabulary()
    lines = [
        f"{tag}: "
        + ("the vocabulary topic" if known else "not a vocabulary topic; read as")
        + f" {reading.describe()}"
    ]
    for facet in reading.facets:
        if facet.is_topic:
            strong = [t.text for t in facet.topic.terms if t.strength >= STRENGTH["strong"]]
            lines.append(
                f"  facet {facet.topic.id} ({facet.topic.name}): topic with "
                f"{len(facet.topic.terms)} terms, e.g. {', '.join(strong[:6])}"
            )
        else:
            lines.append(f"  facet {facet.topic.name}: the word itself (stem {facet.topic.id!r})")
    if len(reading.facets) > 1:
        lines.append(
            "  a paper needs evidence for every facet; facets weigh by how informative "
            "their words are in the papers seen so far"
        )
    if reading.bonus is not None:
        lines.append(
            "  strong evidence on its own: " + ", ".join(t.text for t in reading.bonus.terms)
        )
    for warning in tag_warnings(tag):
        if "did you mean" in warning:
            lines.append("  " + warning.split("; ", 2)[-1])
    return lines


# --- evidence ----------------------------------------


@dataclass(slots=True, eq=False)
class _Doc:
    grams: dict[str, Counter[tuple[str, ...]]]  # n-grams within segments, per field
    segments: dict[str, list[list[str]]]
    vocab: dict[str, frozenset[str]]
    stems: frozenset[str]


def _fields(paper: Paper) -> dict[str, list[list[str]]]:
    """A paper's token segments per field (keywords: AI keywords and the TL;DR)."""
    return {
        "title": segments(paper.title),
        "keywords": [
            *(words for k in paper.ai_keywords if (words := tokens(k))),
            *segments(paper.ai_summary or ""),
        ],
        "abstract": segments(paper.abstract),
    }


def _record(parts: dict[str, list[list[str]]]) -> Record:
    """A paper's word stems and how often each occurs (all fields), nothing matched yet."""
    return Record(Counter(chain.from_iterable(chain.from_iterable(parts.values()))))


def _doc(parts: dict[str, list[list[str]]], starts: frozenset[str]) -> _Doc:
    """A paper's n-grams per field (``parts``: its :func:`_fields`): every word, and the
    longer n-grams (up to MAX_NGRAM words) that begin with one of ``starts``, the first words
    of the phrases that will be looked up."""
    grams: dict[str, Counter[tuple[str, ...]]] = {}
    vocab = {}
    for name, segs in parts.items():
        counter: Counter[tuple[str, ...]] = Counter(zip(chain.from_iterable(segs)))
        for words in segs:
            if starts.isdisjoint(words):
                continue
            size = len(words)
            for i, word in enumerate(words):
                if word in starts:
                    for n in range(2, min(MAX_NGRAM, size - i) + 1):
                        counter[tuple(words[i : i + n])] += 1
        grams[name] = counter
        vocab[name] = frozenset(chain.from_iterable(segs))
    stems = frozenset().union(*vocab.values())
    return _Doc(grams, parts, vocab, stems)


def _loose_count(segs: list[list[str]], phrase_words: tuple[str, ...]) -> int:
    """Occurrences of a phrase's words in order with at most LOOSE_GAP words between
    neighbours ("speculative Jacobi decoding" for "speculative decoding"), in one segment."""
    count = 0
    first, rest = phrase_words[0], phrase_words[1:]
    for words in segs:
        for start, word in enumerate(words):
            if word != first:
                continue
            position = start
            for wanted in rest:
                window = words[position + 1 : position + 2 + LOOSE_GAP]
                if wanted not in window:
                    break
                position += 1 + window.index(wanted)
            else:
                count += 1
    return count


@dataclass(frozen=True, slots=True)
class Evidence:
    """How strongly one paper matches one facet."""

    raw: float  # unbounded evidence
    hits: tuple[tuple[float, str, str, int], ...]  # (gain, field, term text, words), best first
    units: int  # distinct terms matched; a phrase counts 2
    single: float  # if the only evidence is one word: that word's weight squared, else 1
    lead: float = 0.0  # the strongest evidence in the title, AI keywords or TL;DR (strength)

    @property
    def score(self) -> float:
        return 1.0 - math.exp(-self.raw / EVIDENCE_SCALE)


_NONE = Evidence(0.0, (), 0, 1.0)


@dataclass(frozen=True, slots=True)
class Match:
    """One term of a facet found in one field of a paper, before word weights: what a
    paper's text says about a topic, whatever the history. This is what is cached."""

    field: str
    words: tuple[str, ...]
    text: str
    strength: float  # the term's strength (times LOOSE_FACTOR for a loose match)
    count: int  # occurrences not covered by a longer term
    lead: float  # strength toward the title/keywords/TL;DR lead (0 in the abstract)


def matches(doc: _Doc, topic: Topic) -> tuple[Match, ...]:
    """The terms of ``topic`` a document holds, per field (no word weights: see :func:`weigh`).

    Within a field, an occurrence counts once, for the longest term that covers it:
    "speculative decoding" in a title does not also count as "speculative". The
    topic's ``avoid`` phrases cover their words the same way without scoring.
    """
    found: list[Match] = []
    firsts, word_sets = _term_words(topic)
    for name, grams in doc.grams.items():
        present = doc.vocab[name]
        if firsts.isdisjoint(present):
            continue
        matched: list[tuple[str, ...]] = []
        for term, words in zip(topic.terms, word_sets, strict=True):  # longest first
            if not words <= present:  # neither an exact nor a loose match
                continue
            count = grams.get(term.words, 0)
            strength = term.strength
            if not count and len(term.words) > 1 and present.issuperset(term.words):
                count = _loose_count(doc.segments[name], term.words)
                strength *= LOOSE_FACTOR
            if not count or (term.context and not _anywhere(doc, term.context)):
                continue
            if matched or topic.avoid:
                count -= sum(
                    grams.get(longer, 0)
                    for longer in matched + list(topic.avoid)
                    if len(longer) > len(term.words) and _contains(longer, term.words)
                )
            if count <= 0:
                continue
            matched.append(term.words)
            lead = 0.0
            if name != "abstract":
                lead = term.strength if topic.curated else STRENGTH["strong"]
            found.append(Match(name, term.words, term.text, strength, count, lead))
    return tuple(found)


def _phrase_starts(topics: Sequence[Topic]) -> frozenset[str]:
    """The first words of the phrases :func:`matches` looks up for these topics: terms,
    their context phrases and the topics' avoid phrases."""
    phrases = chain.from_iterable(
        chain(
            (term.words for term in topic.terms),
            (c for term in topic.terms for c in term.context),
            topic.avoid,
        )
        for topic in topics
    )
    return frozenset(words[0] for words in phrases if len(words) > 1)


@cache
def _term_words(topic: Topic) -> tuple[frozenset[str], tuple[frozenset[str], ...]]:
    """The first words of a topic's terms, and each term's words as a set."""
    return (
        frozenset(term.words[0] for term in topic.terms),
        tuple(frozenset(term.words) for term in topic.terms),
    )


def _anywhere(doc: _Doc, phrases: tuple[tuple[str, ...], ...]) -> bool:
    """Whether one of ``phrases`` occurs in some field of the document."""
    return any(grams.get(words) for words in phrases for grams in doc.grams.values())


def weigh(found: Sequence[Match], background: Background) -> Evidence:
    """Evidence from a facet's matches: each term weighs by how informative its words are
    in the history (the only part that depends on the papers seen so far)."""
    total = 0.0
    lead = 0.0
    hits: list[tuple[float, str, str, int]] = []
    distinct: dict[tuple[str, ...], float] = {}
    for match in found:
        informative = background.phrase_weight(match.words)
        informative = TRUST + (1.0 - TRUST) * informative
        gain = (
            FIELD_WEIGHTS[match.field]
            * match.strength
            * informative
            * (1.0 + 0.5 * math.log(match.count))
        )
        if gain <= 0:
            continue
        total += gain
        lead = max(lead, match.lead)
        hits.append((gain, match.field, match.text, _content_words(match.words)))
        distinct[match.words] = informative
    if not hits:
        return _NONE
    hits.sort(key=lambda h: -h[0])
    units = sum(2 if _content_words(words) > 1 else 1 for words in distinct)
    single = 1.0
    if units == 1:
        (words,) = distinct
        single = background.phrase_weight(words) ** 2
    return Evidence(total, tuple(hits), units, single, lead)


@cache
def _content_words(words: tuple[str, ...]) -> int:
    return len(_content(words))


def _lead_factor(strength: np.ndarray, term: float, abstract: float) -> np.ndarray:
    """How much of a paper's score stands, by its strongest evidence outside the abstract:
    all of it for a strong term there, ``term`` for an ordinary one, else ``abstract``."""
    return np.where(
        strength >= STRENGTH["strong"], 1.0, np.where(strength >= STRENGTH["term"], term, abstract)
    )


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    n = len(shorter)
    return any(longer[i : i + n] == shorter for i in range(len(longer) - n + 1))


# --- ranking ----------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """One reader's interests, as the ranker needs them."""

    interests: tuple[Interest, ...]
    exclude: tuple[str, ...] = ()
    min_score: float = DEFAULT_MIN_SCORE
    max_items: int = 10


def _near_duplicates(papers: Sequence[Paper]) -> dict[int, set[int]]:
    """Pairs of papers whose titles are nearly the same (token Jaccard >= DUPLICATE_JACCARD).

    A prefix-filtered join, not all pairs: with each title's words ordered rarest first, two
    titles that similar share a word among the first ``len - floor(J * len) + 1`` of each
    (J = DUPLICATE_JACCARD), so only titles sharing such a word are compared.
    """
    sets = [frozenset(tokens(p.title)) - STOPWORDS for p in papers]
    frequency = Counter(word for words in sets for word in words)
    index: dict[str, list[int]] = {}
    pairs: dict[int, set[int]] = {}
    for i, a in enumerate(sets):
        if not a:
            continue
        ordered = sorted(a, key=lambda w: (frequency[w], w))
        prefix = ordered[: len(a) - math.floor(DUPLICATE_JACCARD * len(a)) + 1]
        compared: set[int] = set()
        for word in prefix:
            for j in index.get(word, ()):
                if j in compared:
                    continue
                compared.add(j)
                b = sets[j]
                if len(a & b) / len(a | b) >= DUPLICATE_JACCARD:
                    pairs.setdefault(i, set()).add(j)
                    pairs.setdefault(j, set()).add(i)
            index.setdefault(word, []).append(i)
    return pairs


def _literal(
    papers: Sequence[Paper], records: list[Record], readings: list[Reading], background: Background
) -> np.ndarray:
    """Readings × papers: BM25 of the tag's own words (and the reader's keywords), as a
    share of the most a paper could score (0..1).

    The bag-of-words view of a tag, with word weights from the history: it orders the
    papers the facets found by how much they use the words the reader wrote. A word in
    the title counts ``FIELD_WEIGHTS["title"]`` times, as in BM25F.
    """
    queries = []
    for reading in readings:
        words = _content(_slug(reading.tag).split())
        if reading.bonus is not None:
            words += [w for t in reading.bonus.terms for w in _content(t.words)]
        queries.append(list(dict.fromkeys(words)))
    vocab = {w: i for i, w in enumerate(dict.fromkeys(w for q in queries for w in q))}
    tf = np.zeros((len(vocab), len(records)))
    extra = FIELD_WEIGHTS["title"] - 1.0
    for p, (paper, record) in enumerate(zip(papers, records, strict=True)):
        for w in vocab.keys() & record.counts.keys():  # a paper's words, not every query's
            tf[vocab[w], p] = record.counts[w]
        for w in tokens(paper.title):
            if w in vocab:
                tf[vocab[w], p] += extra
    lengths = np.array([record.length for record in records], dtype=np.float64)
    norm = LITERAL_K1 * (1.0 - LITERAL_B + LITERAL_B * lengths / max(background.length, 1.0))
    saturated = tf * (LITERAL_K1 + 1.0) / (tf + norm)
    idf = np.array([background.idf(w) for w in vocab])
    query = np.zeros((len(readings), len(vocab)))
    for r, words in enumerate(queries):
        for w in words:
            query[r, vocab[w]] = idf[vocab[w]]
    best = query.sum(axis=1, keepdims=True) * (LITERAL_K1 + 1.0)
    out = np.zeros((len(readings), len(records)))
    return np.divide(query @ saturated, best, out=out, where=best > 0)


# --- what papers hold, per distinct topic: computed once, cached across runs ----------

CACHE_FORMAT = 1  # bump when the stored form of a record changes


@cache
def ranker_version() -> str:
    """The version cached matches belong to: a hash of this module's source, the vocabulary
    and the stemmer. Any change to the ranker's code or vocabulary gives a new version, so
    no cached match outlives the code that computed it."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}; stemmer {_stemmer_version()}".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(TOPICS_FILE.read_bytes())
    return digest.hexdigest()[:16]


def _stemmer_version() -> str:
    from importlib.metadata import version

    return version("PyStemmer")


def text_key(paper: Paper) -> str:
    """A paper's text (the fields the ranker reads), hashed: what its matches depend on."""
    text = json.dumps([paper.title, list(paper.ai_keywords), paper.ai_summary, paper.abstract])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@cache
def topic_key(topic: Topic) -> str:
    """A facet's content (terms, context, avoid), hashed: equal content, equal matches."""
    content = (
        topic.curated,
        topic.avoid,
        [(t.words, t.text, t.strength, t.context) for t in topic.terms],
    )
    return hashlib.sha256(repr(content).encode()).hexdigest()[:16]


@dataclass(slots=True, eq=False)
class Record:
    """What one paper's text holds for the ranker: how often each word stem occurs (all
    fields: document frequencies and BM25 count them) and, per topic key, the topic's
    matches (empty: looked, found nothing). A topic needs an entry only when the paper
    holds every word of one of its terms."""

    counts: dict[str, int]
    found: dict[str, tuple[Match, ...]] = field(default_factory=dict)
    stems: frozenset[str] = field(init=False)
    length: int = field(init=False)  # words in all fields

    def __post_init__(self) -> None:
        self.stems = frozenset(self.counts)
        self.length = sum(self.counts.values())

    def encode(self) -> str:
        found = {
            key: [[m.field, m.words, m.text, m.strength, m.count, m.lead] for m in ms]
            for key, ms in self.found.items()
        }
        return json.dumps({"counts": self.counts, "found": found}, separators=(",", ":"))

    @classmethod
    def decode(cls, data: str) -> Record:
        """A stored record; ValueError when it is not one (the caller recomputes it). Its
        data is trusted as far as its shape goes: the store checks each row's checksum."""
        try:
            raw = json.loads(data)
            found = {
                key: tuple(Match(f, tuple(w), t, s, c, lead) for f, w, t, s, c, lead in ms)
                for key, ms in raw["found"].items()
            }
            counts = raw["counts"]
            if not isinstance(counts, dict):
                raise TypeError("counts is not an object")
            return cls(counts, found)
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a cached record: {exc}") from exc


class MatchCache:
    """Per paper text and distinct topic, what matched: computed once, then shared by every
    batch of readers in a run, and (saved by the pipeline) by later runs.

    Holds only what does not depend on the history (:class:`Match`); evidence is weighed
    by the background given to :meth:`evidence`, once per (paper, topic) and background.
    """

    def __init__(
        self, records: dict[str, Record] | None = None, vectors: Vectors | None = None
    ) -> None:
        self.records: dict[str, Record] = dict(records or {})
        self.vectors = vectors  # paper and tag vectors: the semantic signal is on
        self._keys: dict[Paper, str] = {}
        self._changed: set[str] = set()
        self._parts: dict[str, dict[str, list[list[str]]]] = {}
        self._lock = threading.Lock()
        self._weighed: dict[tuple[str, str], Evidence] = {}
        self._weighed_with: Background | None = None
        self._duplicates: tuple[tuple[str, ...], dict[int, set[int]]] | None = None
        self._scored: dict[tuple[str, ...], dict[Reading, tuple[_Scores, int]]] = {}
        self._scored_with: Background | None = None

    def key(self, paper: Paper) -> str:
        key = self._keys.get(paper)
        if key is None:
            key = self._keys[paper] = text_key(paper)
        return key

    def record(self, paper: Paper) -> Record:
        """The paper's record (its word counts computed now if it has none)."""
        key = self.key(paper)
        record = self.records.get(key)
        if record is None:
            parts = self._parts[key] = _fields(paper)  # kept until its n-grams are made
            record = self.records[key] = _record(parts)
            self._mark(key)
        return record

    def take_changed(self) -> dict[str, Record]:
        """Records computed or extended since the last call (what to save)."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return {key: self.records[key] for key in changed}

    def _mark(self, key: str) -> None:
        with self._lock:
            self._changed.add(key)

    def evidence(
        self, papers: Sequence[Paper], topics: Sequence[Topic], background: Background
    ) -> list[dict[int, Evidence]]:
        """Per paper, the evidence for each topic it has some (others are zero).

        A topic is looked at only when the paper holds every word of one of its terms; its
        matches come from the record when there, else from the paper's text (once).
        """
        if background is not self._weighed_with:
            self._weighed, self._weighed_with = {}, background
        keys = [topic_key(topic) for topic in topics]
        starts = _phrase_starts(topics)
        by_first: dict[str, list[tuple[frozenset[str], int]]] = {}
        for t, topic in enumerate(topics):
            for term in topic.terms:
                by_first.setdefault(term.words[0], []).append((frozenset(term.words), t))
        table = []
        for paper in papers:
            key = self.key(paper)
            record = self.records.get(key)
            doc = None
            if record is None:
                record = self.record(paper)
            candidates: set[int] = set()
            for first in by_first.keys() & record.stems:
                for words, t in by_first[first]:
                    if t not in candidates and words <= record.stems:
                        candidates.add(t)
            found = {}
            for t in candidates:
                ev = self._weighed.get((key, keys[t]))
                if ev is None:
                    held = record.found.get(keys[t])
                    if held is None:
                        if doc is None:
                            doc = _doc(self._parts.pop(key, None) or _fields(paper), starts)
                        held = record.found[keys[t]] = matches(doc, topics[t])
                        self._mark(key)
                    ev = self._weighed[key, keys[t]] = weigh(held, background) if held else _NONE
                if ev.raw > 0:
                    found[t] = ev
            table.append(found)
        self._parts.clear()  # tokens kept for papers no one ranked: made again if needed
        return table

    def scores(
        self, papers: Sequence[Paper], readings: list[Reading], background: Background
    ) -> _Scored:
        """Readings × papers scores (:class:`_Scores`): a reading is scored once per list of
        papers and background, then shared by every batch of readers that follows it."""
        if background is not self._scored_with:
            self._scored, self._scored_with = {}, background
        keys = tuple(self.key(p) for p in papers)
        rows = self._scored.get(keys)
        if rows is None:
            if len(self._scored) >= SCORED_WINDOWS:
                self._scored.pop(next(iter(self._scored), keys), None)
            rows = self._scored[keys] = {}
        missing = [r for r in dict.fromkeys(readings) if r not in rows]
        if missing:
            table = _Scores(papers, missing, background, self)
            rows.update({reading: (table, i) for i, reading in enumerate(missing)})
        owners = [rows[reading] for reading in readings]
        shape = (len(readings), len(papers))
        near = any(table.near is not None for table, _ in owners)
        result = _Scored(
            *(np.empty(shape) for _ in range(4)), np.zeros(shape) if near else None, owners
        )
        by_table: dict[int, tuple[_Scores, list[int], list[int]]] = {}
        for r, (table, i) in enumerate(owners):
            entry = by_table.setdefault(id(table), (table, [], []))
            entry[1].append(r)
            entry[2].append(i)
        for table, into, rows_of in by_table.values():
            result.score[into] = table.score[rows_of]
            result.about[into] = table.about[rows_of]
            result.literal[into] = table.literal[rows_of]
            result.order[into] = table.order[rows_of]
            if result.near is not None and table.near is not None:
                result.near[into] = table.near[rows_of]
        return result

    def duplicates(self, papers: Sequence[Paper], among: list[int]) -> dict[int, set[int]]:
        """Near-duplicate titles among ``papers[i] for i in among``, by index into ``papers``
        (remembered for the same papers)."""
        keys = tuple(self.key(papers[i]) for i in among)
        if self._duplicates is None or self._duplicates[0] != keys:
            pairs = _near_duplicates([papers[i] for i in among])
            found = {among[i]: {among[j] for j in js} for i, js in pairs.items()}
            self._duplicates = (keys, found)
        return self._duplicates[1]


class _Scores:
    """Reading × paper scores for a batch: facets and phrase bonuses, combined."""

    def __init__(
        self,
        papers: Sequence[Paper],
        readings: list[Reading],
        background: Background,
        cache: MatchCache,
    ) -> None:
        topic_index: dict[Topic, int] = {}
        for reading in readings:
            for facet in reading.facets:
                topic_index.setdefault(facet.topic, len(topic_index))
            if reading.bonus is not None:
                topic_index.setdefault(reading.bonus, len(topic_index))
        topics = list(topic_index)
        self.topics = topics
        self.topic_index = topic_index
        self.readings = readings
        self.evid = cache.evidence(papers, topics, background)

        n_topics, n_papers = len(topics), len(papers)
        score = np.zeros((n_topics, n_papers))
        units = np.zeros((n_topics, n_papers))
        single = np.zeros((n_topics, n_papers))
        lead = np.zeros((n_topics, n_papers))  # strongest evidence outside the abstract
        cells = [ev for found in self.evid for ev in found.values()]
        at = (
            np.array([t for found in self.evid for t in found], dtype=np.intp),
            np.array([p for p, found in enumerate(self.evid) for _ in found], dtype=np.intp),
        )
        score[at] = [ev.score for ev in cells]
        lead[at] = [ev.lead for ev in cells]
        units[at] = [ev.units for ev in cells]
        single[at] = [ev.single if ev.units == 1 else 0.0 for ev in cells]

        n_read = len(readings)
        weights = np.zeros((n_read, n_topics))  # facet weights, normalised per reading
        member = np.zeros((n_read, n_topics))  # facets and bonus, for counting evidence
        bonus = np.zeros((n_read, n_topics))
        for r, reading in enumerate(readings):
            for facet in reading.facets:
                t = topic_index[facet.topic]
                weights[r, t] += FACET_BASE + (1.0 - FACET_BASE) * background.phrase_weight(
                    facet.words
                )
                member[r, t] = 1.0
            if reading.bonus is not None:
                t = topic_index[reading.bonus]
                bonus[r, t] = 1.0
                member[r, t] = 1.0
        totals = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)

        smoothed = MISSING_FACET + (1.0 - MISSING_FACET) * score
        with np.errstate(divide="ignore"):  # a reading with no facets: 0 ** -2, zeroed below
            mean = _row_sums(weights, smoothed**FACET_POWER) ** (1.0 / FACET_POWER)
        facets = (mean - MISSING_FACET) / (1.0 - MISSING_FACET)
        facets = np.clip(facets, 0.0, 1.0) * (totals > 0)
        phrase_score = _row_sums(bonus, score)
        combined = 1.0 - (1.0 - facets) * (1.0 - phrase_score)
        count = _row_sums(member, units)
        # one word of evidence is held back unless that word is the whole tag
        whole_word = np.array([len(r.facets) == 1 and not r.facets[0].is_topic for r in readings])
        one_word = (count == 1) & ~whole_word[:, None]
        self.about = combined.copy()  # for exclusions: one word in a title is enough there
        combined[one_word] *= _row_sums(member, single)[one_word]
        # what a paper is about shows in its title, keywords or TL;DR: evidence found only
        # in the abstract, or only weak terms there, is a mention in passing
        strongest = np.zeros_like(combined)
        for r, reading in enumerate(readings):
            parts = [topic_index[f.topic] for f in reading.facets]
            if reading.bonus is not None:
                parts.append(topic_index[reading.bonus])
            if parts:  # a tag with no words to match (subscribers refuse it) finds nothing
                strongest[r] = lead[parts].max(axis=0)
            else:
                combined[r] = 0.0
        plain = combined
        combined = plain * _lead_factor(strongest, LEAD_TERM, ABSTRACT_ONLY)
        records = [cache.record(p) for p in papers]
        self.literal = _literal(papers, records, readings, background)
        # the reader's own words weigh in: a paper that uses them a lot gains up to
        # LITERAL_BAR * (1 - LITERAL_MID), one that barely does loses a little
        shift = LITERAL_BAR * (self.literal - LITERAL_MID)
        self.score = np.where(combined > 0, np.clip(combined + shift, 0.0, 1.0), 0.0)
        # the order among papers that pass: where the evidence sits matters less there (any
        # term in the title, keywords or TL;DR counts in full); cross-validated on the spent
        # blind rounds (benchmarks/README.md, session 4)
        ordered = plain * _lead_factor(strongest, ORDER_LEAD_TERM, ORDER_ABSTRACT_ONLY)
        self.order = np.where(combined > 0, np.clip(ordered + shift, 0.0, 1.0), 0.0)
        self.near: np.ndarray | None = None  # how close in meaning (0..1), semantic signal on
        self.meaning: np.ndarray | None = None  # the score came from meaning, not words
        self.z: np.ndarray | None = None
        vectors = cache.vectors
        base = background.vectors
        if vectors is not None and base is not None and len(base) >= SEMANTIC_MIN_BACKGROUND:
            composed = [r for r, reading in enumerate(readings) if not _is_topic(reading)]
            if composed:
                self._semantic(papers, composed, base, vectors)

    def _semantic(
        self, papers: Sequence[Paper], rows: list[int], base: np.ndarray, vectors: Vectors
    ) -> None:
        """Fuse the semantic signal into the readings ``rows`` (tags that are not one
        vocabulary topic): the cosine of tag and paper, as a z-score over the background
        papers' cosines to the same tag, so that it means the same for every tag."""
        from paperpost.semantic import tag_text

        tags = vectors.of_tags([tag_text(self.readings[r].tag) for r in rows])
        around = tags @ base.T
        spread = np.maximum(around.std(axis=1, keepdims=True), 1e-6)
        z = (tags @ vectors.of(papers).T - around.mean(axis=1, keepdims=True)) / spread
        z = z.astype(np.float64)
        shape = self.score.shape
        self.z, self.near, by_meaning = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.z[rows] = z
        self.near[rows] = np.clip((z - SEMANTIC_LOW) / (SEMANTIC_HIGH - SEMANTIC_LOW), 0.0, 1.0)
        admitted = np.clip(SEMANTIC_SLOPE * (z - SEMANTIC_ZERO), 0.0, SEMANTIC_CAP)
        by_meaning[rows] = np.where(z >= SEMANTIC_ADMIT, admitted, 0.0)
        self.meaning = by_meaning > self.score
        self.score = np.maximum(self.score, by_meaning)

    def detail(self, r: int, p: int) -> dict:
        reading = self.readings[r]
        facets = {}
        hits: list[tuple[float, str, str, str]] = []
        parts = [*reading.facets, *([Facet(reading.bonus, ())] if reading.bonus else [])]
        for facet in parts:
            ev = self.evid[p].get(self.topic_index[facet.topic], _NONE)
            label = "phrase" if facet.topic is reading.bonus else facet.topic.id
            facets[label] = round(ev.score, 3)
            hits += [(gain, field_, text, label) for gain, field_, text, _ in ev.hits]
        hits.sort(key=lambda h: -h[0])
        detail = {
            "tag": reading.tag,
            "score": round(float(self.score[r, p]), 3),
            "facets": facets,
            "hits": [{"facet": f, "field": fld, "term": t} for _, fld, t, f in hits],
        }
        if self.z is not None and self.near is not None and self.meaning is not None:
            scored = bool(self.meaning[r, p])
            if self.near[r, p] > 0 or scored:  # how close in meaning, and if the score is that
                detail["meaning"] = {"z": round(float(self.z[r, p]), 2), "scored": scored}
        return detail


@dataclass(slots=True)
class _Scored:
    """Readings × papers of one call, gathered from the tables that scored each reading."""

    score: np.ndarray
    about: np.ndarray
    literal: np.ndarray
    order: np.ndarray
    near: np.ndarray | None  # the semantic signal, when on
    owners: list[tuple[_Scores, int]]

    def detail(self, r: int, p: int) -> dict:
        table, row = self.owners[r]
        return table.detail(row, p)


def _is_topic(reading: Reading) -> bool:
    """A tag that is one vocabulary topic (the semantic signal leaves those alone)."""
    return len(reading.facets) == 1 and reading.facets[0].is_topic


def _row_sums(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``weights @ rows`` for a ``weights`` with a few non-zero entries per row (a reading's
    facets) and finite ``rows``: the non-zero terms, added in column order (padding adds
    0 × the first row, an exact 0)."""
    at_row, at_col = np.nonzero(weights)
    counts = np.bincount(at_row, minlength=len(weights))
    slot = np.arange(len(at_row)) - np.repeat(np.cumsum(counts) - counts, counts)
    index = np.zeros((len(weights), int(counts.max(initial=0))), dtype=np.intp)
    index[at_row, slot] = at_col
    factor = np.zeros(index.shape)
    factor[at_row, slot] = weights[at_row, at_col]
    total = np.zeros((len(weights), rows.shape[1]))
    for k in range(index.shape[1]):
        total += factor[:, k, None] * rows[index[:, k]]
    return total


def _short_reason(details: list[dict]) -> str:
    """``speculative decoding, draft model``; per tag when several tags matched."""
    parts = []
    for detail in details:
        if detail.get("meaning", {}).get("scored"):
            from paperpost.semantic import tag_text

            text = f"close in meaning to '{tag_text(detail['tag'])}'"
            parts.append(f"{detail['tag']}: {text}" if len(details) > 1 else text)
            continue
        terms: list[str] = []
        for hit in detail["hits"]:
            if hit["term"].lower() not in (t.lower() for t in terms):
                terms.append(hit["term"])
            if len(terms) == 3:
                break
        text = ", ".join(terms)
        parts.append(f"{detail['tag']}: {text}" if len(details) > 1 else text)
    return "; ".join(parts)


def rank_many(
    papers: Sequence[Paper],
    profiles: Sequence[Profile],
    nudge: Nudge | None = None,
    background: Background | None = None,
    cache: MatchCache | None = None,
) -> list[list[Ranked]]:
    """Rank ``papers`` for every profile at once; one ordered list per profile.

    ``nudge`` (from :func:`paperpost.profile.nudge`) applies what readers taught by votes,
    examples and follows: a bounded bonus on the tag score, and followed papers first.
    ``background`` is the history word weights come from (default: ``papers`` alone;
    the pipeline passes the recent papers of the store). ``cache`` holds what papers
    matched per topic (default: a new one; the pipeline passes one per run, kept in the
    database across runs) and each reading's scores, shared by the run's batches.

    Readers who ask for the same thing (tags, weights, keywords, exclusions, min_score) are
    one *setting*, scored and sorted once; the arithmetic runs over blocks of settings so
    that no readers × papers temporary grows with the list.
    """
    if not papers or not profiles:
        return [[] for _ in profiles]
    if cache is None:
        cache = MatchCache()
    if background is None:
        background = Background.of(papers, cache)
    reading_index: dict[tuple[str, tuple[str, ...]], int] = {}
    readings: list[Reading] = []

    def index_of(tag: str, keywords: tuple[str, ...] = ()) -> int:
        key = (tag, keywords)
        index = reading_index.get(key)
        if index is None:
            index = reading_index[key] = len(readings)
            readings.append(read_tag(tag, tuple(sorted(keywords))))
        return index

    setting_index: dict[object, int] = {}
    settings: list[tuple[tuple[tuple[int, float], ...], tuple[int, ...], float]] = []
    setting_of: list[int] = []
    for row, profile in enumerate(profiles):
        wanted = tuple((index_of(i.tag, i.keywords), i.weight) for i in profile.interests)
        setting = (wanted, tuple(index_of(tag) for tag in profile.exclude), profile.min_score)
        key = setting if nudge is None else row  # a nudge is per reader
        s = setting_index.get(key)
        if s is None:
            s = setting_index[key] = len(settings)
            settings.append(setting)
        setting_of.append(s)

    scored = cache.scores(papers, readings, background)
    n_papers, pad = len(papers), len(readings)
    # a zero row at the end pads settings with fewer interests or exclusions
    zero = np.zeros(n_papers)
    tag_scores = np.vstack([scored.score, zero])
    log_miss = np.vstack([np.log1p(-np.clip(scored.score, 0.0, 0.999)), zero])
    excluded = (scored.about >= EXCLUDE_MIN) | (
        (scored.about >= EXCLUDE_WITH_WORDS) & (scored.literal >= EXCLUDE_LITERAL)
    )
    about = np.vstack([excluded, np.zeros(n_papers, dtype=bool)])
    literal_rows = np.vstack([scored.literal, zero])
    log_pass = np.vstack([np.log1p(-np.clip(scored.order, 0.0, 0.999)), zero])
    near_rows = None if scored.near is None else np.vstack([scored.near, zero])
    width = max(len(wanted) for wanted, _, _ in settings)
    avoid_width = max(len(unwanted) for _, unwanted, _ in settings)
    picks = np.full((len(settings), width), pad)
    weights = np.zeros((len(settings), width))
    avoid = np.full((len(settings), avoid_width), pad)
    for s, (wanted, unwanted, _) in enumerate(settings):
        top = max((weight for _, weight in wanted), default=1.0)
        for k, (r, weight) in enumerate(wanted):
            picks[s, k] = r
            weights[s, k] = weight / top
        avoid[s, : len(unwanted)] = unwanted
    min_scores = np.array([min_score for _, _, min_score in settings])[:, None]
    upvotes = np.array([p.upvotes or 0 for p in papers], dtype=np.float64)
    prior = POPULARITY_TIEBREAK * (1.0 - np.exp(-upvotes / 30.0))
    depth = min(n_papers, 2 * max(p.max_items for p in profiles) + 10)
    # per setting, the papers that pass, best first, and their shown scores
    orders: list[list[int]] = []
    shown: list[list[float]] = []
    block = len(settings) if nudge is not None else max(1, BLOCK_CELLS // n_papers)
    for lo in range(0, len(settings), block):  # the nudge sees every reader at once
        part = slice(lo, lo + block)
        # a weighted noisy-or of each setting's tags (the scores the bar sees, and the same
        # with the order's factors), and the strongest (weighted) share of a tag's own words
        log_sum = np.zeros((len(picks[part]), n_papers))
        log_order = np.zeros(log_sum.shape)
        literal = np.zeros(log_sum.shape)
        near = None if near_rows is None else np.zeros(log_sum.shape)
        for k in range(width):
            slot, weight = picks[part, k], weights[part, k, None]
            log_sum += weight * log_miss[slot]
            log_order += weight * log_pass[slot]
            np.maximum(literal, weight * literal_rows[slot], out=literal)
            if near is not None and near_rows is not None:
                np.maximum(near, weight * near_rows[slot], out=near)
        blocked = np.zeros(log_sum.shape, dtype=bool)
        for k in range(avoid_width):
            blocked |= about[avoid[part, k]]
        scores = 1.0 - np.exp(log_sum)
        # what orders beside the scores: the tag's own words, and how close in meaning
        beside = LITERAL_WEIGHT * literal
        if near is not None:  # the semantic signal (tags that are not one vocabulary topic)
            beside += SEMANTIC_WEIGHT * near
        passing = 1.0 - np.exp(log_order)  # the order's tag score
        order = passing * (1.0 + prior) + beside
        final = np.where((scores >= min_scores[part]) & ~blocked, order, -1.0)
        shown_scores = scores
        if nudge is not None:  # reader feedback: see paperpost.profile
            max_items = np.array([p.max_items for p in profiles])[:, None]
            relevant, shown_scores, passing, lift = nudge.apply(
                scores, passing, final >= 0.0, ~blocked, min_scores, max_items
            )
            ordered = passing * (1.0 + prior) + beside
            final = np.where(relevant, ordered + lift, -1.0)
        if depth < n_papers:  # only the best few per setting need sorting
            best = np.argpartition(-final, depth - 1, axis=1)[:, :depth]
            values = np.take_along_axis(final, best, 1)
            # a tie across the cut goes by paper order, as the full stable sort does, so a
            # reader's digest never depends on the other readers (and depth) of the call
            edge = values.min(axis=1, keepdims=True)
            cut = (edge[:, 0] >= 0.0) & ((final == edge).sum(1) > (values == edge).sum(1))
            if cut.any():
                rows = np.flatnonzero(cut)
                best[rows] = np.argsort(-final[rows], axis=1, kind="stable")[:, :depth]
                values[rows] = np.take_along_axis(final[rows], best[rows], 1)
            top = np.take_along_axis(best, np.lexsort((best, -values), axis=1), 1)
        else:
            top = np.argsort(-final, axis=1, kind="stable")
        passed = (np.take_along_axis(final, top, 1) >= 0.0).sum(axis=1).tolist()
        top_shown = np.take_along_axis(shown_scores, top, 1).tolist()
        for papers_row, scores_row, count in zip(top.tolist(), top_shown, passed, strict=True):
            orders.append(papers_row[:count])  # what passes sorts before what does not
            shown.append(scores_row[:count])
    # near-duplicate titles matter only among the papers some reader might get
    duplicates = cache.duplicates(papers, sorted({p for order in orders for p in order}))
    taken: dict[tuple[int, int], list[int]] = {}  # (setting, max_items) -> positions
    items: dict[tuple[int, int], int] = {}  # (setting, position) -> item
    for profile, s in zip(profiles, setting_of, strict=True):
        positions = taken.get((s, profile.max_items))
        if positions is None:
            positions = taken[s, profile.max_items] = _diverse(
                orders[s], duplicates, profile.max_items
            )
            for position in positions:
                items.setdefault((s, position), len(items))
    ranked = _ranked_items(papers, list(items), orders, shown, picks, tag_scores, scored, nudge)
    return [
        [ranked[items[s, position]] for position in taken[s, profile.max_items]]
        for profile, s in zip(profiles, setting_of, strict=True)
    ]


def _ranked_items(
    papers: Sequence[Paper],
    items: list[tuple[int, int]],
    orders: list[list[int]],
    shown: list[list[float]],
    picks: np.ndarray,
    tag_scores: np.ndarray,
    scored: _Scored,
    nudge: Nudge | None,
) -> list[Ranked]:
    """The :class:`Ranked` of each (setting, position) taken, with its reason: the setting's
    tags that scored at least half its best tag on that paper, best first. Reasons are made
    once per paper and set of tags shown."""
    if not items:
        return []
    setting = np.array([s for s, _ in items])
    paper = np.array([orders[s][position] for s, position in items])
    slot_scores = tag_scores[picks[setting], paper[:, None]]  # items × tag slots
    best = slot_scores.max(axis=1, initial=0.0)
    keep = (slot_scores > 0) & (slot_scores >= best[:, None] / 2)
    by_score = np.argsort(-slot_scores, axis=1, kind="stable")  # ties: the reader's order
    shown_tags = np.where(
        np.take_along_axis(keep, by_score, 1), np.take_along_axis(picks[setting], by_score, 1), -1
    )  # what is kept scores highest, so it comes first
    details: dict[tuple[int, int], dict] = {}
    reasons: dict[tuple[int, ...], tuple[str, tuple[dict, ...], tuple[str, ...]]] = {}
    made: dict[tuple[tuple[int, ...], float], Ranked] = {}  # shared by settings alike
    taught = nudge.rows if nudge is not None else set()
    out = []
    for (s, position), p, tags in zip(items, paper.tolist(), shown_tags.tolist(), strict=True):
        key = (p, *tags)
        reason = reasons.get(key)
        if reason is None:
            per_tag = []
            for r in tags:
                if r < 0:
                    break
                if (r, p) not in details:
                    details[r, p] = scored.detail(r, p)
                per_tag.append(details[r, p])
            matched = tuple(d["tag"] for d in per_tag)
            reason = reasons[key] = (_short_reason(per_tag), tuple(per_tag), matched)
        score = round(shown[s][position], 3)
        if s in taught and nudge is not None:  # with a nudge, a setting is one reader
            why = "; ".join(part for part in (reason[0], nudge.why(s, p)) if part)
            out.append(Ranked(papers[p], score, reason[2], why, reason[1]))
            continue
        ranked = made.get((key, score))
        if ranked is None:
            ranked = made[key, score] = Ranked(papers[p], score, reason[2], reason[0], reason[1])
        out.append(ranked)
    return out


def _diverse(order: list[int], duplicates: dict[int, set[int]], limit: int) -> list[int]:
    """Positions in ``order`` (papers, best first) to take, best first, pushing near-duplicate
    titles behind the others."""
    if duplicates.keys().isdisjoint(order[:limit]):
        return list(range(min(limit, len(order))))
    picked: list[int] = []
    deferred: list[int] = []
    for position, index in enumerate(order):
        if duplicates.get(index) and any(order[j] in duplicates[index] for j in picked):
            deferred.append(position)
            continue
        picked.append(position)
        if len(picked) >= limit:
            return picked
    return (picked + deferred)[:limit]


def rank(
    papers: Sequence[Paper], profile: Profile, background: Background | None = None
) -> list[Ranked]:
    """Rank for one reader (see :func:`rank_many`)."""
    return rank_many(papers, [profile], background=background)[0]
