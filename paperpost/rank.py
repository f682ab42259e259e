"""Rank papers for readers' interest tags: topics, not substrings; a reason for each.

A tag resolves to a *topic* from the curated vocabulary in ``data/topics.yaml``
(aliases, strong phrases, plain terms, weak terms, disambiguating context and
phrases to avoid). Unknown tags become a topic made of their own words. A paper's
evidence for a topic is counted per field (title > HF ``ai_keywords``/TL;DR >
abstract); phrases weigh more than single words, and repeats add little.

Everything is pure and offline. :func:`rank_many` scores all subscribers at once
with numpy (one paper × topic matrix shared by everyone), which is what makes
10,000 readers × 300 papers cheap.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from paperpost.models import Paper

if TYPE_CHECKING:
    from paperpost.profile import Nudge

TOPICS_FILE = Path(__file__).with_name("data") / "topics.yaml"
FIELD_WEIGHTS = {"title": 3.0, "keywords": 2.0, "abstract": 1.0}
STRENGTH = {"strong": 2.5, "term": 1.0, "weak": 0.4}
MAX_NGRAM = 5
POPULARITY_CAP = 0.2  # the most upvotes can ever add: less than any relevance step
DUPLICATE_JACCARD = 0.6
LOOSE_GAP = 2  # words allowed between the words of a phrase for a loose match
LOOSE_FACTOR = 0.6  # a loose phrase match counts this much of an exact one
STOPWORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "via",
        "using",
        "toward",
        "towards",
        "we",
        "our",
        "this",
        "that",
        "their",
        "its",
    )
)
_TOKEN = re.compile(r"[a-z0-9]+")


def _stem(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def tokens(text: str) -> list[str]:
    """Lower-cased, lightly stemmed word tokens (hyphens and punctuation split words)."""
    return [_stem(t) for t in _TOKEN.findall(text.lower())]


def phrase(text: str) -> tuple[str, ...]:
    return tuple(tokens(text))


def _ngrams(words: Sequence[str]) -> Counter[tuple[str, ...]]:
    grams: Counter[tuple[str, ...]] = Counter()
    for n in range(1, MAX_NGRAM + 1):
        for i in range(len(words) - n + 1):
            grams[tuple(words[i : i + n])] += 1
    return grams


@dataclass(frozen=True, slots=True)
class Term:
    words: tuple[str, ...]
    text: str
    strength: float
    context: tuple[tuple[str, ...], ...] = ()  # counts only if one of these appears too


@dataclass(frozen=True, slots=True)
class Topic:
    id: str
    name: str
    terms: tuple[Term, ...]
    avoid: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Interest:
    """What a reader asked for: a tag, its weight, and extra keywords of their own."""

    tag: str
    weight: float = 1.0
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ranked:
    paper: Paper
    score: float
    matched: tuple[str, ...]
    why: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """How strongly one paper matches one topic, and the best terms per field."""

    score: float
    hits: tuple[tuple[str, str], ...]  # (field, term text), strongest first


# --- vocabulary ----------------------------------------


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


def topic_for(tag: str, extra_keywords: Sequence[str] = ()) -> Topic:
    """The topic a tag means; unknown tags become a topic of their own words."""
    slug = _slug(tag)
    known = vocabulary().get(slug)
    if known is None:
        words = [w for w in slug.split() if w not in STOPWORDS]
        terms = [Term(tuple(slug.split()), slug, STRENGTH["strong"])] if len(words) > 1 else []
        terms += [
            Term((w,), w, STRENGTH["term"] if len(words) == 1 else STRENGTH["weak"]) for w in words
        ]
        known = Topic(id=tag, name=tag, terms=_ordered(terms))
    if extra_keywords:
        extra = [Term(phrase(k), k, STRENGTH["strong"]) for k in extra_keywords if phrase(k)]
        known = Topic(known.id, known.name, _ordered([*extra, *known.terms]), known.avoid)
    return known


def _ordered(terms: Sequence[Term]) -> tuple[Term, ...]:
    """One term per distinct phrase (the first listed wins), longest phrases first."""
    unique: dict[tuple[str, ...], Term] = {}
    for term in terms:
        if term.words and term.words not in unique:
            unique[term.words] = term
    return tuple(sorted(unique.values(), key=lambda t: -len(t.words)))


# --- evidence ----------------------------------------


@dataclass(slots=True, eq=False)
class _Doc:
    fields: dict[str, Counter[tuple[str, ...]]]
    words: dict[str, list[str]]
    vocab: dict[str, frozenset[str]]
    everything: Counter[tuple[str, ...]]


@lru_cache(maxsize=4096)
def _doc(paper: Paper) -> _Doc:
    words = {
        "title": tokens(paper.title),
        "keywords": tokens(" ; ".join(paper.ai_keywords) + " ; " + (paper.ai_summary or "")),
        "abstract": tokens(paper.abstract),
    }
    fields = {name: _ngrams(field) for name, field in words.items()}
    everything: Counter[tuple[str, ...]] = Counter()
    for grams in fields.values():
        everything.update(grams)
    vocab = {name: frozenset(field) for name, field in words.items()}
    return _Doc(fields, words, vocab, everything)


def _loose_count(words: list[str], phrase_words: tuple[str, ...]) -> int:
    """Occurrences of a phrase's words in order with at most LOOSE_GAP words between
    neighbours ("speculative Jacobi decoding" for "speculative decoding")."""
    count = 0
    first, rest = phrase_words[0], phrase_words[1:]
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


def evidence(doc: _Doc, topic: Topic) -> Evidence:
    """Score one document for one topic (0 when nothing matches).

    Within a field, an occurrence counts once, for the longest term that covers it:
    "speculative decoding" in a title does not also count as "speculative". The
    topic's ``avoid`` phrases cover their words the same way without scoring.
    """
    total = 0.0
    hits: list[tuple[float, str, str]] = []
    for field, grams in doc.fields.items():
        present = doc.vocab[field]
        matched: list[tuple[Term, int]] = []
        for term in topic.terms:  # longest first (see vocabulary)
            count = grams.get(term.words, 0)
            strength = term.strength
            if not count and len(term.words) > 1 and present.issuperset(term.words):
                count = _loose_count(doc.words[field], term.words)
                strength *= LOOSE_FACTOR
            if not count or (term.context and not any(doc.everything.get(c) for c in term.context)):
                continue
            covered = sum(
                grams.get(longer, 0)
                for longer in [t.words for t, _ in matched] + list(topic.avoid)
                if len(longer) > len(term.words) and _contains(longer, term.words)
            )
            count -= covered
            if count <= 0:
                continue
            matched.append((term, count))
            gain = FIELD_WEIGHTS[field] * strength * (1.0 + 0.5 * math.log(count))
            total += gain
            hits.append((gain, field, term.text))
    hits.sort(key=lambda h: -h[0])
    return Evidence(total, tuple((field, text) for _, field, text in hits))


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    n = len(shorter)
    return any(longer[i : i + n] == shorter for i in range(len(longer) - n + 1))


def _why(per_tag: list[tuple[str, Evidence]]) -> str:
    """``title: "speculative decoding"; abstract: "draft model"``; per tag when several."""
    parts: list[str] = []
    for tag, ev in per_tag:
        by_field: dict[str, list[str]] = {}
        for field, text in ev.hits:
            seen = by_field.setdefault(field, [])
            if text not in seen and len(seen) < 2:
                seen.append(text)
        fields = [
            f"{field}: " + ", ".join(f'"{t}"' for t in by_field[field])
            for field in ("title", "keywords", "abstract")
            if field in by_field
        ][:2]
        evidence_text = "; ".join(fields)
        parts.append(f"{tag} ({evidence_text})" if len(per_tag) > 1 else evidence_text)
    return "; ".join(parts)


# --- ranking ----------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """One reader's interests, as the ranker needs them."""

    interests: tuple[Interest, ...]
    exclude: tuple[str, ...] = ()
    min_score: float = 1.0
    max_items: int = 10


