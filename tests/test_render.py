from __future__ import annotations

import email
import email.errors
from datetime import date
from email import policy
from email.message import EmailMessage

import lxml.html
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FULL_TESTS
from paperpost import render
from paperpost.models import Paper
from paperpost.rank import Interest, Profile, Ranked, rank
from paperpost.render import HTML_LIMIT, Edition, Reader, Renderer, shorten
from paperpost.sanitize import http_url
from paperpost.unsubscribe import BadToken, make_address_token, make_token, read_token

EDITION = Edition(
    "paperpost <digest@example.org>", "secret", "https://pp.example.org", date(2026, 11, 25), 307
)
READER = Reader("Ann@Example.org", "Ann Example", ("agents", "reasoning"))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def ranked_for(papers, *tags: str, n: int = 10) -> list[Ranked]:
    return rank(papers, Profile(tuple(Interest(t) for t in tags), max_items=n))


@pytest.mark.parametrize("papers", ["corpus", "shared_papers"])
def test_digest_is_a_complete_message(renderer, papers, request) -> None:
    items = ranked_for(request.getfixturevalue(papers), "agents", "reasoning")
    assert len(items) == 10
    out = renderer.render(READER, items, EDITION, 0, 307)
    msg = parse(out.data)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in msg.iter_parts())
    assert msg["Subject"].startswith(f"{len(items)} new papers for you: ")
    assert msg["Message-ID"] == out.message_id and out.message_id.endswith("@example.org>")
    assert msg["To"] == "Ann Example <Ann@Example.org>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = make_address_token("secret", READER.email)  # READER has no reader id
    assert msg["List-Unsubscribe"] == (
        f"<https://pp.example.org/unsubscribe/{token}>, "
        f"<mailto:unsubscribe@example.org?subject=unsubscribe%20{token}>"
    )
    assert msg["List-Id"] and msg["Date"]
    doc = lxml.html.document_fromstring(html)
    cards = doc.find_class("card")
    assert len(cards) == len(items)
    for item, card in zip(items, cards, strict=True):
        assert item.paper.title in card.text_content()
        assert item.why in card.text_content()
        assert card.get("style")  # inlined
    assert doc.find_class("preheader")[0].text_content().startswith(f"{len(items)} new papers")
    assert "Unsubscribe" in html and token in html
    for item in items:
        assert item.paper.title in text and item.why in text
    assert f"Unsubscribe: https://pp.example.org/unsubscribe/{token}" in text


def test_a_run_readers_unsubscribe_links_name_the_reader_id_not_the_address(
    renderer, corpus
) -> None:
    """ATTACK6 #11. Before: every digest's List-Unsubscribe (web and mailto) and footer link
    carried base64url(address), readable by anyone who saw the link (a proxy's access log, a
    link-rewriting scanner, a forwarded digest). A reader of a run (who has a reader id, as
    vote links use) gets ``r.<id>.<tag>``; the address appears only in To:."""
    import base64

    reader = Reader("Ann@Example.org", "Ann Example", ("agents",), reader_id="kVE_3u7wX9miuTGs")
    out = renderer.render(reader, ranked_for(corpus, "agents"), EDITION, 0, 307)
    msg = parse(out.data)
    token = make_token("secret", "kVE_3u7wX9miuTGs")
    assert msg["List-Unsubscribe"] == (
        f"<https://pp.example.org/unsubscribe/{token}>, "
        f"<mailto:unsubscribe@example.org?subject=unsubscribe%20{token}>"
    )
    encoded = base64.urlsafe_b64encode(b"ann@example.org").rstrip(b"=")
    assert encoded[:12] not in out.data and f"/unsubscribe/{token}".encode() in out.data
    assert read_token("secret", token, {"kVE_3u7wX9miuTGs": "ann@example.org"}.get) == (
        "ann@example.org"
    )


def test_message_id_is_deterministic_per_digest_and_subscriber(renderer, corpus) -> None:
    items = ranked_for(corpus, "agents")
    a = renderer.render(READER, items, EDITION, 0, 10)
    b = renderer.render(READER, items, EDITION, 0, 10)
    c = renderer.render(READER, items, EDITION, 0, 11)
    assert a.message_id == b.message_id != c.message_id


