"""Hostile paper text in a real browser: markup, Outlook conditional comments and
runaway words in titles, summaries and abstracts change neither the digest's structure
nor its width (headless Chromium, as in test_browser)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import lxml.html
import pytest
from test_browser import frame_page, shoot_and_probe, working_chromium  # noqa: F401

from paperpost.models import Paper
from paperpost.rank import Ranked
from paperpost.render import Edition, Reader, Renderer

LONG = "W" * 3000
HOSTILE_TEXT = [
    "</style><style>*{display:none}</style>",
    "<!--[if mso]><table><tr><td><![endif]-->",
    "<![endif]--> --> <!-- hidden",
    "{{ 7*7 }} {% raw %}",
    "<img src=x onerror=alert(1)> &lt;b&gt;",
    "</title></head><body><script>alert(1)</script>",
    LONG,
    "https://example.org/" + "a" * 500,
]


def hostile_html(renderer: Renderer) -> str:
    items = [
        Ranked(
            Paper(
                f"Agents {text}",
                f"Abstract {text} agents.",
                arxiv_id=f"2611.{10000 + i}",
                ai_summary=f"TL;DR {text}",
                organization=f"Org {text}"[:200],
            ),
            1.0,
            ("agents", "q" * 80),
            f"agents, {'q' * 80}",
        )
        for i, text in enumerate(HOSTILE_TEXT)
    ]
    edition = Edition("paperpost <d@example.org>", "k", None, date(2026, 11, 25), len(items))
    # an 80-letter tag and a 64-letter address are valid in a subscriber file
    reader = Reader("a" * 64 + "@example.org", "Ann", ("agents", "q" * 80))
    context = renderer.context(reader, items, edition, "https://pp.example.org/unsubscribe/t")
    return renderer.html(context)


def test_hostile_text_stays_text() -> None:
    renderer = Renderer()
    html = hostile_html(renderer)
    plain = renderer.html(
        renderer.context(
            Reader("ann@example.org", "Ann", ("agents",)),
            [],
            Edition("paperpost <d@example.org>", "k", None, date(2026, 11, 25), 0),
            "https://pp.example.org/unsubscribe/t",
        )
    )
    doc, empty = lxml.html.document_fromstring(html), lxml.html.document_fromstring(plain)
    comments = [c.text for c in doc.iter(lxml.etree.Comment)]
    assert comments == [c.text for c in empty.iter(lxml.etree.Comment)]  # the template's own
    for tag in ("style", "script", "img", "title"):
        assert len(doc.findall(f".//{tag}")) == len(empty.findall(f".//{tag}")), tag
    assert "{{ 7*7 }}" in html and "49" not in html


@pytest.mark.browser
@pytest.mark.parametrize("width", [600, 375])
@pytest.mark.usefixtures("working_chromium")
def test_runaway_words_do_not_widen_the_digest(tmp_path: Path, width: int) -> None:
    """Before: a 3,000-letter word in a title widened the digest to 56,296 px (the card
    table grows to fit it, in Gmail and Outlook alike)."""
    page = tmp_path / "hostile.html"
    page.write_text(frame_page(hostile_html(Renderer()), width), encoding="utf-8")
    flags = [f"--window-size={max(width, 500)},1400"]
    result = shoot_and_probe(page, flags, tmp_path / f"hostile-{width}.png", tmp_path)
    assert result["innerWidth"] == width
    assert result["scrollWidth"] <= width, "horizontal overflow"
