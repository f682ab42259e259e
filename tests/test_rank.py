from __future__ import annotations

from dataclasses import replace

import yaml

from paperpost.models import Paper
from paperpost.rank import TOPICS_FILE, Interest, Profile, rank, rank_many, tokens, vocabulary


def paper(title: str, abstract: str = "We study a problem.", **kw) -> Paper:
    return Paper(title=title, abstract=abstract, **kw)


def profile(
    *tags: str, exclude: tuple[str, ...] = (), min_score: float = 1.0, n: int = 10
) -> Profile:
    return Profile(tuple(Interest(t) for t in tags), exclude, min_score, n)


def test_vocabulary_is_broad_and_unambiguous() -> None:
    raw = yaml.safe_load(TOPICS_FILE.read_text())["topics"]
    assert len(raw) >= 60
    owners: dict[str, str] = {}
    for entry in raw:
        for name in [entry["id"], *entry.get("aliases", [])]:
            slug = " ".join(tokens(name))
            assert owners.setdefault(slug, entry["id"]) == entry["id"], f"{name} names two topics"
    assert vocabulary()["tts"].id == "text-to-speech"


def test_phrase_in_title_beats_scattered_words() -> None:
    central = paper("Speculative Decoding with Tiny Draft Models")
    scattered = paper(
        "A Study of Decoding", "We speculate about decoding strategies and model drafts."
    )
    ranked = rank([scattered, central], profile("speculative-decoding", min_score=0.1))
    assert ranked[0].paper is central
    assert ranked[0].matched == ("speculative-decoding",)
    assert ranked[0].why.startswith('title: "speculative decoding"')


def test_title_outweighs_abstract_and_keywords_count() -> None:
    in_title = paper("Mixture-of-Experts Routing")
    in_keywords = paper("A Sparse Model", ai_keywords=("mixture of experts",))
    in_abstract = paper("A Sparse Model II", "We train a mixture of experts model.")
    ranked = rank([in_abstract, in_keywords, in_title], profile("moe"))
    assert [r.paper for r in ranked] == [in_title, in_keywords, in_abstract]


def test_ambiguous_inference_is_disambiguated_by_context() -> None:
    serving = paper("Faster Inference", "We cut inference latency and raise serving throughput.")
    nli = paper("Natural Language Inference Probes", "We probe natural language inference models.")
    bayes = paper("Variational Inference at Scale", "Variational inference for posteriors.")
    llm = [r.paper for r in rank([nli, bayes, serving], profile("llm-inference"))]
    assert llm == [serving]
    assert [r.paper for r in rank([nli, bayes, serving], profile("nli"))] == [nli]
    assert rank([nli, bayes, serving], profile("bayesian-inference"))[0].paper is bayes


def test_exclusion_removes_a_paper_whatever_its_score() -> None:
    attack = paper("Jailbreak Attacks on LLM Serving Systems", "A jailbreak on vLLM serving.")
    plain = paper("LLM Serving at Scale", "We raise inference throughput and cut latency.")
    ranked = rank([attack, plain], profile("llm-inference", exclude=("ai-safety",)))
    assert [r.paper for r in ranked] == [plain]
    by_keyword = rank([attack, plain], profile("llm-inference", exclude=("jailbreak",)))
    assert [r.paper for r in by_keyword] == [plain]


def test_min_score_leaves_quiet_days_empty() -> None:
    papers = [paper("Protein Folding", "Structures of proteins."), paper("Weather", "Rain.")]
    assert rank(papers, profile("speculative-decoding")) == []


def test_upvotes_break_ties_but_never_lift_the_irrelevant() -> None:
    a = paper("Speculative Decoding for Chat Models", upvotes=0)
    b = paper("Tree Attention Meets Speculative Decoding", upvotes=500)
    weak = paper("Decoding", "We mention speculative decoding once.", upvotes=10_000)
    ranked = rank([a, weak, b], profile("speculative-decoding"))
    assert [r.paper for r in ranked][:2] == [b, a]
    assert ranked[-1].paper is weak


def test_unknown_tags_match_by_their_words() -> None:
    target = paper("Quantum Error Correction with Neural Decoders")
    other = paper("Image Segmentation")
    ranked = rank([other, target], profile("quantum-error-correction"))
    assert [r.paper for r in ranked] == [target]
    assert "quantum error correction" in ranked[0].why


def test_near_duplicates_do_not_fill_the_top() -> None:
    v1 = paper("Speculative Decoding for Large Language Models")
    v2 = paper("Speculative Decoding for Large Language Models Revisited")
    other = paper("Speculative Sampling with Draft Models")
    ranked = rank([v1, v2, other], profile("speculative-decoding", n=3))
    assert {r.paper.title for r in ranked[:2]} == {v1.title, other.title}
    assert ranked[2].paper is v2


def test_custom_keywords_and_weights() -> None:
    moe = paper("Mixture of Experts Routing")
    tts = paper("Zero-Shot Text-to-Speech")
    weighted = Profile((Interest("moe"), Interest("tts", weight=5.0)))
    assert rank([moe, tts], weighted)[0].paper is tts
    custom = Profile((Interest("robots", keywords=("quadruped",)),))
    dog = paper("Learning Quadruped Gaits")
    assert rank([dog], custom)[0].why == 'title: "quadruped"'


def test_rank_many_equals_rank_one_by_one(shared_papers) -> None:
    profiles = [
        profile("agents"),
        profile("diffusion", "video-generation"),
        profile("reasoning", exclude=("math",)),
    ]
    together = rank_many(shared_papers, profiles)
    for one, prof in zip(together, profiles, strict=True):
        assert [(r.paper.id, r.score) for r in one] == [
            (r.paper.id, r.score) for r in rank(shared_papers, prof)
        ]


def test_every_ranked_paper_carries_a_reason(shared_papers) -> None:
    for tag in ("text-to-speech", "mixture-of-experts", "agents", "bayesian-inference"):
        ranked = rank(shared_papers, profile(tag))
        assert len(ranked) >= 5
        assert all(r.why and r.matched == (tag,) for r in ranked)
    bumped = [replace(p, upvotes=None) for p in shared_papers]
    assert rank(bumped, profile("agents"))