def test_fast_inlining_matches_premailer_on_every_element(renderer, corpus) -> None:
    for tags in (("agents",), ("text-to-speech", "diffusion"), ("bayesian-inference",)):
        items = ranked_for(corpus, *tags)
        context = renderer.context(READER, items, EDITION, "https://x.example/u")
        naive = lxml.html.document_fromstring(renderer.premailer(renderer.html_unstyled(context)))
        fast = lxml.html.document_fromstring(renderer.html(context))
        a = [(e.tag, dict(e.attrib), e.text) for e in naive.iter() if isinstance(e.tag, str)]
        b = [(e.tag, dict(e.attrib), e.text) for e in fast.iter() if isinstance(e.tag, str)]
        assert a == b


def test_untrusted_titles_are_escaped_and_links_are_http_only(renderer) -> None:
    evil = Paper(
        title="<script>alert(1)</script> Agents\r\nBcc: victim@example.org",
        abstract="An agent <img src=x onerror=alert(1)> paper about LLM agents and tool use.",
        github_repo="javascript:alert(1)",
        project_page="https://ok.example.org/page",
        arxiv_id="2611.00001",
    )
    items = rank([evil], Profile((Interest("agents"),)))
    out = renderer.render(READER, items, EDITION, 0, 1)
    msg = parse(out.data)
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert msg["Bcc"] is None
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    doc = lxml.html.document_fromstring(html)
    hrefs = [a.get("href") for a in doc.iter("a")]
    assert hrefs and all(h.startswith(("https://", "http://", "mailto:")) for h in hrefs)
    assert "https://ok.example.org/page" in hrefs and not any("javascript" in h for h in hrefs)


def test_large_digests_stay_under_gmail_clipping(renderer, corpus) -> None:
    items = ranked_for(corpus, "llm", "reasoning", "agents", "diffusion", n=100)
    assert len(items) == 100
    sizes = {}
    for n in (10, 25, 50, 100):
        out = renderer.render(READER, items[:n], EDITION, 0, 307)
        html = parse(out.data).get_body(("html",)).get_content()
        sizes[n] = len(html.encode())
        assert sizes[n] <= HTML_LIMIT
        assert "Unsubscribe" in html
    assert (
        "more matching papers"
        in parse(renderer.render(READER, items, EDITION, 0, 307).data)
        .get_body(("html",))
        .get_content()
    )


def test_text_only_readers_get_a_single_text_part(renderer, corpus) -> None:
    reader = Reader("t@example.org", None, ("agents",), text_only=True)
    msg = parse(renderer.render(reader, ranked_for(corpus, "agents"), EDITION, 0, 5).data)
    assert msg.get_content_type() == "text/plain"


def test_helpers() -> None:
    assert http_url("javascript:alert(1)") is None
    assert http_url("https://a.example/x") == "https://a.example/x"
    assert http_url('https://a.example/"onmouseover=x') is None
    long = "word " * 200
    short = shorten(long, 450)
    assert len(short) <= 451 and short.endswith("…") and not short.endswith(" …")


IDS = {"kVE_3u7wX9miuTGs": "ann@example.org"}.get  # reader id -> address, as the store has it


def test_unsubscribe_tokens_round_trip_and_reject_tampering() -> None:
    token = make_token("k", "kVE_3u7wX9miuTGs")
    assert token.startswith("r.kVE_3u7wX9miuTGs.") and read_token("k", token, IDS) == (
        "ann@example.org"
    )
    old = make_address_token("k", "Ann@Example.org")  # links in digests sent before session 6
    assert read_token("k", old, IDS) == "ann@example.org"
    for each in (token, old):
        with pytest.raises(BadToken, match="bad signature"):
            read_token("other-key", each, IDS)
    tag = token.rsplit(".", 1)[1]
    for forged in (
        f"r.xVE_3u7wX9miuTGs.{tag}",
        make_address_token("k", "bob@example.org").split(".")[0] + "." + old.split(".")[1],
    ):
        with pytest.raises(BadToken, match="bad signature"):
            read_token("k", forged, IDS)
    with pytest.raises(BadToken, match="malformed"):
        read_token("k", "garbage", IDS)
    with pytest.raises(BadToken, match="no record of"):  # signed, but not a reader of ours
        read_token("k", make_token("k", "gone-reader"), IDS)


