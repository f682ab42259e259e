"""A run summary as markdown (Prefect artefact) and as rows (CLI table, table artefact)."""

from __future__ import annotations

from paperpost.pipeline import RunSummary


def summary_rows(summary: RunSummary) -> list[tuple[str, str]]:
    rows = [
        ("papers seen", str(summary.papers_seen)),
        ("papers new", str(summary.papers_new)),
        ("digests sent", str(summary.digests_sent)),
        ("digests skipped", str(summary.digests_skipped)),
        ("digests failed (permanent)", str(summary.digests_failed)),
        ("digests to retry", str(summary.digests_retry)),
        ("digests ambiguous", str(summary.digests_ambiguous)),
        ("invalid subscriber files", str(summary.invalid_subscriber_files)),
    ]
    if summary.deliveries_not_listed:
        unlisted = str(summary.deliveries_not_listed)
        rows.append(("deliveries not listed (sent or already sent; see the ledger)", unlisted))
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
    if summary.message:
        lines += [f"**{summary.message}**", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(summary)]
    lines += [
        "",
        "## Sources",
        "",
        "| source | status | papers | new | detail |",
        "|---|---|---|---|---|",
    ]
    for s in summary.sources:
        detail = (s.detail or "; ".join(s.warnings[:3])).replace("|", "\\|")
        lines.append(f"| `{s.source}` | {s.status} | {s.papers} | {s.new} | {detail} |")
    if summary.invalid_subscribers:
        lines += ["", "## Invalid subscriber files (skipped)", ""]
        lines += [f"- `{error}`" for error in summary.invalid_subscribers]
    problems = [d for d in summary.deliveries if d["status"] not in {"sent"}]
    if problems:
        lines += [
            "",
            "## Deliveries needing attention",
            "",
            "| address | status | detail |",
            "|---|---|---|",
        ]
        lines += [f"| {d['address']} | {d['status']} | {d['detail']} |" for d in problems]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary.stage_seconds.items()]
    return "\n".join(lines) + "\n"
