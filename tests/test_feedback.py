"""Reader feedback: signed vote links, the vote pages on a live server, the feedback table,
the profile's effect on ranking, follows, and the operator's commands."""

from __future__ import annotations

import contextlib
import email
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from email import policy
from pathlib import Path

import numpy as np
import pytest
import requests
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from typer.testing import CliRunner

from conftest import FULL_TESTS
from paperpost.cli import app
from paperpost.feedback import (
    BadExport,
    BadVoteToken,
    Vote,
    VoteLink,
    _b64,
    _unb64,
    export_votes,
    make_vote_token,
    paper_ref,
    parse_export,
    read_vote_token,
    reader_ids,
    record_votes,
    vote_expiry,
    votes_of,
)
from paperpost.models import Paper
from paperpost.pipeline import run_plain
from paperpost.profile import (
    ADMIT_SHARE,
    DISLIKE_CAP,
    HUB_K,
    LIKE_CAP,
    SEMANTIC_ADMIT_AT,
    SEMANTIC_FULL,
    SEMANTIC_LOW,
    STRONG_TAG,
    Taste,
    hubness,
    nudge,
    semantic_closeness,
)
from paperpost.rank import Background, Interest, Profile, rank_many
from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.web import create_app

KEY = "feedback-test-key"
LATER = vote_expiry(date.today())


def paper(title: str, abstract: str = "", arxiv_id: str | None = None, **extra) -> Paper:
    return Paper(
        title=title, abstract=abstract or f"We study {title.lower()}.", arxiv_id=arxiv_id, **extra
    )


SPEC = paper(
    "Speculative decoding with draft model trees",
    "A small draft model proposes tokens that the target model verifies in parallel; "
    "tree-structured drafts raise the acceptance rate of speculative decoding.",
    arxiv_id="2401.00001",
)
SPEC_NEW = paper(
    "Faster speculative decoding with self-drafting heads",
    "Draft heads propose tokens verified by the target model; the acceptance rate of "
    "speculative decoding rises and latency falls.",
)
GRAMMAR = paper(
    "Grammar-constrained decoding for structured output",
    "Constrained decoding restricts generation to a formal grammar so outputs parse as JSON.",
)
SPEECH = paper(
    "Decoding speech from brain signals",
    "We decode imagined speech from EEG recordings with a convolutional network.",
)


# --- tokens -------------------------------------------------------------------------------


def test_vote_token_round_trip_and_what_it_does_not_reveal() -> None:
    link = VoteLink("r-abc", "2401.00001", "3-9", LATER)
    token = make_vote_token(KEY, link)
    assert read_vote_token(KEY, token) == link
    body = _unb64(token.split(".")[0]).decode()
    assert "@" not in body and "example" not in body  # the address is not in the token


def test_tampered_foreign_and_expired_tokens_are_refused() -> None:
    token = make_vote_token(KEY, VoteLink("r-abc", "2401.00001", "3-9", LATER))
    body, tag = token.split(".")
    parts = _unb64(body).decode().split("\n")
    for index, value in ((0, "r-other"), (1, "2401.99999"), (2, "1-2"), (3, str(LATER * 2))):
        changed = list(parts)
        changed[index] = value
        with pytest.raises(BadVoteToken, match="bad signature"):
            read_vote_token(KEY, f"{_b64(chr(10).join(changed).encode())}.{tag}")
    with pytest.raises(BadVoteToken, match="bad signature"):
        read_vote_token("another-key", token)
    expired = make_vote_token(KEY, VoteLink("r-abc", "2401.00001", "3-9", 1_000))
    with pytest.raises(BadVoteToken, match="expired"):
        read_vote_token(KEY, expired)
    assert read_vote_token(KEY, expired, at=999).expires == 1_000


@hypothesis_settings(deadline=None)  # a loaded machine took 0.9 s for one example
@given(st.text(max_size=300))
def test_any_string_is_a_valid_token_or_bad_vote_token(text: str) -> None:
    with contextlib.suppress(BadVoteToken):
        read_vote_token(KEY, text)


# --- the feedback table (SQLite and PostgreSQL) --------------------------------------------


def test_last_vote_counts_whatever_the_order_and_ids_are_stable(any_db_url: str) -> None:
    store = Store(any_db_url)
    first = reader_ids(store, ["Ann@Example.org", "bob@example.org"])
    assert reader_ids(store, ["ann@example.org"]) == {"ann@example.org": first["ann@example.org"]}
    assert len(set(first.values())) == 2
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    late = Vote("ann@example.org", "2401.00001", -1, "T", "1-5", t0 + timedelta(hours=1))
    early = Vote("ann@example.org", "2401.00001", 1, "T", "1-5", t0)
    record_votes(store, [late])
    record_votes(store, [early])  # older: does not overwrite
    assert [v.vote for v in votes_of(store, ["ann@example.org"])["ann@example.org"]] == [-1]
    newest = Vote("ann@example.org", "2401.00001", 1, "T", "6-9", t0 + timedelta(hours=2))
    record_votes(store, [newest])
    (only,) = votes_of(store, ["ann@example.org"])["ann@example.org"]
    assert (only.vote, only.digest) == (1, "6-9")


def test_export_import_moves_votes_between_databases(tmp_path: Path, db_url: str) -> None:
    source = Store(db_url)
    t0 = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    record_votes(
        source,
        [
            Vote("ann@example.org", "2401.00001", 1, "Spec ✓", "1-5", t0),
            Vote("ann@example.org", "title-abc", -1, "Other", "1-5", t0),
            Vote("bob@example.org", "2401.00001", -1, "Spec ✓", "1-5", t0),
        ],
    )
    lines = list(export_votes(source))
    assert len(lines) == 3 and json.loads(lines[0])["vote"] == "more"
    target = Store(f"sqlite:///{tmp_path / 'moved.db'}")
    record_votes(target, parse_export(lines))
    assert list(export_votes(target)) == lines

    with pytest.raises(BadExport) as caught:
        parse_export([lines[0], "{not json", '{"vote": "maybe"}'], "votes.jsonl")
    assert "votes.jsonl:2: not JSON" in str(caught.value)
    assert "votes.jsonl:3:" in str(caught.value)


