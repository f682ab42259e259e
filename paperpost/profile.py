"""A reader's profile from what they liked and disliked, and follows (pure; no I/O).

Rocchio-style relevance feedback: every paper becomes a term vector over its title,
keywords/TL;DR and abstract (field-weighted like the ranker, sublinear term counts, the
ranker's BM25 idf over the history, :meth:`~paperpost.rank.Background.idf`, unit length).
A new paper's *closeness* to what a reader liked is half its mean cosine to the liked
papers (the cosine to their Rocchio centroid, up to its length) and half its cosine to the
nearest one, so a reader whose likes go in several directions is not averaged away.
Closeness from :data:`NOISE` (what unrelated papers share) up to :data:`FULL_AT` earns a gain
of at most :data:`LIKE_CAP`, combined with the tag score (0..1) by noisy-or like the ranker
combines tags, with one bound: a paper whose tag evidence is weak (under :data:`STRONG_TAG`)
is lifted at most up to STRONG_TAG, so likes never carry it past a paper squarely on the
reader's tag (:func:`lifted`).

"Fewer like this" demotes, narrowly: Rocchio's plain negative term (demote whatever is close
to a disliked paper) made 2 to 4 of 29 DEV readers worse, because what a reader wants under a
broad tag often looks like what they rejected under it. So a paper is lowered only when

- the reader liked something: without a liked paper to tell the rejected direction apart
  from the reader's own broad tag, "fewer" votes lowered the few wanted papers that share
  that tag's words (docs/feedback.md, session 6);
- at least two disliked papers are close to it (the second-nearest disliked paper's cosine,
  ramped over NOISE..FULL_AT like the likes): one "fewer" is not yet a direction;
- it is :data:`DISLIKE_MARGIN` times closer to that than to any liked paper;
- its tag evidence is weak (tag score under :data:`STRONG_TAG`): a paper squarely on the
  reader's tag is never lowered for resembling one they did not want;

and then by at most :data:`DISLIKE_CAP` of its score. It is reordered, never dropped.

Tags decide what a digest is about. Votes reorder what the tags found (never dropping a
paper they found), and may let in papers the tags missed that are close to a liked
one (closeness at least :data:`ADMIT_AT`): at most :data:`ADMIT_SHARE` of ``max_items``
and never more papers than the reader liked, each marked "added for your votes". A followed
author's or organisation's paper is always included (unless excluded) and put first. The
constants were chosen on the DEV readers of ``benchmarks/feedback.py`` only (docs/feedback.md).

:func:`nudge` computes everything per reader once for a whole batch with numpy (one
similarity matrix between the voted papers and the new ones);
:func:`paperpost.rank.rank_many` applies it through :meth:`Nudge.apply` (a few array
operations over all readers) and :meth:`Nudge.why`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from paperpost.models import Paper, title_key
from paperpost.rank import FIELD_WEIGHTS, STOPWORDS, Background, tokens

if TYPE_CHECKING:
    from paperpost.semantic import Vectors

# on the ranker's 0..1 tag scores (default min_score 0.4); chosen on the DEV readers only
LIKE_CAP = 0.7  # the most closeness to the likes can add (noisy-or with the tag score)
NOISE = 0.06  # closeness below this is what unrelated papers share: no effect
FULL_AT = 0.2  # closeness (cosine of tf-idf vectors) that earns the whole gain
EXPLAIN_AT = 0.03  # a gain at least this big is named in the reason line
MEAN_SHARE = 0.5  # closeness: this much the mean similarity to the likes, the rest the nearest
ADMIT_AT = 0.6  # closeness (0..1 after NOISE..FULL_AT) that lets in a paper the tags missed
# with the semantic extra (paperpost.semantic): closeness of two papers is the cosine of their
# sentence embeddings, ramped over what papers of the field share. On ../shared a paper's
# cosine to an unrelated one is 0.39 ± 0.13 (mean ± sd over all pairs); SEMANTIC_LOW is about
# the 70th percentile of those pairs, SEMANTIC_FULL the 98th. Chosen by cross-validation over
# the spent judged sets (benchmarks/feedback.py cv).
SEMANTIC_LOW = 0.45
SEMANTIC_FULL = 0.65
SEMANTIC_ADMIT_AT = 0.4  # closeness (0..1) that lets in a paper the tags missed
ADMIT_SHARE = 0.3  # at most this share of a digest is let in that way
DISLIKE_CAP = 0.3  # the most "fewer" votes take off a paper's score (multiplied; never dropped)
DISLIKE_MARGIN = 2.0  # lowered only if this many times closer to the disliked than to the liked
STRONG_TAG = 0.7  # a paper with at least this tag score is never lowered, nor overtaken by a lift
HUB_K = 10  # semantic admissions: a paper's hubness is its mean cosine to this many nearest ones
FOLLOW_LIFT = 1e6  # followed papers go first (ordering only; not shown as score)
_ADDED, _LIKED, _LOWERED = 1, 2, 4  # what Nudge.why names for a paper (bits)
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
    raw = {t: w * background.idf(t) for t, w in term_counts(paper).items()}
    norm = math.sqrt(sum(v * v for v in raw.values())) or 1.0
    return {t: v / norm for t, v in raw.items() if v > 0}


def centroid(papers: Sequence[Paper], background: Background) -> dict[str, float]:
    total: Counter[str] = Counter()
    for paper in papers:
        total.update(vector(paper, background))
    return {t: v / len(papers) for t, v in total.items()} if papers else {}


def top_terms(taste: Taste, background: Background, count: int = 10) -> list[tuple[str, float]]:
    """The profile's strongest terms: the liked papers' centroid (what the ranker uses)."""
    ranked = sorted(centroid(taste.liked, background).items(), key=lambda item: -item[1])
    return [(t, round(w, 3)) for t, w in ranked[:count] if w]


def _fold(name: str) -> str:
    return title_key(name)


def _quote(title: str, limit: int = 70) -> str:
    title = " ".join(title.split())
    return title if len(title) <= limit else title[: limit - 1].rsplit(" ", 1)[0] + "…"


def _ramp(similarity: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((similarity - low) / (high - low), 0.0, 1.0)


def lifted(score: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """A tag score (0..1) lifted by a like gain (0..1): noisy-or, ``s + (1 - s) * g``, for a
    paper with strong tag evidence (at least :data:`STRONG_TAG`); a weaker one moves the same
    share of the way up to STRONG_TAG only, ``s + (STRONG_TAG - s) * g``, so no lift carries
    it past a paper squarely on the tag."""
    top = np.where(score >= STRONG_TAG, 1.0, STRONG_TAG)
    return score + (top - score) * gain


class Nudge:
    """What a batch of readers taught, for one batch of papers (rows follow the readers).

    Everything per reader is a matrix row computed once (:func:`nudge`); :meth:`apply`
    turns the tag scores of every reader into the ones to rank by in a few array operations.
    """

    def __init__(
        self,
        papers: Sequence[Paper],
        voters: np.ndarray,
        toward: np.ndarray,
        away: np.ndarray,
        similar: np.ndarray,
        liked: _Lists,
        disliked: _Lists,
        voted: list[Paper],
        follows: dict[int, dict[int, str]],
        admit_at: float = ADMIT_AT,
        admissible: np.ndarray | None = None,
    ) -> None:
        self.papers = papers
        self.voters = voters  # reader rows with votes that count, in order
        self.toward = toward  # voters × papers: closeness to what each liked (0..1)
        self.away = away  # voters × papers: closeness to a disliked direction (0..1)
        self.similar = similar  # voted paper × paper: cosine
        self.liked, self.disliked = liked, disliked  # per voter, indices into ``voted``
        self.voted = voted
        self.follows = follows  # reader row -> {paper index: reason}
        self.admit_at = admit_at  # closeness (toward) that lets in a paper the tags missed
        # voters × papers, the papers that may be let in (default: toward >= admit_at)
        self.admissible = toward >= admit_at if admissible is None else admissible
        self.index = {int(row): i for i, row in enumerate(voters)}
        self.gain = LIKE_CAP * toward  # combined with the tag score by noisy-or
        self.said = np.zeros(toward.shape, dtype=np.uint8)  # what why() names: _ADDED|...
        self._names: dict[tuple[int, str], str] = {}
        self._nearest: dict[tuple[int, bool], list[int]] = {}

    @property
    def rows(self) -> set[int]:
        """The readers whose digest this changes."""
        return set(self.index) | set(self.follows)

    def apply(
        self,
        scores: np.ndarray,
        order: np.ndarray,
        found: np.ndarray,
        allowed: np.ndarray,
        min_scores: np.ndarray,
        max_items: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(relevant, shown score, order score, lift), readers × papers, from the tag
        ranker's view.

        ``scores`` are the tag scores (what the bar and the card see), ``order`` the tag
        ranker's ordering scores of the same papers, ``found`` its choice, ``allowed`` the
        papers no exclusion blocks, ``min_scores`` and ``max_items`` per reader (columns).
        Both scores are moved alike, so a reader whose votes change nothing is ordered as
        without them. Liked directions lift by up to LIKE_CAP (:func:`lifted`); disliked
        ones take off up to DISLIKE_CAP where the tag evidence is weak (under STRONG_TAG).
        Papers the tags missed but that are close to a liked paper (:attr:`admissible`) are
        admitted, at most ADMIT_SHARE of ``max_items`` and no
        more than the papers liked; followed papers are added and lifted to the front.
        """
        relevant = found.copy()
        shown = scores.copy()
        ordered = order.copy()
        lift = np.zeros(scores.shape)
        if len(self.voters):
            rows = self.voters
            penalty = DISLIKE_CAP * self.away * (scores[rows] < STRONG_TAG)
            shown[rows] = lifted(scores[rows], self.gain) * (1.0 - penalty)
            ordered[rows] = lifted(order[rows], self.gain) * (1.0 - penalty)
            keep = found[rows]
            # admissions: the papers closest to the likes among those the tags did not take
            budget = np.minimum(np.floor(max_items[rows, 0] * ADMIT_SHARE), self.liked.counts)
            open_ = allowed[rows] & ~keep & self.admissible
            width = int(budget.max(initial=0))
            admitted = np.zeros_like(open_)
            if width:
                closeness = np.where(open_, self.toward, -1.0)
                best = np.argpartition(-closeness, width - 1, axis=1)[:, :width]
                best_close = np.take_along_axis(closeness, best, 1)
                order = np.argsort(-best_close, axis=1, kind="stable")
                best = np.take_along_axis(best, order, 1)
                take = (np.arange(width) < budget[:, None]) & (
                    np.take_along_axis(best_close, order, 1) >= 0
                )
                row_ids = np.repeat(np.arange(len(rows)), width).reshape(len(rows), width)
                admitted[row_ids[take], best[take]] = True
            self.said = (
                np.where(admitted, _ADDED, np.where(self.gain >= EXPLAIN_AT, _LIKED, 0))
                | np.where(penalty >= EXPLAIN_AT, _LOWERED, 0)
            ).astype(np.uint8)
            relevant[rows] = keep | admitted
        for row, followed in self.follows.items():
            mask = np.zeros(scores.shape[1], dtype=bool)
            mask[list(followed)] = True
            mask &= allowed[row]
            relevant[row] |= mask
            lift[row] = mask * FOLLOW_LIFT
        return relevant, shown, ordered, lift

    def why(self, row: int, paper: int) -> str:
        """What the reader's feedback did to one paper, for its reason line ('' if nothing)."""
        followed = self.follows.get(row)
        parts = [followed[paper]] if followed and paper in followed else []
        index = self.index.get(row)
        said = 0 if index is None else self.said.item(index, paper)
        if said & (_ADDED | _LIKED):
            like = self._name(self._near(index, True)[paper], "like '{}' you liked")
            parts.append("added for your votes: " + like if said & _ADDED else like)
        if said & _LOWERED:
            nearest = self._near(index, False)[paper]
            parts.append(self._name(nearest, "lowered: like '{}' you marked fewer"))
        return "; ".join(parts)

    def _near(self, index: int, liked: bool) -> list[int]:
        """Per paper, the voter's liked (or disliked) paper nearest it (once per voter)."""
        nearest = self._nearest.get((index, liked))
        if nearest is None:
            voted = (self.liked if liked else self.disliked)[index]
            nearest = voted[self.similar[voted].argmax(axis=0)].tolist()
            self._nearest[index, liked] = nearest
        return nearest

    def _name(self, voted: int, text: str) -> str:
        """``text`` naming a voted paper (kept: many cards name the same few papers)."""
        named = self._names.get((voted, text))
        if named is None:
            named = self._names[voted, text] = text.format(_quote(self.voted[voted].title))
        return named


