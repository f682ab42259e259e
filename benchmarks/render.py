"""Digests per second: render + inline + MIME, fast path vs the naive path, in one run.

    python benchmarks/render.py [--subscribers 10000] [--naive 300]

Fast path: what paperpost does (Jinja render, premailer's result applied by one regex pass,
cached cards, MIME parts encoded by binascii). Naive path: render the whole document and run
premailer on it for every recipient, then build the message with EmailMessage's
set_content/add_alternative. The naive path runs on the first --naive subscribers only (it
is ~10 ms a digest); rates are per digest. Ranking is done beforehand and not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rank_quality import shared_papers
from rank_speed import profiles

from common import peak_rss_mb, report
from paperpost.rank import rank_many
from paperpost.render import POLICY, Edition, Reader, Renderer

EDITION = Edition(
    "paperpost <digest@example.org>", "key", "https://pp.example.org", date(2026, 11, 25), 300
)


def naive(renderer: Renderer, reader: Reader, items, lo: int, hi: int) -> bytes:
    context = renderer.context(reader, items, EDITION, "https://pp.example.org/unsubscribe/x")
    html = renderer.premailer(renderer.html_unstyled(context))
    message = EmailMessage(policy=POLICY)
    message["From"] = EDITION.sender
    message["To"] = reader.email
    message["Subject"] = str(context["subject"])
    message.set_content(renderer.text(context))
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--naive", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    papers = shared_papers()[:300]
    people = profiles(args.subscribers)
    rankings = rank_many(papers, people)
    readers = [
        Reader(
            f"reader{i}@example.org",
            f"Reader {i}",
            tuple(x.tag for x in p.interests),
        )
        for i, p in enumerate(people)
    ]
    jobs = [(r, items) for r, items in zip(readers, rankings, strict=True) if items]
    renderer = Renderer()
    renderer.render(*jobs[0], EDITION, 0, 300)  # learn the inline styles once, untimed

    fast_runs, naive_runs = [], []
    sizes = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for reader, items in jobs:
            sizes.append(len(renderer.render(reader, items, EDITION, 0, 300).data))
        fast_runs.append(len(jobs) / (time.perf_counter() - start))
        start = time.perf_counter()
        for reader, items in jobs[: args.naive]:
            naive(renderer, reader, items, 0, 300)
        naive_runs.append(min(args.naive, len(jobs)) / (time.perf_counter() - start))
    fast, slow = statistics.median(fast_runs), statistics.median(naive_runs)
    rows = [
        ["fast (paperpost)", len(jobs), fast, 1000 / fast],
        ["naive (premailer per digest)", min(args.naive, len(jobs)), slow, 1000 / slow],
        ["ratio fast/naive", "", fast / slow, ""],
    ]
    report(
        "render",
        ["path", "digests", "digests/s (median)", "ms/digest"],
        rows,
        {
            "fast_runs": fast_runs,
            "naive_runs": naive_runs,
            "median_message_bytes": statistics.median(sizes),
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
