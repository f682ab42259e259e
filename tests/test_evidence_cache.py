"""Evidence computed once per paper and topic, and the cache that keeps it across runs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from paperpost.models import Paper
from paperpost.rank import DUPLICATE_JACCARD, STOPWORDS, _near_duplicates, tokens

TITLE_WORDS = st.sampled_from(
    "speculative decoding draft model large language models revisited sparse attention "
    "video diffusion the of for a benchmark agents".split()
)


def brute_force_duplicates(papers: list[Paper]) -> dict[int, set[int]]:
    """Every pair compared: what the prefix-filtered join must equal."""
    sets = [frozenset(tokens(p.title)) - STOPWORDS for p in papers]
    pairs: dict[int, set[int]] = {}
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            if i != j and a and b and len(a & b) / len(a | b) >= DUPLICATE_JACCARD:
                pairs.setdefault(i, set()).add(j)
    return pairs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(TITLE_WORDS, min_size=0, max_size=9).map(" ".join), max_size=40))
def test_near_duplicate_join_finds_exactly_the_similar_pairs(titles: list[str]) -> None:
    papers = [Paper(title=t, abstract="") for t in titles]
    assert _near_duplicates(papers) == brute_force_duplicates(papers)