@given(
    text=st.text(max_size=200)
    | st.builds("{}.{}".format, st.text(max_size=60), st.text(max_size=30))
    | st.from_regex(r"[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_=-]{0,30}", fullmatch=True)
    | st.from_regex(r"r\.[A-Za-z0-9_-]{0,20}\.[A-Za-z0-9_=-]{0,30}", fullmatch=True),
    address=st.emails() | st.text(min_size=1, max_size=80),
    reader_id=st.from_regex(r"[A-Za-z0-9_-]{16}", fullmatch=True),
)
def test_any_unsubscribe_token_reads_as_the_signed_address_or_bad_token(
    text: str, address: str, reader_id: str
) -> None:
    """The web endpoint, mailto unsubscribes and `paperpost unsubscribe` read tokens from
    anyone's URL or mail: a string nobody signed (a 128-bit tag) never reads, in either
    form; a reader token names the reader's id, never the address (ATTACK6 #11)."""
    ids = {reader_id: address.lower()}.get
    with pytest.raises(BadToken):
        read_token("k", text, ids)
    token = make_token("k", reader_id)
    assert read_token("k", token, ids) == address.lower()
    assert read_token("k", " " + token + "\n", ids) == address.lower()
    assert read_token("k", make_address_token("k", address), ids) == address.lower()


def test_fast_mime_parses_like_the_standard_library_build(renderer, corpus) -> None:
    from paperpost.render import POLICY

    items = ranked_for(corpus, "text-to-speech")
    out = renderer.render(READER, items, EDITION, 0, 9)
    ours = parse(out.data)
    web = f"https://pp.example.org/unsubscribe/{make_address_token('secret', READER.email)}"
    context = renderer.context(READER, items, EDITION, web)
    reference = EmailMessage(policy=POLICY)
    reference.set_content(renderer.text(context))
    reference.add_alternative(renderer.html(context), subtype="html")
    theirs = parse(reference.as_bytes())
    assert [p.get_content_type() for p in ours.iter_parts()] == ["text/plain", "text/html"]
    for mine, std in zip(ours.iter_parts(), theirs.iter_parts(), strict=True):
        assert mine.get_content_type() == std.get_content_type()
        assert mine.get_content_charset() == "utf-8"
        assert mine.get_content().replace("\r\n", "\n") == std.get_content().replace("\r\n", "\n")
    assert max(len(line) for line in out.data.split(b"\r\n")) <= 998


def test_premailer_runs_offline_keeps_important_and_is_quiet(renderer, capfd, caplog) -> None:
    from paperpost.render import sample_context

    html = renderer.premailer(renderer.html_unstyled(sample_context()))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.levelname in {"WARNING", "ERROR"}]
    assert "@media only screen and (max-width: 620px)" in html
    assert "padding: 6px 8px !important" in html or "padding:6px 8px !important" in html
    assert "prefers-color-scheme: dark" in html


# --- fast paths: the same bytes as the standard library's ---------------------------------

_HEADER_TEXT = st.text(
    alphabet=st.sampled_from(list("aZ09 .,;:!?=\"'()<>@[]\\-_~#|{}…é\t")), max_size=60
)


def _reference_headers(name: str, email_address: str, subject: str) -> bytes:
    from email.headerregistry import Address

    from paperpost.render import POLICY

    message = EmailMessage(policy=POLICY)
    message["To"] = Address(display_name=name, addr_spec=email_address)
    message["Subject"] = subject
    return b"".join(POLICY.fold_binary(k, v) for k, v in message.items())


@settings(max_examples=300, deadline=None)
@given(
    name=_HEADER_TEXT,
    local=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,15}", fullmatch=True),
    subject=_HEADER_TEXT,
)
def test_reader_headers_match_the_email_package(name: str, local: str, subject: str) -> None:
    from paperpost.render import reader_headers

    address = f"{local}@example.org"
    try:
        reference = _reference_headers(name, address, subject)
    except (ValueError, IndexError, email.errors.HeaderParseError):
        return  # names the email package refuses; the fast path never sees them either
    assert reader_headers(name, address, subject) == reference


def test_reader_headers_fast_path_is_taken_for_plain_ascii() -> None:
    from paperpost.render import reader_headers

    fast = reader_headers("Ann Example", "ann@example.org", "3 new papers for you: Agents")
    assert fast == _reference_headers(
        "Ann Example", "ann@example.org", "3 new papers for you: Agents"
    )
    assert fast == b"To: Ann Example <ann@example.org>\r\nSubject: 3 new papers for you: Agents\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"ab =.\t\r\n…é", "x" * 40]), max_size=100).map("".join))
def test_line_cached_quoted_printable_equals_whole_text_encoding(text: str) -> None:
    import binascii

    from paperpost.render import _qp

    crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
    if not crlf.endswith("\r\n"):
        crlf += "\r\n"
    assert _qp(text) == binascii.b2a_qp(crlf.encode("utf-8"), istext=True)
    assert _qp(text) == _qp(text)  # second time from the cache


