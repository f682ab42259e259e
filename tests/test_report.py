from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from paperpost.pipeline import RunSummary, SourceReport
from paperpost.report import markdown

PHISH = (
    "550 5.1.1 <aaa> | **URGENT** [re-verify your paperpost account](https://evil.example/phish)"
    " ![x](https://evil.example/track.png) | `code` <img src=x> # head"
)


def rendered(summary: RunSummary) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown(summary))


def test_third_party_text_in_the_run_artefact_is_shown_not_obeyed() -> None:
    """ATTACK5 #8: an SMTP reply with `|`, a markdown link and an image went into the Prefect
    `digest-summary` artefact as markdown: the row split into extra cells, the UI showed a bold
    phishing link and fetched a remote image when the operator opened the run."""
    summary = RunSummary(
        run_id=1,
        status="finished",
        sources=[SourceReport("https://x.example/d](https://evil.example)", "failed", 0, 0, PHISH)],
        invalid_subscribers=[f"subs/a.yaml:3: tags: `{PHISH}`"],
        deliveries=[{"address": "aaa@aaa.example.org", "status": "failed", "detail": PHISH}],
        message="1 delivery failed permanently (listed above).",
    )
    html = rendered(summary)
    assert "<a " not in html and "<img" not in html and "<code>" not in html
    assert "<strong>" in html and html.count("<strong>") == 1  # the run's own message only
    assert "listed below" in html
    row = next(line for line in html.split("<tr>") if "aaa@aaa.example.org" in line)
    assert row.count("<td>") == 3  # address, status, detail: the reply's | split nothing
    assert "[re-verify your paperpost account](https://evil.example/phish)" in html


@given(st.text(max_size=80))
def test_any_reply_stays_in_its_cell_as_written(reply: str) -> None:
    summary = RunSummary(
        run_id=1, deliveries=[{"address": "a@b.example", "status": "failed", "detail": reply}]
    )
    html = rendered(summary)
    assert "<a " not in html and "<img" not in html
    row = next(line for line in html.split("<tr>") if "a@b.example" in line)
    assert row.count("<td>") == 3
