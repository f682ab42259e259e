"""A reader's profile from what they liked and disliked, and follows (pure; no I/O).

Rocchio-style: every paper becomes a term vector over its title, keywords/TL;DR and
abstract (field-weighted like the ranker, sublinear term counts, idf from the document
frequencies of the ranker's :class:`~paperpost.rank.Background`, unit length). A reader's
profile is the centroid of the papers they liked minus the centroid of those they marked
"fewer"; a new paper's similarity to each centroid, from :data:`NOISE` (what unrelated
papers share) up to :data:`FULL_AT`, turns into a bonus of at most :data:`LIKE_CAP` and a
penalty of at most :data:`DISLIKE_CAP` on its tag score (0..1). Dislikes weigh less than
likes, as in Rocchio's usual settings: "not this" says less about what a reader wants than
"this". The constants were chosen on the DEV tags of ``benchmarks/feedback.py`` only. Only
papers the tags already found are nudged, so the tags decide what a digest is about and a
handful of votes reorder it; a demoted paper can fall below ``min_score``. A followed
author's or organisation's paper is always included (unless excluded) and put first.

:func:`nudge` computes this for a whole batch of readers with numpy (one similarity
matrix between the voted papers and the new ones); :func:`paperpost.rank.rank_many` applies
it through :meth:`Nudge.apply` and :meth:`Nudge.why`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from paperpost.models import Paper, title_key
from paperpost.rank import FIELD_WEIGHTS, STOPWORDS, Background, tokens

# on the ranker's 0..1 tag scores (default min_score 0.4); chosen on the DEV tags only
LIKE_CAP = 0.35  # the most liked papers can add to a tag score
DISLIKE_CAP = 0.05  # the most disliked papers can take from it
NOISE = 0.1  # centroid similarity below this is what unrelated papers share: no effect
FULL_AT = 0.25  # centroid similarity that earns the whole bonus (cosine of tf-idf vectors)
EXPLAIN_AT = 0.03  # a bonus or penalty at least this big is named in the reason line
FOLLOW_LIFT = 1e6  # followed papers go first (ordering only; not shown as score)
_CHUNK = 1024  # readers per block when averaging similarities (bounds memory)


@dataclass(frozen=True, slots=True)
class Taste:
    """What one reader taught: papers they liked and disliked, authors and orgs they follow."""

    liked: tuple[Paper, ...] = ()
    disliked: tuple[Paper, ...] = ()
    authors: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.liked or self.disliked or self.authors or self.organizations)


def idf(background: Background, term: str) -> float:
    """How rare a term is in the history (the ranker's document frequencies)."""
    return math.log((background.size + 1) / (background.df.get(term, 0) + 0.5))


@lru_cache(maxsize=65536)
def term_counts(paper: Paper) -> dict[str, float]:
    """Sublinear, field-weighted term counts (title 3, keywords/TL;DR 2, abstract 1)."""
    weights: Counter[str] = Counter()
    fields = (
        ("title", paper.title),
        ("keywords", " ; ".join(paper.ai_keywords) + " ; " + (paper.ai_summary or "")),
        ("abstract", paper.abstract),
    )
    for name, text in fields:
        for token in tokens(text):
            if len(token) > 1 and token not in STOPWORDS and not token.isdigit():
                weights[token] += FIELD_WEIGHTS[name]
    return {term: 1.0 + math.log(weight) for term, weight in weights.items()}


@lru_cache(maxsize=65536)
def vector(paper: Paper, background: Background) -> dict[str, float]:
    """The paper's unit-length tf-idf vector."""
    raw = {t: w * idf(background, t) for t, w in term_counts(paper).items()}
    norm = math.sqrt(sum(v * v for v in raw.values())) or 1.0
    return {t: v / norm for t, v in raw.items() if v > 0}


def centroid(papers: Sequence[Paper], background: Background) -> dict[str, float]:
    total: Counter[str] = Counter()
    for paper in papers:
        total.update(vector(paper, background))
    return {t: v / len(papers) for t, v in total.items()} if papers else {}


def top_terms(taste: Taste, background: Background, count: int = 10) -> list[tuple[str, float]]:
    """The profile's strongest terms: positive toward likes, negative toward dislikes."""
    profile: Counter[str] = Counter(centroid(taste.liked, background))
    profile.subtract(centroid(taste.disliked, background))
    ranked = sorted(profile.items(), key=lambda item: -abs(item[1]))
    return [(t, round(w, 3)) for t, w in ranked[:count] if w]


def _fold(name: str) -> str:
    return title_key(name)


def _quote(title: str, limit: int = 70) -> str:
    title = " ".join(title.split())
    return title if len(title) <= limit else title[: limit - 1].rsplit(" ", 1)[0] + "…"


class Nudge:
    """Per-reader bonuses for one batch of papers (rows follow the readers' order)."""

    def __init__(
        self,
        papers: Sequence[Paper],
        rows: dict[int, int],
        bonus: np.ndarray,
        similar: np.ndarray,
        voted: list[Paper],
        lists: dict[int, tuple[list[int], list[int]]],
        follows: dict[int, dict[int, str]],
    ) -> None:
        self.papers = papers
        self.rows = rows  # reader row -> row of ``bonus`` (readers with votes only)
        self.bonus = bonus
        self.similar = similar  # voted paper × new paper cosine
        self.voted = voted
        self.lists = lists  # reader row -> (liked, disliked) indices into ``voted``
        self.follows = follows  # reader row -> {paper index: reason}
        self.zero = np.zeros(len(papers))
        self._said: dict[tuple[int, str], str] = {}
        self._nearest: dict[tuple[int, int], np.ndarray] = {}

    def apply(
        self,
        row: int,
        tag: np.ndarray,
        relevant: np.ndarray,
        allowed: np.ndarray,
        min_score: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(relevant, bonus, lift) for one reader.

        ``tag`` is the reader's tag score per paper, ``relevant`` the tag ranker's choice,
        ``allowed`` the papers no exclusion blocks. Liked directions add up to LIKE_CAP,
        disliked ones take up to DISLIKE_CAP (and may drop a paper under ``min_score``);
        followed papers are added and lifted to the front.
        """
        bonus, lift = self.zero, self.zero
        index = self.rows.get(row)
        if index is not None:
            bonus = self.bonus[index]
            relevant = relevant & (tag + bonus >= min_score)
        followed = self.follows.get(row)
        if followed:
            mask = np.zeros(len(self.papers), dtype=bool)
            mask[list(followed)] = True
            mask &= allowed
            relevant = relevant | mask
            lift = mask * FOLLOW_LIFT
        return relevant, bonus, lift

    def why(self, row: int, paper: int) -> str:
        """What the reader's feedback did to one paper, for its reason line ('' if nothing)."""
        parts = []
        followed = self.follows.get(row, {}).get(paper)
        if followed:
            parts.append(followed)
        index = self.rows.get(row)
        if index is not None:
            bonus = float(self.bonus[index, paper])
            liked, disliked = self.lists[row]
            if bonus >= EXPLAIN_AT and liked:
                parts.append(self._like(self.nearest(row, 0)[paper], "you liked"))
            elif bonus <= -EXPLAIN_AT and disliked:
                parts.append(self._like(self.nearest(row, 1)[paper], "you wanted fewer of"))
        return "; ".join(parts)

    def nearest(self, row: int, kind: int) -> np.ndarray:
        """Per new paper, the reader's liked (kind 0) or disliked (1) paper most like it."""
        found = self._nearest.get((row, kind))
        if found is None:
            voted = self.lists[row][kind]
            found = np.asarray(voted)[self.similar[voted].argmax(axis=0)]
            self._nearest[row, kind] = found
        return found

    def _like(self, voted: int | np.integer, verdict: str) -> str:
        key = (int(voted), verdict)
        text = self._said.get(key)
        if text is None:
            text = self._said[key] = f"like '{_quote(self.voted[voted].title)}' {verdict}"
        return text


def _mean_similarity(similar: np.ndarray, lists: list[list[int]]) -> np.ndarray:
    """Row r: the mean of ``similar`` over the voted papers in ``lists[r]`` (0 if none)."""
    padded = np.vstack([similar, np.zeros((1, similar.shape[1]), dtype=similar.dtype)])
    out = np.zeros((len(lists), similar.shape[1]), dtype=similar.dtype)
    for start in range(0, len(lists), _CHUNK):
        block = lists[start : start + _CHUNK]
        counts = np.fromiter((len(items) for items in block), dtype=np.intp, count=len(block))
        if not counts.any():
            continue
        # a (readers × most votes) matrix of voted-paper rows, padded with the zero row
        index = np.full((len(block), int(counts.max())), similar.shape[0])
        rows = np.repeat(np.arange(len(block)), counts)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        index[rows, cols] = [i for items in block for i in items]
        total = padded[index].sum(axis=1)
        out[start : start + len(block)] = total / np.maximum(counts, 1)[:, None]
    return out


def nudge(papers: Sequence[Paper], tastes: Sequence[Taste], background: Background) -> Nudge | None:
    """The feedback part of ranking ``papers`` for readers with these tastes (None: none)."""
    if not papers or not any(tastes):
        return None
    vocab: dict[str, int] = {}
    vectors = [vector(p, background) for p in papers]
    for vec in vectors:
        for term in vec:
            vocab.setdefault(term, len(vocab))
    new = np.zeros((len(papers), len(vocab)), dtype=np.float32)
    for i, vec in enumerate(vectors):
        new[i, [vocab[t] for t in vec]] = list(vec.values())

    position: dict[int, int] = {}  # id(paper) -> index in voted (Paper.id folds titles: slow)
    voted: list[Paper] = []
    voters: list[int] = []
    likes: list[list[int]] = []
    dislikes: list[list[int]] = []
    lists: dict[int, tuple[list[int], list[int]]] = {}
    for row, taste in enumerate(tastes):
        if not (taste.liked or taste.disliked):
            continue
        pair: list[list[int]] = []
        for group in (taste.liked, taste.disliked):
            indices = []
            for paper in group:
                index = position.get(id(paper))
                if index is None:
                    index = position[id(paper)] = len(voted)
                    voted.append(paper)
                indices.append(index)
            pair.append(indices)
        voters.append(row)
        likes.append(pair[0])
        dislikes.append(pair[1])
        lists[row] = (pair[0], pair[1])

    rows: dict[int, int] = {}
    bonus = np.zeros((0, len(papers)), dtype=np.float32)
    similar = np.zeros((0, len(papers)), dtype=np.float32)
    if voted:
        by_term = np.ascontiguousarray(new.T)  # term × new paper
        similar = np.zeros((len(voted), len(papers)), dtype=np.float32)
        for i, paper in enumerate(voted):  # sparse × dense: a voted paper has few terms
            vec = vector(paper, background)
            shared = [t for t in vec if t in vocab]
            if shared:
                weights = np.fromiter((vec[t] for t in shared), np.float32, len(shared))
                similar[i] = weights @ by_term[[vocab[t] for t in shared]]
        span = FULL_AT - NOISE
        toward = np.clip((_mean_similarity(similar, likes) - NOISE) / span, 0.0, 1.0)
        away = np.clip((_mean_similarity(similar, dislikes) - NOISE) / span, 0.0, 1.0)
        bonus = LIKE_CAP * toward - DISLIKE_CAP * away
        rows = {row: i for i, row in enumerate(voters)}

    follows = _follows(papers, tastes)
    return Nudge(papers, rows, bonus, similar, voted, lists, follows)


def _follows(papers: Sequence[Paper], tastes: Sequence[Taste]) -> dict[int, dict[int, str]]:
    """Per reader row, the papers by an author or organisation they follow, with why."""
    if not any(t.authors or t.organizations for t in tastes):
        return {}
    by_author: dict[str, list[int]] = {}
    by_org: dict[str, list[int]] = {}
    for i, paper in enumerate(papers):
        for name in paper.authors or ():
            by_author.setdefault(_fold(name), []).append(i)
        if paper.organization:
            folded = _fold(paper.organization)
            by_org.setdefault(folded, []).append(i)
            by_org.setdefault(folded.replace(" ", ""), []).append(i)
    out: dict[int, dict[int, str]] = {}
    for row, taste in enumerate(tastes):
        found: dict[int, str] = {}
        for name in taste.authors:
            for i in by_author.get(_fold(name), []):
                found.setdefault(i, f"followed author: {name}")
        for name in taste.organizations:
            folded = _fold(name)
            for i in by_org.get(folded, []) or by_org.get(folded.replace(" ", ""), []):
                found.setdefault(i, f"followed organization: {name}")
        if found:
            out[row] = found
    return out