@dataclass(frozen=True, slots=True)
class _Lists:
    """Per voter, a run of indices into the voted papers: ``flat[starts[i]:starts[i + 1]]``."""

    flat: np.ndarray
    starts: np.ndarray

    def __getitem__(self, voter: int) -> np.ndarray:
        return self.flat[self.starts[voter] : self.starts[voter + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)


def _similarities(
    similar: np.ndarray, lists: _Lists, runner_up: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row r: each new paper's mean similarity to the voted papers ``lists[r]``, its
    similarity to the nearest one and (``runner_up``) to the second-nearest one; 0 where
    there are none (similarities are never negative)."""
    # voted paper × new paper, with a zero row to pad readers with fewer votes
    padded = np.vstack([similar, np.zeros((1, similar.shape[1]), dtype=similar.dtype)])
    counts = lists.counts
    shape = (len(counts), similar.shape[1])
    mean, best, second = (np.zeros(shape, dtype=similar.dtype) for _ in range(3))
    for start in range(0, len(counts), _CHUNK):
        sizes = counts[start : start + _CHUNK]
        if not sizes.any():
            continue
        # a (votes × readers) matrix of voted-paper rows, padded with the zero row
        index = np.full((int(sizes.max()), len(sizes)), similar.shape[0])
        readers = np.repeat(np.arange(len(sizes)), sizes)
        slots = np.arange(len(readers)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        index[slots, readers] = lists.flat[lists.starts[start] : lists.starts[start + len(sizes)]]
        gathered = padded[index]  # votes × readers × papers
        part = slice(start, start + len(sizes))
        mean[part] = gathered.sum(axis=0) / np.maximum(sizes, 1)[:, None]
        gathered.max(axis=0, out=best[part])
        if runner_up:  # a running maximum and runner-up over the votes
            top, runner = gathered[0].copy(), second[part]
            for row in gathered[1:]:
                np.maximum(runner, np.minimum(top, row), out=runner)
                np.maximum(top, row, out=top)
    return mean, best, second


def _lists(groups: Sequence[Sequence[Paper]], index: np.ndarray) -> _Lists:
    return _Lists(index, np.concatenate([[0], np.cumsum([len(g) for g in groups])]))


def nudge(
    papers: Sequence[Paper],
    tastes: Sequence[Taste],
    background: Background,
    vectors: Vectors | None = None,
) -> Nudge | None:
    """The feedback part of ranking ``papers`` for readers with these tastes (None: none).

    With ``vectors`` (the semantic extra's :class:`paperpost.semantic.Vectors`), closeness
    to the likes is measured between sentence embeddings (:func:`semantic_closeness`);
    without it, between term vectors."""
    if not papers or not any(tastes):
        return None
    # readers whose votes count: one "fewer" alone changes nothing
    voters = [row for row, t in enumerate(tastes) if t.liked or len(t.disliked) >= 2]
    follows = _follows(papers, tastes)
    if not voters and not follows:
        return None
    # every vote once, each distinct paper once (by identity: Paper.id folds titles, slow)
    liked = [tastes[row].liked for row in voters]
    disliked = [tastes[row].disliked for row in voters]
    every = [p for group in liked for p in group] + [p for group in disliked for p in group]
    ids = np.fromiter(map(id, every), dtype=np.int64, count=len(every))
    _, first, position = np.unique(ids, return_index=True, return_inverse=True)
    voted = [every[i] for i in first]
    split = sum(map(len, liked))
    likes, dislikes = _lists(liked, position[:split]), _lists(disliked, position[split:])

    similar = _term_similarity(voted, papers, background)
    # closeness to the likes: half the mean similarity (the cosine to Rocchio's centroid,
    # which thins out when likes are diverse), half the nearest (noisy when they are many)
    mean, liked_near, _ = _similarities(similar, likes)
    # a disliked direction: two disliked papers close, and much closer than any liked one
    _, _, second = _similarities(similar, dislikes, runner_up=True)
    # ... and a liked one to tell it apart from the reader's own broad tag
    away = _ramp(second, NOISE, FULL_AT) * (second >= DISLIKE_MARGIN * liked_near)
    away *= (likes.counts > 0)[:, None]
    admissible = None
    if vectors is None:
        toward = _ramp(MEAN_SHARE * mean + (1 - MEAN_SHARE) * liked_near, NOISE, FULL_AT)
        admit_at = ADMIT_AT
    else:
        voted_vectors, new_vectors = vectors.of(voted), vectors.of(papers)
        cosine = voted_vectors @ new_vectors.T
        similar = semantic_closeness(cosine)
        mean, near, _ = _similarities(similar, likes)
        toward = MEAN_SHARE * mean + (1 - MEAN_SHARE) * near
        admit_at = SEMANTIC_ADMIT_AT
        # a paper the tags missed is let in only if it is close with its hubness taken off too
        mean, near, _ = _similarities(semantic_closeness(cosine - hubness(new_vectors)), likes)
        unhubbed = MEAN_SHARE * mean + (1 - MEAN_SHARE) * near
        admissible = (toward >= admit_at) & (unhubbed >= admit_at)
    return Nudge(
        papers,
        np.array(voters, dtype=np.intp),
        toward,
        away,
        similar,
        likes,
        dislikes,
        voted,
        follows,
        admit_at,
        admissible,
    )


def _term_similarity(
    voted: Sequence[Paper], papers: Sequence[Paper], background: Background
) -> np.ndarray:
    """Cosine of the term vectors, voted paper × new paper."""
    vocab: dict[str, int] = {}
    vectors = [vector(p, background) for p in papers]
    for vec in vectors:
        for term in vec:
            vocab.setdefault(term, len(vocab))
    by_term = np.zeros((len(vocab), len(papers)), dtype=np.float32)  # term × new paper
    for i, vec in enumerate(vectors):
        by_term[[vocab[t] for t in vec], i] = list(vec.values())
    similar = np.zeros((len(voted), len(papers)), dtype=np.float32)
    for i, paper in enumerate(voted):  # sparse × dense: a voted paper has few terms
        vec = vector(paper, background)
        shared = [t for t in vec if t in vocab]
        if shared:
            weights = np.fromiter((vec[t] for t in shared), np.float32, len(shared))
            similar[i] = weights @ by_term[[vocab[t] for t in shared]]
    return similar


def semantic_closeness(cosine: np.ndarray) -> np.ndarray:
    """How close each new paper is to each voted one in meaning, 0..1, from the cosine of
    their embeddings (voted × new): ramped from :data:`SEMANTIC_LOW`, what papers of the field
    commonly share, to :data:`SEMANTIC_FULL`, what few unrelated pairs reach."""
    return _ramp(cosine, SEMANTIC_LOW, SEMANTIC_FULL).astype(np.float32)


def hubness(new: np.ndarray) -> np.ndarray:
    """Per new paper (unit vectors, one a row), how much closer than the batch's usual it is
    to papers in general: its mean cosine to its :data:`HUB_K` nearest other new papers, less
    the batch's mean of that (0 for all when the batch has no more than HUB_K papers).

    Generic papers ("an efficient method for LLMs") are close to almost every paper of their
    field in this embedding, so one like of anything in that field used to let them in
    (docs/feedback.md, session 6); taken off before admitting, it leaves what is close to
    the liked paper in particular."""
    if len(new) <= HUB_K:
        return np.zeros(len(new), dtype=np.float32)
    among = new @ new.T
    np.fill_diagonal(among, -1.0)
    nearest = np.partition(among, len(new) - HUB_K, axis=1)[:, len(new) - HUB_K :]
    hub = nearest.mean(axis=1)
    return (hub - hub.mean()).astype(np.float32)


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