GOOD_VOTE = {
    "address": "ann@example.org",
    "paper_id": "2401.00001",
    "vote": "more",
    "title": "Spec",
    "digest": "1-5",
    "voted_at": "2026-11-20T08:30:00+00:00",
}
# before: each was imported as is (garbage rows; on PostgreSQL a DataError traceback for the
# NUL and the 5,000-character id) or ended in a traceback (OverflowError, UnicodeEncodeError)
HOSTILE_VOTES = {
    "voted_at '0001-01-01T00:00:00+01:00' is out of range": {
        "voted_at": "0001-01-01T00:00:00+01:00"
    },
    "voted_at '9999-12-31T23:59:59-05:00' is out of range": {
        "voted_at": "9999-12-31T23:59:59-05:00"
    },
    "title has 2,100,000 characters; at most 500": {"title": "agents " * 300_000},
    "address must be non-blank text, got list": {"address": ["ann@example.org"]},
    "paper_id must be non-blank text, got dict": {"paper_id": {"x": 1}},
    "title must be non-blank text, got NoneType": {"title": None},
    "paper_id has 5,000 characters; at most 64": {"paper_id": "x" * 5000},
    "address contains a control character": {"address": "ann@example.org\x00"},
    "paper_id contains a control character or a lone surrogate": {"paper_id": "\ud800"},
    "address is not an email address": {"address": "ann"},
    'vote must be "more" or "fewer"': {"vote": ["more"]},
    # ATTACK5 #4: dated ahead, it outranked every real click until then
    "voted_at '2999-06-01T00:00:00+00:00' is in the future": {
        "voted_at": "2999-06-01T00:00:00+00:00"
    },
}


def test_a_hostile_export_line_is_refused_with_its_reason(db_url: str) -> None:
    for words, change in HOSTILE_VOTES.items():
        line = json.dumps({**GOOD_VOTE, **change})
        with pytest.raises(BadExport) as caught:
            parse_export([json.dumps(GOOD_VOTE), line], "votes.jsonl")
        assert str(caught.value).startswith("votes.jsonl:2: "), caught.value
        assert words in str(caught.value), caught.value
    with pytest.raises(BadExport, match=r"votes\.jsonl:1: expected a JSON object"):
        parse_export(["[1, 2]"], "votes.jsonl")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@hypothesis_settings(
    max_examples=300 if FULL_TESTS else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(GOOD_VOTE)),
        json_values
        | st.sampled_from(["more", "fewer", "2026-11-20", "0001-01-01T00:00:00+14:00"])
        | st.datetimes().map(lambda d: d.isoformat())
        | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\x00\ud800@")),
    ),
    drop=st.sets(st.sampled_from(sorted(GOOD_VOTE)), max_size=2),
)
def test_any_export_line_is_imported_whole_or_refused_in_one_line(
    any_db_url: str, changes: dict, drop: set
) -> None:
    data = {k: v for k, v in {**GOOD_VOTE, **changes}.items() if k not in drop}
    line = json.dumps(data, allow_nan=True)
    try:
        votes = parse_export([line], "votes.jsonl")
    except BadExport as exc:
        assert str(exc).startswith("votes.jsonl:1: ") and "\n" not in str(exc)
        return
    record_votes(Store(any_db_url), votes)  # whatever parses, the database takes


# --- the vote pages, on a real server ---------------------------------------------------------


def test_an_import_dated_a_minute_ahead_is_kept_an_hour_ahead_refused() -> None:
    """Two machines' clocks differ by seconds; an export dated hours ahead is a wrong clock."""
    ahead = datetime.now(UTC) + timedelta(minutes=1)
    (vote,) = parse_export([json.dumps({**GOOD_VOTE, "voted_at": ahead.isoformat()})])
    assert vote.voted_at == ahead
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(BadExport, match="is in the future"):
        parse_export([json.dumps({**GOOD_VOTE, "voted_at": later})])


def test_a_click_beats_a_stored_vote_dated_ahead_and_is_only_noted_when_kept(web) -> None:
    """ATTACK5 #4: a stored vote dated in 2027 (an older import, or this server's clock
    stepped back) kept winning the upsert; the page still said "Noted". A click is the
    reader's latest word: it is recorded, and the page says so only when it was."""
    base, store = web
    ids = reader_ids(store, ["ann@example.org"])
    digest = _sent(store, "ann@example.org", 0, 1)
    ahead = datetime.now(UTC) + timedelta(days=400)
    record_votes(store, [Vote("ann@example.org", SPEC.id, 1, SPEC.title, digest, ahead)])
    token = make_vote_token(KEY, VoteLink(ids["ann@example.org"], SPEC.id, digest, LATER))
    answer = requests.post(f"{base}/vote/fewer/{token}", timeout=10)
    assert answer.status_code == 200 and "Noted: fewer" in answer.text
    (vote,) = votes_of(store, ["ann@example.org"])["ann@example.org"]
    assert vote.vote == -1
    again = requests.post(f"{base}/vote/more/{token}", timeout=10)
    assert again.status_code == 200
    (vote,) = votes_of(store, ["ann@example.org"])["ann@example.org"]
    assert vote.vote == 1


@pytest.fixture
def web(db_url: str) -> Iterator[tuple[str, Store]]:
    """``paperpost web``'s app under uvicorn on 127.0.0.1, with one known paper."""
    store = Store(db_url)
    store.ingest("test", [SPEC])
    settings = Settings(database_url=db_url, secret_key=SecretStr(KEY))
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=10)


def _sent(store: Store, address: str, lo: int, hi: int, status: str = "sent") -> str:
    """Record in the delivery ledger that digest ``lo-hi`` went to ``address``."""
    digest = f"{lo}-{hi}"
    assert store.claim(address, digest, lo, hi, f"<{digest}.{address}>", 1).proceed
    if status != "sending":
        store.settle(address, digest, status, hi, None)
    return digest