@settings(max_examples=25, deadline=None)
@given(
    title=st.text(min_size=1, max_size=120),
    abstract=st.text(max_size=600),
    summary=st.none() | st.text(max_size=80),
    organization=st.none() | st.text(max_size=40),
    repo=st.sampled_from([None, "https://github.com/a/b?x=1&y=<2>", "javascript:alert(1)"]),
    why=st.text(max_size=80),
)
def test_card_parts_made_once_per_paper_render_as_the_templates_do_in_place(
    renderer, title: str, abstract: str, summary, organization, repo, why: str
) -> None:
    """A paper's card parts (title to meta, links; HTML and text) are rendered once per
    paper from the templates' blocks and reused: every digest reads exactly as when the
    templates render those parts in place, card by card."""
    paper = Paper(
        title,
        abstract,
        arxiv_id="2401.00001",
        upvotes=2,
        organization=organization,
        ai_summary=summary,
        github_repo=repo,
    )
    items = [Ranked(paper, 0.5, ("agents",), why), Ranked(Paper("Plain", "Short."), 0.4, (), "")]
    context = renderer.context(READER, items, EDITION, "https://pp.example.org/u/x", "0-2")
    in_place = {**context, "cards": [render.card(item) for item in items]}
    assert all(c.paper_html is None for c in in_place["cards"])  # type: ignore[attr-defined]
    assert renderer.html(context) == renderer.html(in_place)
    assert renderer.text(context) == renderer.text(in_place)


def test_the_text_part_has_no_hidden_break_hints(renderer) -> None:
    """The HTML part breaks a runaway name with zero-width spaces so it wraps; the text
    part shows it as written, so it can be copied and searched for (attack5 finding 7)."""
    name = "DeepSeek-Coder-V2-Lite-Instruct-0724-GGUF-Q4_K_M"
    org = "an-organisation-with-an-extremely-long-unbroken-name"
    paper = Paper(
        f"{name}: agents for code",
        "We study LLM agents that write code with tools.",
        ai_summary=f"{name} agents write code.",
        organization=org,
    )
    items = ranked_for([paper], "agents")
    assert items
    msg = parse(renderer.render(READER, items, EDITION, 0, 1).data)
    text, html = (part.get_content() for part in msg.iter_parts())
    assert "\u200b" in html  # the HTML part still wraps it
    assert "\u200b" not in text
    assert f"{name}: agents for code" in text and f"TL;DR: {name} agents" in text
    assert org in text


def test_an_at_sign_in_the_senders_name_does_not_move_our_domain(renderer, corpus) -> None:
    """ATTACK6 #8: with PAPERPOST_SENDER='"ML@ACME-Lab.com digest" <digest@news.example.org>'
    the domain came from the first `@` anywhere in the value: Message-IDs, List-Id, the
    unsubscribe mailto and the VERP return path were @ACME-Lab.com, so bounces and mailto
    unsubscribes went to a domain the operator does not own."""
    from pydantic import SecretStr

    from paperpost.settings import Settings
    from paperpost.verp import envelope_sender

    settings = Settings(
        sender='"ML@ACME-Lab.com digest" <digest@news.example.org>',
        secret_key=SecretStr("render-test-key-0123456789"),
    )
    edition = Edition(settings.sender, "secret", None, date(2026, 11, 25), 3)
    out = renderer.render(READER, ranked_for(corpus, "agents"), edition, 0, 3)
    msg = parse(out.data)
    assert msg["From"].addresses[0].addr_spec == "digest@news.example.org"
    assert msg["Message-ID"].endswith("@news.example.org>")
    assert msg["List-Id"] == "paperpost digest <digest.news.example.org>"
    assert "<mailto:unsubscribe@news.example.org?subject=" in msg["List-Unsubscribe"]
    assert envelope_sender(settings, out.message_id).endswith("@news.example.org")
    assert "acme" not in out.data.decode().lower().replace('"ml@acme-lab.com digest"', "")


@settings(max_examples=300 if FULL_TESTS else 60, deadline=None)
@given(
    name=st.text(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=30),
    domain=st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(org|example|co\.uk)", fullmatch=True),
)
def test_the_sender_domain_is_the_addresss_whatever_the_name(name: str, domain: str) -> None:
    """Hypothesis: for any sender the settings accept, the domain paperpost uses is the
    domain of the address, never something in the display name."""
    from email.headerregistry import Address

    from paperpost.errors import ConfigError
    from paperpost.settings import Settings

    value = str(Address(display_name=name, username="digest", domain=domain))
    try:
        accepted = Settings(sender=value).sender
    except ConfigError:
        return
    assert render.sender_domain(accepted) == domain
