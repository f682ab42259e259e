"""A run summary as markdown (Prefect artefact) and as rows (CLI table, table artefact)."""

from __future__ import annotations

import re

from paperpost.delivery import NOT_ATTEMPTED
from paperpost.pipeline import RunSummary

# Characters that make markdown of third-party text (an SMTP reply, a source's error, a
# subscriber file's value): links, images, emphasis, code spans, HTML, table cells, headings
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>#+!|~])")  # ( ) are text without [ ]


def md(text: object) -> str:
    """Third-party text as markdown that shows it as written, on one line."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def summary_rows(summary: RunSummary) -> list[tuple[str, str]]:
    rows = [
        ("papers seen", str(summary.papers_seen)),
        ("papers new", str(summary.papers_new)),
        ("digests sent", str(summary.digests_sent)),
        ("digests skipped", str(summary.digests_skipped)),
        ("digests failed (permanent)", str(summary.digests_failed)),
        ("digests to retry", str(summary.digests_retry)),
        ("digests ambiguous", str(summary.digests_ambiguous)),
        ("digests deferred (domain refusing us; sent next run)", str(summary.digests_deferred)),
        ("invalid subscriber files", str(summary.invalid_subscriber_files)),
    ]
    if summary.digests_not_attempted:
        waiting = str(summary.digests_not_attempted)
        rows.append(("  to retry: not attempted after the pause (the next run sends)", waiting))
    if summary.deliveries_not_listed:
        unlisted = str(summary.deliveries_not_listed)
        rows.append(
            (
                "deliveries not listed (sent, already sent, deferred or not attempted; "
                "see the ledger)",
                unlisted,
            )
        )
    for domain, deferral in summary.deferred_domains.items():
        rows.append((f"  deferred: {domain}", f"{deferral['digests']}: {deferral['reason']}"))
    for reason, count in sorted(summary.skip_reasons.items()):
        rows.append((f"  skipped: {reason}", str(count)))
    counts = summary.bounces.get("counts")
    if isinstance(counts, dict):
        for kind, count in sorted(counts.items()):
            rows.append((f"bounce mailbox: {kind}", str(count)))
    unreadable = summary.bounces.get("unreadable")
    if isinstance(unreadable, list):
        rows += [("bounce mailbox: unreadable", str(problem)) for problem in unreadable[:10]]
    if summary.bounces.get("error"):
        rows.append(("bounce mailbox", f"not read: {summary.bounces['error']}"))
    return rows


def markdown(summary: RunSummary) -> str:
    lines = [f"# paperpost run {summary.run_id}: {summary.status}", ""]
    if summary.message:  # here the lists come after it
        lines += [f"**{md(summary.message.replace('listed above', 'listed below'))}**", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {md(name)} | {md(value)} |" for name, value in summary_rows(summary)]
    lines += [
        "",
        "## Sources",
        "",
        "| source | status | papers | new | detail |",
        "|---|---|---|---|---|",
    ]
    for s in summary.sources:
        detail = md(s.detail or "; ".join(s.warnings[:3]))
        lines.append(f"| {md(s.source)} | {md(s.status)} | {s.papers} | {s.new} | {detail} |")
    if summary.invalid_subscribers:
        lines += ["", "## Invalid subscriber files (skipped)", ""]
        lines += [f"- {md(error)}" for error in summary.invalid_subscribers]
    if summary.deferred_domains:
        lines += [
            "",
            "## Domains deferred to the next run",
            "",
            "| domain | digests | reason |",
            "|---|---|---|",
        ]
        lines += [
            f"| {md(domain)} | {d['digests']} | {md(d['reason'])} |"
            for domain, d in summary.deferred_domains.items()
        ]
    problems = [  # not attempted after a pause: a row of the table above counts them
        d
        for d in summary.deliveries
        if d["status"] not in {"sent", "deferred"}
        and not str(d["detail"]).startswith(NOT_ATTEMPTED)
    ]
    if problems:
        lines += [
            "",
            "## Deliveries needing attention",
            "",
            "| address | status | detail |",
            "|---|---|---|",
        ]
        lines += [
            f"| {md(d['address'])} | {md(d['status'])} | {md(d['detail'])} |" for d in problems
        ]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary.stage_seconds.items()]
    return "\n".join(lines) + "\n"