def _vote_count(store: Store) -> int:
    return sum(len(v) for v in votes_of(store, ["ann@example.org", "bob@example.org"]).values())


def test_get_confirms_post_records_and_bad_links_change_nothing(web) -> None:
    base, store = web
    ids = reader_ids(store, ["ann@example.org", "bob@example.org"])
    _sent(store, "ann@example.org", 0, 1)
    token = make_vote_token(KEY, VoteLink(ids["ann@example.org"], SPEC.id, "0-1", LATER))

    shown = requests.get(f"{base}/vote/more/{token}", timeout=10)
    assert shown.status_code == 200 and SPEC.title in shown.text
    assert 'method="post"' in shown.text and "ann@" not in shown.text
    assert _vote_count(store) == 0  # a GET (a mail scanner) records nothing

    assert requests.post(f"{base}/vote/more/{token}", timeout=10).status_code == 200
    assert requests.post(f"{base}/vote/more/{token}", timeout=10).status_code == 200
    changed = requests.post(f"{base}/vote/fewer/{token}", timeout=10)
    assert changed.status_code == 200 and "fewer papers like" in changed.text
    (vote,) = votes_of(store, ["ann@example.org"])["ann@example.org"]
    assert (vote.paper_id, vote.vote, vote.digest) == (SPEC.id, -1, "0-1")

    body, tag = token.split(".")
    parts = _unb64(body).decode().split("\n")
    parts[0] = ids["bob@example.org"]  # Ann's signature on Bob's id
    bad = {
        "cross-address": f"{_b64(chr(10).join(parts).encode())}.{tag}",
        "tampered": token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "expired": make_vote_token(KEY, VoteLink(ids["bob@example.org"], SPEC.id, "0-1", 5)),
        "foreign key": make_vote_token(
            "x", VoteLink(ids["bob@example.org"], SPEC.id, "0-1", LATER)
        ),
        "unknown reader": make_vote_token(KEY, VoteLink("nobody", SPEC.id, "0-1", LATER)),
        "unknown paper": make_vote_token(
            KEY, VoteLink(ids["bob@example.org"], "2999.00001", "0-1", LATER)
        ),
    }
    for name, value in bad.items():
        for method in (requests.get, requests.post):
            answer = method(f"{base}/vote/more/{value}", timeout=10)
            assert answer.status_code == 400, name
    assert votes_of(store, ["bob@example.org"]) == {}
    assert requests.post(f"{base}/vote/maybe/{token}", timeout=10).status_code == 404

    store.ingest("text dump", [GRAMMAR])  # no arXiv id: the link names it by its key hash
    link = VoteLink(
        ids["bob@example.org"], paper_ref(GRAMMAR), _sent(store, "bob@example.org", 1, 2), LATER
    )
    by_title = make_vote_token(KEY, link)
    assert GRAMMAR.title in requests.get(f"{base}/vote/fewer/{by_title}", timeout=10).text
    assert requests.post(f"{base}/vote/fewer/{by_title}", timeout=10).status_code == 200
    (vote,) = votes_of(store, ["bob@example.org"])["bob@example.org"]
    assert (vote.paper_id, vote.title, vote.vote) == (GRAMMAR.id, GRAMMAR.title, -1)
    assert "<script>" not in requests.get(f"{base}/vote/more/%3Cscript%3E", timeout=10).text


def test_a_vote_needs_a_digest_the_ledger_shows_sent_to_that_reader_with_that_paper(web) -> None:
    base, store = web  # SPEC is paper 1
    store.ingest("later", [GRAMMAR, SPEECH])  # papers 2 and 3
    ids = reader_ids(store, ["ann@example.org", "bob@example.org"])
    ann = ids["ann@example.org"]
    _sent(store, "bob@example.org", 0, 3)  # Bob's digest, not Ann's
    _sent(store, "ann@example.org", 1, 3)  # holds papers 2 and 3, not SPEC
    _sent(store, "ann@example.org", 0, 2, status="sending")  # claimed, never went out
    _sent(store, "ann@example.org", 0, 1, status="failed")
    never = {
        "digest never made": VoteLink(ann, SPEC.id, "0-9", LATER),
        "another reader's digest": VoteLink(ann, SPEC.id, "0-3", LATER),
        "paper not in that digest": VoteLink(ann, SPEC.id, "1-3", LATER),
        "digest still sending": VoteLink(ann, SPEC.id, "0-2", LATER),
        "digest failed": VoteLink(ann, SPEC.id, "0-1", LATER),
    }
    for name, link in never.items():
        token = make_vote_token(KEY, link)  # correctly signed: only the ledger can refuse it
        for method in (requests.get, requests.post):
            assert method(f"{base}/vote/more/{token}", timeout=10).status_code == 400, name
    assert _vote_count(store) == 0
    sent = make_vote_token(KEY, VoteLink(ann, paper_ref(GRAMMAR), "1-3", LATER))
    assert requests.post(f"{base}/vote/more/{sent}", timeout=10).status_code == 200
    assert [v.paper_id for v in votes_of(store, ["ann@example.org"])["ann@example.org"]] == [
        GRAMMAR.id
    ]


def test_the_ledger_check_on_both_databases(any_db_url: str) -> None:
    from paperpost.feedback import voted_paper

    store = Store(any_db_url)
    store.ingest("first", [SPEC])
    store.ingest("later", [GRAMMAR])
    ids = reader_ids(store, ["ann@example.org"])
    _sent(store, "ann@example.org", 1, 2)
    _sent(store, "ann@example.org", 0, 1, status="sending")

    def link(ref: str, digest: str) -> VoteLink:
        return VoteLink(ids["ann@example.org"], ref, digest, LATER)

    assert voted_paper(store, "ann@example.org", link(paper_ref(GRAMMAR), "1-2")) == GRAMMAR
    assert voted_paper(store, "ann@example.org", link(SPEC.id, "1-2")) is None  # not in it
    assert voted_paper(store, "ann@example.org", link(SPEC.id, "0-1")) is None  # not sent
    assert voted_paper(store, "bob@example.org", link(paper_ref(GRAMMAR), "1-2")) is None


