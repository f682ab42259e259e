from __future__ import annotations

from dataclasses import replace

import yaml

from paperpost.models import Paper
from paperpost.rank import (
    TOPICS_FILE,
    Background,
    Interest,
    Profile,
    rank,
    rank_many,
    read_tag,
    tag_warnings,
    tokens,
    vocabulary,
)


def paper(title: str, abstract: str = "We study a problem.", **kw) -> Paper:
    return Paper(title=title, abstract=abstract, **kw)


def profile(
    *tags: str, exclude: tuple[str, ...] = (), min_score: float = 0.35, n: int = 10
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
    assert ranked[0].why == "speculative decoding, draft model"  # short, for readers
    assert {"facet": "speculative-decoding", "field": "title", "term": "draft model"} in (
        ranked[0].evidence[0]["hits"]
    )


def test_title_outweighs_abstract_and_keywords_count() -> None:
    in_title = paper("Mixture-of-Experts Routing")
    in_keywords = paper("A Sparse Model", ai_keywords=("mixture of experts",))
    in_abstract = paper("A Sparse Model II", "We train a mixture of experts model.")
    ranked = rank([in_abstract, in_keywords, in_title], profile("moe", min_score=0.1))
    assert [r.paper for r in ranked] == [in_title, in_keywords, in_abstract]


def test_a_mention_only_in_the_abstract_is_in_passing() -> None:
    """What a paper is about shows in its title, keywords or TL;DR: the same abstract
    evidence scores lower without it, and one passing mention stays out of a digest."""
    abstract = "We train a mixture of experts model with expert routing and a load balancing loss."
    named = paper("Sparse Expert Models", abstract)  # a strong term in the title
    term = paper("Many Experts, Few Parameters", abstract)  # an ordinary term
    passing = paper("A Sparse Model", abstract)
    ranked = rank([passing, term, named], profile("moe", min_score=0.0))
    assert [r.paper for r in ranked] == [named, term, passing]
    assert ranked[2].score < ranked[1].score < ranked[0].score
    once = paper("A Sparse Model II", "We train a mixture of experts model.")
    assert rank([once], profile("moe")) == []


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
    ranked = rank([a, weak, b], profile("speculative-decoding", min_score=0.1))
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
    assert rank([dog], custom)[0].why == "quadruped"


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


def _background(*texts: str) -> Background:
    """A history of 90 papers where the given words are common (in a third of the papers)."""
    words = " ".join(texts)
    filler = [paper(f"Filler {i}", f"{words if i % 3 == 0 else ''} study {i}.") for i in range(90)]
    return Background.of(filler)


def test_compound_tags_need_every_facet_and_the_phrase_counts() -> None:
    assert read_tag("protein-design").describe() == "protein AND design"
    assert read_tag("gui-agents-for-phones").describe() == "gui AND agents AND phones"
    history = _background("design", "language", "model")
    both = paper("Designing Proteins with Language Models", "We design protein binders.")
    phrase = paper("Generative Protein Design", "Protein design with a language model.")
    design_only = paper("Verilog Design Generation", "Hardware design with LLMs. Design!")
    protein_only = paper("Protein Structure Prediction", "We predict protein folds.")
    papers = [design_only, protein_only, both, phrase]
    ranked = rank(papers, profile("protein-design", min_score=0.0), history)
    order = [r.paper for r in ranked]
    assert order[:2] == [phrase, both]
    scores = {r.paper.title: r.score for r in ranked}
    assert scores[design_only.title] < 0.05 < scores[both.title]
    assert [r.paper for r in rank(papers, profile("protein-design"), history)] == [phrase, both]


def test_one_generic_word_never_reaches_a_digest() -> None:
    history = _background("languages", "users", "code")
    junk = paper("Multilingual Translation", "Many languages are spoken by users.")
    real = paper("Recommender Systems at Scale", "Collaborative filtering for recommendation.")
    for tag in ("recommender-systems", "low-resource-languages"):
        delivered = [r.paper for r in rank([junk, real], profile(tag), history)]
        assert junk not in delivered


def test_phrases_stop_at_punctuation_commas_and_keyword_items() -> None:
    across = paper(
        "A Vision Benchmark",
        "Code, models, and data will be released. LLM. Inference is slow.",
        ai_keywords=("LLM", "inference"),
    )
    inside = paper("A Code Model for Repairs", "A code model repairs bugs in LLM inference.")
    bonus = read_tag("code-model").bonus
    assert bonus is not None
    ranked = rank([across, inside], profile("code-model", min_score=0.0))
    assert ranked[0].paper is inside
    hits = [h["term"] for d in ranked[-1].evidence for h in d["hits"]] if ranked[-1:] else []
    assert "code model" not in hits


def test_exclusion_is_about_the_topic_not_a_word() -> None:
    history = _background("benchmark")
    about = paper("AgentBench: A Benchmark for LLM Agents", "A benchmark for language agents.")
    mentions = paper(
        "Planning with LLM Agents", "Our agent plans tool calls; it does well on a benchmark."
    )
    ranked = rank([about, mentions], profile("agents", exclude=("benchmark",)), history)
    assert [r.paper for r in ranked] == [mentions]


def test_aliases_are_synonyms_not_narrower_ideas() -> None:
    # a narrower tag is read compositionally, not as the broad topic
    assert read_tag("theorem-proving").describe() == "theorem AND proving"
    assert read_tag("low-resource-languages").facets[0].topic.id != "machine-translation"
    assert read_tag("tts").describe() == "text-to-speech"


def test_tag_warnings_for_what_is_not_a_topic() -> None:
    assert tag_warnings("speculative-decoding") == []
    assert tag_warnings("TTS") == []
    (warning,) = tag_warnings("protien-design")
    assert "read as: protien AND design" in warning
    assert "did you mean protein-design" in warning
    (warning,) = tag_warnings("xyzzy")
    assert "not a topic" in warning and "did you mean" not in warning


def test_scores_are_bounded(shared_papers) -> None:
    ranked = rank(shared_papers, profile("agents", "diffusion", "protein-design", min_score=0.0))
    assert ranked and all(0.0 <= r.score <= 1.0 for r in ranked)


def test_word_weights_come_from_document_frequency_in_the_history() -> None:
    history = Background.of(
        [
            paper(f"Paper {i}", "We study language models." + (" Watermarks." if i == 0 else ""))
            for i in range(200)
        ]
    )
    assert history.size == 200
    assert history.weight("languag") < 0.1 < 0.9 < history.weight("watermark")
    assert history.weight("never-seen") == 1.0 and history.weight("the") == 0.0
    grown = Background.of([paper(f"Watermark {i}", "Watermarks everywhere.") for i in range(200)])
    assert grown.weight("watermark") < history.weight("watermark")


def test_the_tags_own_words_make_a_paper_surer() -> None:
    synonym = paper("A TTS System for Many Voices")
    literal = paper("A Text-to-Speech System for Many Voices")
    ranked = rank([synonym, literal], profile("text-to-speech", min_score=0.0))
    assert [r.paper.title for r in ranked] == [literal.title, synonym.title]
    score = {r.paper.title: r.score for r in ranked}
    facet = {r.paper.title: r.evidence[0]["facets"]["text-to-speech"] for r in ranked}
    assert score[literal.title] > facet[literal.title]  # the reader's words: surer
    assert score[synonym.title] < facet[synonym.title]  # a synonym only: a little less sure
    assert score[synonym.title] >= Profile(()).min_score  # ... yet it still reaches a digest


def test_a_tag_with_no_words_finds_nothing_and_leaves_the_others_alone() -> None:
    """`*`, `the` or a blank tag (subscriber files refuse them) never break a ranking."""
    target = paper("Speculative Decoding with Draft Models")
    ranked = rank([target, paper("Image Segmentation")], profile("*", "speculative-decoding"))
    assert [r.paper for r in ranked] == [target]
    assert rank([target], profile("the")) == []


def test_an_exclusion_holds_when_its_topic_floods_the_day_and_over_follows(
    tmp_path, monkeypatch
) -> None:
    """ATTACK4 #7. Before: 30 "Jailbreak attack number N on aligned chat models" papers next to
    the 13 example papers made "jailbreak" a common word, its weight fell, and the papers
    scored 0.43 for the excluded tag (under the 0.5 line): all 5 cards of a `chat models`
    reader with `exclude: [jailbreak]` were jailbreak papers, and a followed author's too."""
    import json
    import shutil

    from typer.testing import CliRunner

    from conftest import EXAMPLES
    from paperpost.cli import app

    flood = [
        {
            "paper": {
                "id": f"2611.7{i:04d}",
                "title": f"Jailbreak attack number {i} on aligned chat models",
                "summary": f"We present jailbreak prompts variant {i} that bypass safety "
                "alignment of chat models with adversarial suffixes and role play.",
                "authors": [{"name": "Tri Dao"}],
                "publishedAt": "2026-11-25T00:00:00Z",
                "upvotes": 1,
            }
        }
        for i in range(30)
    ]
    shutil.copytree(EXAMPLES / "dumps", tmp_path / "dumps")
    (tmp_path / "dumps" / "2026-11-25.json").write_text(json.dumps(flood))
    (tmp_path / "subs").mkdir()
    reader = "tags: [chat models]\nexclude: [jailbreak]\nmin_score: 0\nmax_items: 5\n"
    (tmp_path / "subs" / "f.yaml").write_text("email: f@example.org\n" + reader)
    (tmp_path / "subs" / "g.yaml").write_text("email: g@example.org\nauthors: [Tri Dao]\n" + reader)
    for name, value in {
        "SOURCES": json.dumps([str(tmp_path / "dumps")]),
        "SUBSCRIBERS_DIR": str(tmp_path / "subs"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'pp.db'}",
        "OUTBOX_DIR": str(tmp_path / "outbox"),
    }.items():
        monkeypatch.setenv(f"PAPERPOST_{name}", value)
    result = CliRunner().invoke(app, ["run", "--no-prefect", "--json"])
    assert result.exit_code == 0, result.output
    digests = [p.read_text() for p in (tmp_path / "outbox" / "new").iterdir()]
    assert len(digests) == 2
    assert all("Jailbreak" not in text and "jailbreak" not in text for text in digests)
