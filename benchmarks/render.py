"""Digests per second: paperpost's render vs the strongest simple baseline, paired rounds.

    python benchmarks/render.py [--digests 2000] [--rounds 3] [--premailer 100]

Real-size digests (the shared papers, synthetic readers, ~33 KB). Per round, in the same
order (A B A B ...):

- ``paperpost``: ``Renderer.render`` (Jinja with premailer's styles learned once, ASCII
  header fast path, line-cached quoted-printable);
- ``stdlib EmailMessage``: the same Jinja templates (styles learned once, no premailer per
  digest), the message built with ``EmailMessage`` (headers, ``set_content``,
  ``add_alternative``, ``as_bytes``): what a careful simple implementation does;
- ``premailer per digest`` (first ``--premailer`` digests only): the naive path.

Cold: the first digest in the process (templates compiled, premailer's result learned),
timed on its own. Ranking is done beforehand and not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import EDITION, jobs

from common import peak_rss_mb, report
from paperpost.render import POLICY, Reader, Renderer

UNSUBSCRIBE = "https://pp.example.org/unsubscribe/x"


def stdlib(renderer: Renderer, reader: Reader, items, premailer: bool = False) -> bytes:
    context = renderer.context(reader, items, EDITION, UNSUBSCRIBE)
    if premailer:
        html = renderer.premailer(renderer.html_unstyled(context))
    else:
        html = renderer.html(context)
    message = EmailMessage(policy=POLICY)
    message["From"] = EDITION.sender
    message["To"] = Address(display_name=reader.name or "", addr_spec=reader.email)
    message["Subject"] = str(context["subject"])
    message["List-Unsubscribe"] = f"<{UNSUBSCRIBE}>"
    message.set_content(renderer.text(context))
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--digests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--premailer", type=int, default=100)
    args = parser.parse_args()
    work = jobs(args.digests)
    renderer = Renderer()
    clock = time.perf_counter()
    first = renderer.render(*work[0], EDITION, 0, 300)
    cold = time.perf_counter() - clock

    variants = {
        "paperpost": lambda r, i: renderer.render(r, i, EDITION, 0, 300).data,
        "stdlib EmailMessage (no premailer)": lambda r, i: stdlib(renderer, r, i),
    }
    rates: dict[str, list[float]] = {name: [] for name in [*variants, "premailer per digest"]}
    sizes: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            out = [fn(r, i) for r, i in work]
            rates[name].append(len(work) / (time.perf_counter() - start))
            sizes[name] = statistics.median(len(x) for x in out)
        subset = work[: args.premailer]
        start = time.perf_counter()
        out = [stdlib(renderer, r, i, premailer=True) for r, i in subset]
        rates["premailer per digest"].append(len(subset) / (time.perf_counter() - start))
        sizes["premailer per digest"] = statistics.median(len(x) for x in out)
    rows = []
    for name, values in rates.items():
        median = statistics.median(values)
        rows.append(
            [name, median, 1000 / median, sizes[name] / 1024, ", ".join(f"{v:.0f}" for v in values)]
        )
    pairs = [
        a / b
        for a, b in zip(
            rates["paperpost"], rates["stdlib EmailMessage (no premailer)"], strict=True
        )
    ]
    rows.append(
        [
            "ratio paperpost ÷ stdlib",
            statistics.median(pairs),
            "",
            "",
            ", ".join(f"{p:.2f}" for p in pairs),
        ]
    )
    report(
        "render",
        ["path", "digests/s (median)", "ms/digest", "KB (median)", "per round"],
        rows,
        {
            "cold_first_digest_s": cold,
            "first_digest_bytes": len(first.data),
            "rates": rates,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    print(f"cold: first digest in the process {cold * 1000:.0f} ms (templates + premailer once)")


if __name__ == "__main__":
    main()