def test_concurrent_votes_are_each_recorded_once(web) -> None:
    base, store = web
    papers = [paper(f"Concurrent paper number {i}", arxiv_id=f"2402.{i:05d}") for i in range(20)]
    store.ingest("more", papers)
    ids = reader_ids(store, [f"r{i}@example.org" for i in range(5)])
    digests = {rid: _sent(store, address, 0, 21) for address, rid in ids.items()}
    tokens = [
        make_vote_token(KEY, VoteLink(rid, p.id, digests[rid], LATER))
        for rid in ids.values()
        for p in papers
    ]
    with ThreadPoolExecutor(16) as pool:
        codes = list(
            pool.map(
                lambda t: requests.post(f"{base}/vote/more/{t}", timeout=30).status_code, tokens * 2
            )
        )
    assert codes == [200] * 200
    recorded = votes_of(store, ids)
    assert sum(len(v) for v in recorded.values()) == 100
    assert all(v.vote == 1 for votes in recorded.values() for v in votes)


# --- ranking with feedback -----------------------------------------------------------------


def _ranked(papers, taste: Taste, tag: str = "decoding", vectors=None, **profile) -> list:
    reader = Profile((Interest(tag),), **profile)
    return rank_many(papers, [reader], nudge(papers, [taste], Background.of(papers), vectors))[0]


def test_likes_lift_similar_papers_and_say_why() -> None:
    papers = [GRAMMAR, SPEECH, SPEC_NEW]
    plain = _ranked(papers, Taste())
    taught = _ranked(papers, Taste(liked=(SPEC,)))
    assert plain[0].paper != SPEC_NEW and taught[0].paper == SPEC_NEW
    assert f"like '{SPEC.title}' you liked" in taught[0].why
    assert "you liked" not in " ".join(r.why for r in taught[1:])
    gain = taught[0].score - next(r.score for r in plain if r.paper == SPEC_NEW)
    assert 0 < gain <= LIKE_CAP + 1e-9  # shown scores are rounded to 3 decimals


def test_one_fewer_vote_alone_does_not_move_the_ranking() -> None:
    papers = [GRAMMAR, SPEECH, SPEC_NEW]
    plain = _ranked(papers, Taste())
    assert _ranked(papers, Taste(disliked=(SPEECH,))) == plain
    taught = _ranked(papers, Taste(liked=(SPEC,), disliked=(SPEECH,)))
    assert taught == _ranked(papers, Taste(liked=(SPEC,)))
    assert "fewer" not in " ".join(r.why for r in taught)


def _speech_digest() -> tuple[list[Paper], list[Paper], list[Paper], Paper, tuple[Paper, ...]]:
    """A 'decoding' digest: weak speech and grammar finds, one strong find, two disliked
    speech-synthesis papers."""
    speech = [
        paper(f"Decoding for expressive speech synthesis {i}", f"A text-to-speech vocoder, {i}.")
        for i in range(3)
    ]
    grammar = [
        paper(f"Grammar-constrained decoding {i}", f"Constrained decoding with grammars, {i}.")
        for i in range(3)
    ]
    strong = paper(
        "Decoding speech: speculative decoding for speech synthesis",
        "Decoding speech faster: speculative decoding and parallel decoding draft mel frames"
        " for a text-to-speech vocoder, a decoding method.",
    )
    disliked = tuple(
        paper(f"Speech synthesis with a neural vocoder {i}", f"A text-to-speech vocoder, {i}.")
        for i in range(2)
    )
    return [*speech, *grammar, strong], speech, grammar, strong, disliked


UNRELATED = paper("Coral reef ecology", "Fish populations of tropical coral reefs.")


def test_two_fewer_votes_lower_weak_finds_in_that_direction_only_and_say_so() -> None:
    papers, speech, grammar, strong, disliked = _speech_digest()
    plain = {r.paper: r for r in _ranked(papers, Taste())}
    assert plain[strong].score >= STRONG_TAG > max(plain[p].score for p in speech + grammar)
    # the reader liked something (here far from all of these papers)
    taught = {r.paper: r for r in _ranked(papers, Taste((UNRELATED,), disliked))}
    assert taught.keys() == plain.keys()  # lowered, never dropped
    for p in speech:
        assert (1 - DISLIKE_CAP) * plain[p].score - 1e-3 <= taught[p].score < plain[p].score
        assert "lowered: like 'Speech synthesis with a neural vocoder" in taught[p].why
    for p in [*grammar, strong]:  # another direction; strong tag evidence
        assert taught[p] == plain[p]
    # a liked paper as close as the disliked ones: not a disliked direction any more
    liked = paper("Decoding for expressive speech synthesis 9", "A text-to-speech vocoder, 9.")
    both = {r.paper: r for r in _ranked(papers, Taste(liked=(liked,), disliked=disliked))}
    assert "fewer" not in " ".join(r.why for r in both.values())


def test_fewer_votes_without_a_like_change_nothing() -> None:
    # without a liked paper, nothing tells the rejected direction from the reader's broad tag
    papers, *_, disliked = _speech_digest()
    assert _ranked(papers, Taste(disliked=disliked)) == _ranked(papers, Taste())


def test_a_lift_never_carries_a_weak_find_past_one_squarely_on_the_tag() -> None:
    papers, speech, _, strong, _ = _speech_digest()
    plain = {r.paper: r for r in _ranked(papers, Taste())}
    liked = paper("Decoding for expressive speech synthesis 9", "A text-to-speech vocoder, 9.")
    taught = _ranked(papers, Taste(liked=(liked,)))
    lifted_up = [r for r in taught if r.paper in speech]
    assert all(r.score > plain[r.paper].score for r in lifted_up)  # the likes lift them ...
    assert all(r.score <= STRONG_TAG for r in lifted_up)  # ... up to STRONG_TAG at most
    assert taught[0].paper == strong and taught[0].score >= plain[strong].score