def _topic_key(interest: Interest) -> tuple[str, tuple[str, ...]]:
    return (_slug(interest.tag), tuple(sorted(interest.keywords)))


def _evidence_table(docs: list[_Doc], topics: list[Topic]) -> list[dict[int, Evidence]]:
    """Per document, the evidence for each topic it can match (others are zero).

    An index from each term's words to its topics keeps this proportional to what the
    documents contain rather than to documents × topics × terms.
    """
    exact: dict[tuple[str, ...], set[int]] = {}
    loose: dict[str, list[tuple[tuple[str, ...], int]]] = {}  # by first word
    for t, topic in enumerate(topics):
        for term in topic.terms:
            exact.setdefault(term.words, set()).add(t)
            if len(term.words) > 1:
                loose.setdefault(term.words[0], []).append((term.words, t))
    table = []
    for doc in docs:
        candidates: set[int] = set()
        for gram in doc.everything:
            if gram in exact:
                candidates |= exact[gram]
            if len(gram) == 1 and gram[0] in loose:
                for words, t in loose[gram[0]]:
                    if all((w,) in doc.everything for w in words[1:]):
                        candidates.add(t)
        found = {}
        for t in candidates:
            ev = _cached_evidence(doc, topics[t])
            if ev.score > 0:
                found[t] = ev
        table.append(found)
    return table


@lru_cache(maxsize=65536)
def _cached_evidence(doc: _Doc, topic: Topic) -> Evidence:
    """Evidence is the same for every batch of readers that shares a topic."""
    return evidence(doc, topic)


