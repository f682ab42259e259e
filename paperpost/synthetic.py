"""Made-up papers for tests and benchmarks: as long as real ones (abstracts ~1,000
characters), built from topic phrases, with every optional field some of the time.

:func:`papers` draws each paper's theme (a main topic and two related phrases) from
``themes``: by default eight familiar ones (the tests rely on them); :func:`vocabulary_themes`
gives one per topic of the ranker's vocabulary, for benchmarks that need variety.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date

from paperpost.models import Paper

Theme = tuple[str, str, str]  # main topic, a second phrase, a third phrase

THEMES: tuple[Theme, ...] = (
    ("LLM agents", "tool use", "web navigation"),
    ("chain-of-thought reasoning", "math word problems", "process reward models"),
    ("diffusion models", "image generation", "classifier-free guidance"),
    ("speculative decoding", "LLM inference", "KV cache"),
    ("text-to-speech", "voice cloning", "prosody"),
    ("large language models", "instruction tuning", "preference optimisation"),
    ("video generation", "temporal consistency", "motion priors"),
    ("mixture of experts", "expert routing", "sparse models"),
)
_QUALIFIERS = (
    "Scaling",
    "Efficient",
    "Robust",
    "Towards",
    "Rethinking",
    "Learning",
    "Adaptive",
    "Faster",
    "Understanding",
    "Unified",
    "Simple",
    "Benchmarking",
)
_WORDS = (
    "sparse contrastive causal bayesian federated latent hierarchical recurrent streaming "
    "lightweight multilingual compositional self-supervised low-rank structured grounded "
    "interactive continual modular calibrated"
).split()
_FORMS = (
    "{name}: {qualifier} {main} with {second}",
    "{qualifier} {main} via {a} {b} {third}",
    "{name}: {a} {second} for {main}",
    "{qualifier} {a} {b} {main}",
)
_FILLER = (
    "We evaluate on six public benchmarks and release code and checkpoints.",
    "Ablations show that each component contributes to the final result.",
    "Our method is simple to implement and adds little overhead at training time.",
    "Experiments at three model scales confirm that the gains persist as models grow.",
    "We further analyse failure cases and discuss the limits of the approach.",
    "Human raters prefer our outputs in a blind side-by-side comparison.",
)


def vocabulary_themes() -> tuple[Theme, ...]:
    """One theme per topic of the ranker's vocabulary: its first strong phrase and two
    more of its phrases (or its name)."""
    from paperpost.rank import vocabulary

    themes = []
    for topic in {id(t): t for t in vocabulary().values()}.values():
        texts = [t.text for t in topic.terms if len(t.words) > 1] or [topic.name]
        texts += [t.text for t in topic.terms if len(t.words) == 1]
        main, second, third = (texts * 3)[:3]
        themes.append((main, second, third))
    return tuple(themes)


def papers(
    count: int, seed: int = 20261125, themes: Sequence[Theme] = THEMES, prefix: str = ""
) -> list[Paper]:
    """``count`` papers; the same arguments always give the same papers. ``prefix`` starts
    every title (to keep sets made with different seeds apart)."""
    rng = random.Random(seed)
    out = []
    for number in range(count):
        main, second, third = rng.choice(themes)
        other = rng.choice(themes)  # real papers touch a neighbouring topic too
        name = "".join(rng.choice("BCDFGKLMNPRSTVZ") + rng.choice("aeiou") for _ in range(3))
        title = rng.choice(_FORMS).format(
            name=name.title(),
            qualifier=rng.choice(_QUALIFIERS),
            main=main.title(),
            second=second.title(),
            third=third,
            a=rng.choice(_WORDS),
            b=rng.choice(_WORDS),
        )
        sentences = [
            f"{main.capitalize()} remain hard to scale when {second} meets {third}.",
            f"We present {name.title()}, which couples {second} with {third}.",
            *rng.sample(_FILLER, 3),
            f"Unlike prior work on {other[0]}, it needs no {other[2]}.",
            f"On {third} it improves over strong {main} baselines by {rng.randint(3, 40)}%.",
        ]
        api = number % 2 == 0
        out.append(
            Paper(
                title=f"{prefix}{title} (#{number})",
                abstract=" ".join(sentences * 2),
                arxiv_id=f"2611.{number:05d}" if api and not prefix else None,
                authors=tuple(f"Author {number}-{k}" for k in range(3)) if api else None,
                author_count=None if api else rng.randint(1, 12),
                organization=rng.choice([None, "Open-Bee", "openbmb"]),
                published=date(2026, 11, 1 + number % 24),
                upvotes=rng.choice([None, 1, 12, 240]),
                ai_summary=f"{name.title()} makes {main} work with {third}." if api else None,
                ai_keywords=(main, second) if api else (),
                github_repo=f"https://github.com/example/{name}" if number % 3 == 0 else None,
                project_page=f"https://{name}.example.org/" if number % 5 == 0 else None,
                source="generated",
            )
        )
    return out