def test_a_reader_whose_votes_change_nothing_is_ordered_as_without_votes() -> None:
    # evidence in the abstract only, or only in the keywords or TL;DR: the tag ranker orders
    # what passes by its ordering score, not by the score shown; a like far from all of
    # these papers must leave that order as it is
    papers = [
        paper("Fast sampling for language models", "A decoding method: decoding, decoding."),
        paper("Efficient generation", "Speculative decoding " * 3),
        paper("Decoding in brains", "We read signals."),
        paper("Grammar-constrained decoding for parsers", "Parsers with grammars."),
        paper("A decoding note", "Short."),
        paper("Neural codecs", "Audio decoding with neural codecs; the decoder decodes frames."),
        paper("Sampling tricks", "Tricks.", ai_keywords=("decoding", "sampling")),
        paper("Language model serving", "Serving.", ai_summary="A faster decoding scheme."),
        paper("Speculative decoding with draft trees", "Draft trees verify tokens."),
        paper("Beam search revisited", "Beam search decoding for translation, decoding outputs."),
    ]
    plain = _ranked(papers, Taste(), min_score=0.2)
    assert [r.score for r in plain] != sorted((r.score for r in plain), reverse=True)
    assert _ranked(papers, Taste(liked=(UNRELATED,)), min_score=0.2) == plain


def test_hubness_is_how_much_closer_than_usual_a_paper_is_to_the_batch() -> None:
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((40, 384))
    batch[0] = batch[1:].mean(axis=0) * 3 + rng.standard_normal(384) * 0.2  # near them all
    batch /= np.linalg.norm(batch, axis=1, keepdims=True)
    hub = hubness(batch.astype(np.float32))
    assert hub.shape == (40,) and abs(float(hub.mean())) < 1e-5
    assert hub.argmax() == 0 and hub[0] > 0.1
    assert not hubness(batch[:HUB_K].astype(np.float32)).any()  # too few papers to tell


def test_semantic_likes_do_not_admit_a_paper_close_to_everything() -> None:
    from paperpost.semantic import Vectors

    rng = np.random.default_rng(4)
    tagged = [paper(f"Decoding method {i}", f"A decoding method, variant {i}.") for i in range(4)]
    others = [paper(f"Unrelated study {i}", f"Topic {i} of another field.") for i in range(30)]
    field = [paper(f"A study of one field {i}", f"Field paper {i}.") for i in range(10)]
    liked = paper("A study we liked", "Something the reader wanted.")
    hub = paper("A generic method for the whole field", "General.")
    specific = paper("A method for what the reader liked", "Specific.")
    papers = [*tagged, *others, *field, hub, specific]
    unit = rng.standard_normal((len(papers) + 2, 384))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    like, common, rows = unit[-1], unit[-2], unit[:-2].copy()
    start = len(tagged) + len(others)
    rows[start : start + len(field)] = 0.6 * common + 0.8 * rows[start : start + len(field)]
    rows[-2] = 0.7 * like + 0.714 * common  # close to the like, and to every field paper
    rows[-1] = 0.62 * like + 0.785 * rows[-1]  # a little less close to the like, to it only
    vectors = Vectors()
    for p, v in zip([*papers, liked], [*rows, like], strict=True):
        vectors.papers[vectors.key(p)] = (v / np.linalg.norm(v)).astype(np.float32)
    closeness = semantic_closeness(vectors.of([liked]) @ vectors.of([hub, specific]).T)
    assert closeness[0, 0] > closeness[0, 1] >= SEMANTIC_ADMIT_AT  # both close to the like
    taught = _ranked(papers, Taste(liked=(liked,)), vectors=vectors, max_items=10)
    added = [r.paper for r in taught if "added for your votes" in r.why]
    assert added == [specific]  # one like admits one paper: not the hub, though closer


def _near(i: int, topic: str) -> Paper:
    return paper(
        f"{topic} study number {i}",
        f"We study {topic} in setting {i}: {topic} models, {topic} benchmarks and {topic} data.",
    )


def test_votes_admit_a_bounded_share_of_close_papers_the_tags_missed_and_say_so() -> None:
    tagged = [paper(f"Decoding method {i}", f"A decoding method, variant {i}.") for i in range(5)]
    drafts = [_near(i, "draft verification") for i in range(12)]
    liked = _near(99, "draft verification")
    papers = tagged + drafts
    plain = _ranked(papers, Taste(), max_items=10)
    assert not set(drafts) & {r.paper for r in plain}  # the tag alone never finds them
    taught = _ranked(papers, Taste(liked=(liked,)), max_items=10)
    added = [r for r in taught if r.paper in drafts]
    assert len(taught) == 6 and len(added) == 1  # one liked paper: at most one added
    assert added[0].why.startswith("added for your votes: like 'draft verification study")
    many = _ranked(
        papers, Taste(liked=tuple(_near(90 + i, "draft verification") for i in range(5)))
    )
    added = [r for r in many if r.paper in drafts]
    assert len(added) == int(10 * ADMIT_SHARE)  # never more than this share of a digest
    assert all("added for your votes" in r.why for r in added)
    assert not [r for r in _ranked(papers, Taste(disliked=(liked,))) if r.paper in drafts]


def _agents_images_and_liked_images() -> tuple[list[Paper], list[Paper], tuple[Paper, ...]]:
    """15 agent papers, 15 image-diffusion papers, and 5 liked image papers: a reader of
    "agents" who liked the wrong field."""
    agents = [
        paper(
            f"Tool-using language agents, study {i}",
            f"An LLM agent plans, calls tools and acts in an environment (setting {i}).",
        )
        for i in range(15)
    ]
    images = [
        paper(
            f"Latent diffusion for image synthesis, study {i}",
            f"A denoising diffusion model generates images from text prompts (setting {i}).",
        )
        for i in range(15)
    ]
    liked = tuple(
        paper(
            f"Diffusion image generation paper {i}",
            "A denoising diffusion model that generates images from text prompts.",
        )
        for i in range(5)
    )
    return agents, images, liked