def _near_duplicates(papers: Sequence[Paper]) -> dict[int, set[int]]:
    """Pairs of papers whose titles are nearly the same (token Jaccard)."""
    sets = [frozenset(tokens(p.title)) - STOPWORDS for p in papers]
    pairs: dict[int, set[int]] = {}
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            a, b = sets[i], sets[j]
            if a and b and len(a & b) / len(a | b) >= DUPLICATE_JACCARD:
                pairs.setdefault(i, set()).add(j)
                pairs.setdefault(j, set()).add(i)
    return pairs


def rank_many(
    papers: Sequence[Paper], profiles: Sequence[Profile], nudge: Nudge | None = None
) -> list[list[Ranked]]:
    """Rank ``papers`` for every profile at once; one ordered list per profile.

    ``nudge`` (from :func:`paperpost.profile.nudge`) applies what readers taught by votes,
    examples and follows: a bounded bonus on the tag score, and followed papers first.
    """
    if not papers or not profiles:
        return [[] for _ in profiles]
    topic_index: dict[tuple[str, tuple[str, ...]], int] = {}
    topics: list[Topic] = []
    rows: list[tuple[list[tuple[int, Interest]], list[int]]] = []
    for profile in profiles:
        wanted, unwanted = [], []
        for interest in profile.interests:
            key = _topic_key(interest)
            if key not in topic_index:
                topic_index[key] = len(topics)
                topics.append(topic_for(interest.tag, interest.keywords))
            wanted.append((topic_index[key], interest))
        for tag in profile.exclude:
            key = (_slug(tag), ())
            if key not in topic_index:
                topic_index[key] = len(topics)
                topics.append(topic_for(tag))
            unwanted.append(topic_index[key])
        rows.append((wanted, unwanted))

    evid = _evidence_table([_doc(p) for p in papers], topics)
    relevance = np.zeros((len(topics), len(papers)))
    for p, found in enumerate(evid):
        for t, ev in found.items():
            relevance[t, p] = ev.score

    weights = np.zeros((len(profiles), len(topics)))
    excluded = np.zeros((len(profiles), len(topics)))
    for row, (wanted, unwanted) in enumerate(rows):
        for t, interest in wanted:
            weights[row, t] += interest.weight
        excluded[row, unwanted] = 1.0
    scores = weights @ relevance  # S × P
    # an exclusion hits when the paper's evidence for the excluded topic is real
    blocked = (excluded @ (relevance >= 1.0).astype(np.float64)) > 0
    upvotes = np.array([p.upvotes or 0 for p in papers], dtype=np.float64)
    prior = POPULARITY_CAP * (1.0 - np.exp(-upvotes / 30.0))
    duplicates = _near_duplicates(papers)
    reasons: dict[tuple[int, tuple[tuple[str, int], ...]], str] = {}

    untaught = np.zeros(len(papers))
    results: list[list[Ranked]] = []
    for row, profile in enumerate(profiles):
        relevant = (scores[row] >= profile.min_score) & ~blocked[row]
        bonus = lift = untaught
        if nudge is not None:  # reader feedback: see paperpost.profile
            relevant, bonus, lift = nudge.apply(
                row, scores[row], relevant, ~blocked[row], profile.min_score
            )
        candidates = np.flatnonzero(relevant)
        final = scores[row] + prior + bonus
        order = candidates[np.argsort(-(final + lift)[candidates], kind="stable")]
        ranked = []
        for p in _diverse(order, duplicates, profile.max_items):
            per_tag = sorted(
                ((interest.tag, t) for t, interest in rows[row][0] if t in evid[p]),
                key=lambda item: -evid[p][item[1]].score,
            )
            key = (p, tuple(per_tag))
            if key not in reasons:
                reasons[key] = _why([(tag, evid[p][t]) for tag, t in per_tag])
            taught = nudge.why(row, p) if nudge is not None else ""
            ranked.append(
                Ranked(
                    paper=papers[p],
                    score=round(float(final[p]), 3),
                    matched=tuple(tag for tag, _ in per_tag),
                    why="; ".join(part for part in (reasons[key], taught) if part),
                )
            )
        results.append(ranked)
    return results


def _diverse(order: np.ndarray, duplicates: dict[int, set[int]], limit: int) -> list[int]:
    """Take papers best first, pushing near-duplicate titles behind the others."""
    picked: list[int] = []
    deferred: list[int] = []
    for index in order.tolist():
        if duplicates.get(index) and any(j in duplicates[index] for j in picked):
            deferred.append(index)
            continue
        picked.append(index)
        if len(picked) >= limit:
            return picked
    return (picked + deferred)[:limit]


def rank(papers: Sequence[Paper], profile: Profile) -> list[Ranked]:
    """Rank for one reader (see :func:`rank_many`)."""
    return rank_many(papers, [profile])[0]