def test_a_handful_of_votes_cannot_turn_an_agents_digest_into_something_else() -> None:
    agents, images, liked = _agents_images_and_liked_images()
    ranked = _ranked(agents + images, Taste(liked=liked), tag="agents", max_items=10)
    assert len(ranked) == 10
    about_agents = [r for r in ranked if r.paper in agents]
    assert len(about_agents) >= 10 - int(10 * ADMIT_SHARE)
    assert all("added for your votes" in r.why for r in ranked if r.paper in images)


def test_semantic_closeness_ramps_the_cosine_over_what_papers_of_the_field_share() -> None:
    rng = np.random.default_rng(1)
    voted = rng.standard_normal((1, 384))
    voted /= np.linalg.norm(voted)
    other = rng.standard_normal(384)
    other -= (other @ voted[0]) * voted[0]  # orthogonal to the voted paper
    other /= np.linalg.norm(other)
    cosines = np.array([0.0, SEMANTIC_LOW, (SEMANTIC_LOW + SEMANTIC_FULL) / 2, SEMANTIC_FULL, 1.0])
    new = cosines[:, None] * voted + np.sqrt(1 - cosines[:, None] ** 2) * other
    closeness = semantic_closeness(voted.astype(np.float32) @ new.astype(np.float32).T)
    assert closeness.shape == (1, 5)
    assert np.allclose(closeness[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-5)


def _draft_papers() -> tuple[list[Paper], Paper, Paper]:
    """A 'decoding' digest's candidates, one liked paper, and a paper close to it in meaning
    that shares almost no word with it and none with the tag."""
    tagged = [
        GRAMMAR,
        SPEECH,
        paper(
            "Decoding strategies for machine translation",
            "Beam search and sampling decoding for neural machine translation systems.",
        ),
    ]
    assistant = paper(
        "Assisted generation: a lightweight drafter speeds up large language model inference",
        "A compact drafter network guesses the next few words and the large language model "
        "validates them all at once, giving lossless two to three times faster inference.",
    )
    unrelated = [
        paper("Protein structure prediction", "We predict protein folds from sequences."),
        paper("Robot grasping with tactile sensors", "A robot hand grasps objects by touch."),
    ]
    return [*tagged, assistant, *unrelated], SPEC, assistant


def test_semantic_likes_admit_a_paper_close_in_meaning_and_say_why(encoder) -> None:
    from paperpost.semantic import Vectors

    papers, liked, assistant = _draft_papers()
    vectors = Vectors()
    plain = _ranked(papers, Taste(), vectors=vectors)
    assert assistant not in [r.paper for r in plain]  # the tag does not find it
    # term vectors: too few shared words to let it in
    assert assistant not in [r.paper for r in _ranked(papers, Taste(liked=(liked,)))]
    taught = _ranked(papers, Taste(liked=(liked,)), vectors=vectors)
    added = [r for r in taught if r.paper == assistant]
    assert len(added) == 1
    assert added[0].why == f"added for your votes: like '{liked.title}' you liked"
    # what the tags found is all still there (votes reorder it, never drop it)
    assert {r.paper for r in taught} == {r.paper for r in plain} | {assistant}
    # without votes (or with only one "fewer") the digest is exactly the tags' one
    assert _ranked(papers, Taste(disliked=(liked,)), vectors=vectors) == plain


def test_semantic_votes_cannot_turn_an_agents_digest_into_something_else(encoder) -> None:
    from paperpost.semantic import Vectors

    agents, images, liked = _agents_images_and_liked_images()
    vectors = Vectors()
    ranked = _ranked(agents + images, Taste(liked=liked), "agents", vectors, max_items=10)
    assert len(ranked) == 10
    added = [r for r in ranked if r.paper in images]
    assert 1 <= len(added) <= int(10 * ADMIT_SHARE)  # the rest is what the tag found
    assert all(r.why.startswith("added for your votes: like 'Diffusion image") for r in added)


def test_followed_authors_and_organizations_are_always_included_and_marked() -> None:
    by_ada = paper("A survey of protein folding", authors=("Ada Lovelace", "B. Other"))
    by_lab = paper("Robot grasping at scale", organization="Open Robotics Lab")
    excluded = paper("Speculative decoding for robots", authors=("Ada Lovelace",))
    papers = [GRAMMAR, SPEC_NEW, by_ada, by_lab, excluded]
    taste = Taste(authors=("ada lovelace",), organizations=("openroboticslab",))
    reader = Profile((Interest("decoding"),), exclude=("speculative",), max_items=3)
    ranked = rank_many(papers, [reader], nudge(papers, [taste], Background.of(papers)))[0]
    assert {r.paper for r in ranked[:2]} == {by_ada, by_lab}  # first, though no tag matches
    assert [r.paper for r in ranked] == [*[r.paper for r in ranked[:2]], GRAMMAR]
    assert next(r for r in ranked if r.paper == by_ada).why == "followed author: ada lovelace"
    assert "followed organization" in next(r for r in ranked if r.paper == by_lab).why
    assert excluded not in [r.paper for r in ranked]  # an exclusion still wins


def test_readers_without_feedback_rank_exactly_as_before() -> None:
    papers = [GRAMMAR, SPEECH, SPEC_NEW]
    readers = [Profile((Interest("decoding"),)), Profile((Interest("speech"),))]
    tastes = [Taste(liked=(SPEC,)), Taste()]
    taught = rank_many(papers, readers, nudge(papers, tastes, Background.of(papers)))
    assert taught[1] == rank_many(papers, readers)[1]
    assert nudge(papers, [Taste(), Taste()], Background.of(papers)) is None


# --- end to end: digest links, a vote, the next digest ------------------------------------------

HEADER = "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\nNov 24\n\n"


def _dump(folder: Path, name: str, papers: list[Paper]) -> None:
    body = "\n\n".join(f"{p.title}\n\n{p.abstract}" for p in papers)
    (folder / name).write_text(HEADER + body + "\n")


def test_vote_from_a_digest_changes_the_next_digest(tmp_path: Path, web, db_url: str) -> None:
    base, _ = web
    dumps, subs, outbox = tmp_path / "dumps", tmp_path / "subs", tmp_path / "outbox"
    dumps.mkdir()
    subs.mkdir()
    (subs / "ann.yaml").write_text("email: ann@example.org\ntags: [decoding]\n")
    settings = Settings(
        sources=[str(dumps)],
        subscribers_dir=subs,
        outbox_dir=outbox,
        database_url=db_url,
        base_url=base,
        secret_key=SecretStr(KEY),
    )
    first = paper(SPEC.title, SPEC.abstract)  # from a text dump: no arXiv id
    _dump(dumps, "a.txt", [first, SPEECH])
    assert run_plain(settings, date(2026, 11, 24)).digests_sent == 1
    (path,) = (outbox / "new").glob("ann@example.org_*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    more = re.findall(r"More like this: (\S+)", text)
    assert len(more) == 2 and len(re.findall(r"Fewer like this: (\S+)", text)) == 2
    assert all(f'href="{url}"' in html for url in more)
    assert "ann" not in " ".join(more)

    card = text.split(first.title, 1)[1]
    link = re.search(r"More like this: (\S+)", card)[1]
    assert first.title in requests.get(link, timeout=10).text
    assert requests.post(link, timeout=10).status_code == 200

    _dump(dumps, "b.txt", [GRAMMAR, SPEC_NEW])
    assert run_plain(settings, date(2026, 11, 25)).digests_sent == 1
    newest = max((outbox / "new").glob("ann@example.org_*.eml"), key=lambda p: p.stat().st_mtime)
    body = email.message_from_bytes(newest.read_bytes(), policy=policy.default)
    text = body.get_body(("plain",)).get_content()
    assert text.index(SPEC_NEW.title) < text.index(GRAMMAR.title)
    assert f"like '{first.title}' you liked" in text


# --- subscriber YAML and the operator's commands ----------------------------------------------


def test_like_authors_organizations_in_yaml(tmp_path: Path) -> None:
    from paperpost.subscribers import load_file

    path = tmp_path / "ann.yaml"
    path.write_text(
        "email: ann@example.org\ntags: [agents]\n"
        "like:\n  - https://arxiv.org/abs/2401.00001v2\n  - arXiv:2402.00002\n"
        "  - Speculative decoding with draft model trees\n"
        "authors: Ada Lovelace\norganizations: [OpenBMB]\n"
    )
    (entry,), errors = load_file(path)
    assert errors == []
    sub = entry.subscriber
    assert sub.like == ["2401.00001", "2402.00002", "Speculative decoding with draft model trees"]
    assert sub.authors == ["Ada Lovelace"] and sub.organizations == ["OpenBMB"]

    path.write_text("email: ann@example.org\ntags: [agents]\nlike:\n  - ok\n  - 42\nauthor: [x]\n")
    _, errors = load_file(path)
    assert [str(e).replace(str(tmp_path) + "/", "") for e in errors] == [
        "ann.yaml:5:5: like[1]: expected text, got a number",
        'ann.yaml:6:1: author: unknown field "author"; did you mean "authors"?',
    ]


def test_subscribers_show_and_feedback_export_import(tmp_path: Path, monkeypatch) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ann.yaml").write_text(
        "email: ann@example.org\ntags: [decoding]\nauthors: [Ada Lovelace]\n"
        f"like: ['{SPEC_NEW.title}', '2999.00001']\n"
    )
    db = f"sqlite:///{tmp_path / 'pp.db'}"
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(subs))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", db)
    store = Store(db)
    store.ingest("t", [SPEC, SPEC_NEW, GRAMMAR, SPEECH])
    at = datetime(2026, 11, 24, tzinfo=UTC)
    record_votes(store, [Vote("ann@example.org", SPEECH.id, -1, SPEECH.title, "0-4", at)])
    runner = CliRunner()

    shown = runner.invoke(app, ["subscribers", "show", "ann@example.org"])
    assert shown.exit_code == 0, shown.output
    assert "Ada Lovelace" in shown.output and SPEECH.title in shown.output
    assert "2999.00001 → not seen yet" in shown.output
    assert re.search(r"profile: .*draft", shown.output)  # the liked example's terms
    missing = runner.invoke(app, ["subscribers", "show", "zed@example.org"])
    assert missing.exit_code == 1 and "no valid subscriber" in missing.output

    exported = tmp_path / "votes.jsonl"
    assert runner.invoke(app, ["feedback", "export", "--out", str(exported)]).exit_code == 0
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    imported = runner.invoke(app, ["feedback", "import", str(exported)])
    assert imported.exit_code == 0 and "imported 1 votes" in imported.output
    assert votes_of(Store(f"sqlite:///{tmp_path / 'new.db'}"), ["ann@example.org"])
    exported.write_text("{oops\n")
    broken = runner.invoke(app, ["feedback", "import", str(exported)])
    assert broken.exit_code == 1 and f"{exported}:1: not JSON" in broken.output


def test_preview_and_rank_use_the_readers_votes_as_a_run_does(tmp_path: Path, monkeypatch) -> None:
    subs, dumps = tmp_path / "subs", tmp_path / "dumps"
    subs.mkdir()
    dumps.mkdir()
    (subs / "ann.yaml").write_text("email: ann@example.org\ntags: [decoding]\n")
    (subs / "bob.yaml").write_text("email: bob@example.org\ntags: [decoding]\n")
    db = f"sqlite:///{tmp_path / 'pp.db'}"
    monkeypatch.setenv("PAPERPOST_SUBSCRIBERS_DIR", str(subs))
    monkeypatch.setenv("PAPERPOST_DATABASE_URL", db)
    store = Store(db)
    store.ingest("t", [SPEC])
    at = datetime(2026, 11, 24, tzinfo=UTC)
    record_votes(store, [Vote("ann@example.org", SPEC.id, 1, SPEC.title, "0-1", at)])
    _dump(dumps, "today.txt", [GRAMMAR, SPEECH, SPEC_NEW])
    runner = CliRunner()

    def ranked(*args: str) -> list[dict]:
        result = runner.invoke(app, ["rank", str(dumps), "--jsonl", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines()]

    ann, bob = ranked("--reader", "ann@example.org"), ranked("--reader", "bob@example.org")
    assert ann[0]["title"] == SPEC_NEW.title and bob[0]["title"] != SPEC_NEW.title
    assert f"like '{SPEC.title}' you liked" in ann[0]["why"]
    assert [r["title"] for r in ranked("--tag", "decoding")] == [r["title"] for r in bob]
    for email_, first in (
        ("ann@example.org", SPEC_NEW.title),
        ("bob@example.org", bob[0]["title"]),
    ):
        out = tmp_path / f"{email_}.html"
        shown = runner.invoke(app, ["preview", email_, "--source", str(dumps), "--out", str(out)])
        assert shown.exit_code == 0, shown.output
        html = out.read_text()
        assert html.index(first) == min(html.index(p.title) for p in (GRAMMAR, SPEECH, SPEC_NEW))
    assert "you liked" in (tmp_path / "ann@example.org.html").read_text()


def test_tastes_resolve_yaml_examples_and_votes_from_the_history(db_url: str) -> None:
    from paperpost.feedback import reader_nudge, tastes
    from paperpost.subscribers import Subscriber

    store = Store(db_url)
    no_id = paper("Grammar-Constrained Decoding, for Structured Output!", GRAMMAR.abstract)
    store.ingest("t", [SPEC, no_id, SPEECH])
    ann = Subscriber.model_validate(
        {
            "email": "ann@example.org",
            "tags": ["decoding"],
            "like": ["https://arxiv.org/abs/2401.00001v3", "not seen yet"],
            "authors": ["Ada Lovelace"],
        }
    )
    bob = Subscriber.model_validate({"email": "bob@example.org", "tags": ["decoding"]})
    at = datetime(2026, 11, 24, tzinfo=UTC)
    record_votes(
        store,
        [
            Vote("ann@example.org", no_id.id, -1, no_id.title, "0-3", at),  # by title
            Vote("ann@example.org", SPEC.id, -1, SPEC.title, "0-3", at),  # overrides like:
            Vote("bob@example.org", "2999.00001", 1, "A paper this history lost", "0-3", at),
        ],
    )
    ann_taste, bob_taste = tastes(store, [ann, bob])
    assert ann_taste.liked == ()  # the liked example was voted "fewer" later
    assert {p.title for p in ann_taste.disliked} == {SPEC.title, no_id.title}
    assert next(p for p in ann_taste.disliked if p.title == no_id.title).abstract  # its text
    assert ann_taste.authors == ("Ada Lovelace",)
    assert [p.title for p in bob_taste.liked] == ["A paper this history lost"]  # title only
    plain = Subscriber.model_validate({"email": "cy@example.org", "tags": ["decoding"]})
    background = Background.of([SPEC, no_id, SPEECH])
    assert reader_nudge(store, [SPEC_NEW], [plain], background) is None
    assert reader_nudge(store, [SPEC_NEW], [ann, plain], background) is not None


def test_a_run_with_the_semantic_signal_ranks_votes_by_meaning(db_url: str, encoder) -> None:
    from paperpost.feedback import rank_readers
    from paperpost.rank import MatchCache
    from paperpost.semantic import Vectors
    from paperpost.subscribers import Subscriber

    papers, liked, assistant = _draft_papers()
    store = Store(db_url)
    store.ingest("t", [liked])
    ann = Subscriber.model_validate({"email": "ann@example.org", "tags": ["decoding"]})
    at = datetime(2026, 11, 24, tzinfo=UTC)
    record_votes(store, [Vote("ann@example.org", liked.id, 1, liked.title, "0-1", at)])
    background = Background.of([liked, *papers])
    reader = Profile((Interest("decoding"),))
    # the run's cache holds the semantic extra's vectors when the signal is on
    semantic = rank_readers(store, papers, [ann], [reader], background, MatchCache(None, Vectors()))
    terms = rank_readers(store, papers, [ann], [reader], background, MatchCache())
    assert assistant in [r.paper for r in semantic[0]]
    assert assistant not in [r.paper for r in terms[0]]
    why = next(r.why for r in semantic[0] if r.paper == assistant)
    assert why == f"added for your votes: like '{liked.title}' you liked"


def test_a_vote_while_the_database_is_locked_is_503_with_retry_after(
    db_url: str, monkeypatch, caplog
) -> None:
    """A click that cannot be stored says so (503, Retry-After, one log line, no
    traceback) and is not "Noted"; the reader can click again, and then it counts."""
    import logging
    import sqlite3

    from fastapi.testclient import TestClient

    from paperpost import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT", 0.3)  # the wait for the lock, shortened
    store = Store(db_url)
    store.ingest("test", [SPEC])
    ids = reader_ids(store, ["ann@example.org"])
    token = make_vote_token(
        KEY, VoteLink(ids["ann@example.org"], SPEC.id, _sent(store, "ann@example.org", 0, 1), LATER)
    )
    client = TestClient(
        create_app(Settings(database_url=db_url, secret_key=SecretStr(KEY))),
        raise_server_exceptions=False,
    )
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.WARNING, logger="paperpost.web"):
            busy = client.post(f"/vote/more/{token}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
    assert "try again" in busy.text and "Noted" not in busy.text
    (line,) = [r.getMessage() for r in caplog.records if r.name == "paperpost.web"]
    assert line.startswith("vote not recorded: ") and "is locked" in line
    assert _vote_count(store) == 0
    assert client.post(f"/vote/more/{token}").status_code == 200
    assert _vote_count(store) == 1
