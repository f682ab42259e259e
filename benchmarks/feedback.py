"""Reader feedback: a simulated reader study, ranking speed with votes, the vote endpoint.

    python benchmarks/feedback.py [study] [speed] [endpoint]     (default: all three)
    python benchmarks/feedback.py study --relevance FILE.yaml [--tags TAG[=WORD],...]
    python benchmarks/feedback.py endpoint --postgres postgresql+psycopg://.../scratch_db

study     For each judged tag a reader starts from a deliberately vague one-word tag. With
          no flags: the tags of data/relevance.yaml and the words in VAGUE below (fixed
          before any measurement), split into DEV tags (the constants of paperpost/profile.py
          were chosen on them) and HELD-OUT tags (never tuned on). With --relevance, any
          file in the same format (tag -> grade -> titles of ../shared papers) and its tags
          (or those --tags names); a tag's vague word is the one after "=", else the tag's
          word most papers of ../shared use (a one-word tag is its own vague word).
          The papers of ../shared arrive day by day in the order of the dumps (dumps/ then
          hf_api/, each day only what earlier days had not shown). On the first VOTE_DAYS
          days the reader votes on their top 5: "more" on papers judged relevant (grade > 0),
          "fewer" on papers judged 0, until their budget of 0, 3, 5 or 10 votes is spent.
          NDCG@10 is then measured on the later days' papers ranked together, against the
          same reader with no feedback (budget 0). Prints the table per tag and the means.
speed     10,000 readers x 300 papers, each reader with 1-4 tags and 20 votes on papers of a
          2,000-paper history, in paired rounds: ranking with tags only, then with tags and
          votes (profiles built + ranking).
endpoint  `paperpost web` (uvicorn) on 127.0.0.1 with a fresh SQLite file (or, with
          --postgres, the given PostgreSQL database, whose tables are dropped and made
          afresh): 1,000 distinct votes from 50 concurrent clients, each recorded exactly
          once; then tampered, expired, cross-address and never-sent tokens, each expected to
          get 400 and record nothing.
Writes results/feedback_*.json.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rank_quality import SHARED, judgments, shared_papers
from rank_speed import profiles as tag_profiles

from common import report
from paperpost.dumps import parse_dump
from paperpost.models import Paper
from paperpost.profile import Taste, nudge
from paperpost.rank import STOPWORDS, Background, Interest, Profile, rank_many, tokens
from paperpost.synthetic import papers as synthetic_papers

# One broad word per judged tag, chosen before measuring: none of them names the tag's
# own topic in the vocabulary.
VAGUE = {
    "speculative-decoding": "decoding",
    "text-to-speech": "speech",
    "diffusion": "generation",
    "mixture-of-experts": "experts",
    "bayesian-inference": "probabilistic",
    "agents": "tools",
    "quantization": "efficient",
    "llm-inference": "inference",
    "reasoning": "thinking",
    "retrieval": "knowledge",
    "rlhf": "feedback",
    "robotics": "control",
    "long-context": "context",
    "video-generation": "video",
}
DEV = list(VAGUE)[:7]
HELD_OUT = list(VAGUE)[7:]
BUDGETS = (0, 3, 5, 10)
VOTE_DAYS = 3
TOP = 5
K = 10


def days() -> list[tuple[str, list[Paper]]]:
    """The shared papers as they arrive: each file in order, only what is new that day."""
    seen: set[str] = set()
    out = []
    files = sorted((SHARED / "dumps").glob("*.txt")) + sorted((SHARED / "hf_api").glob("*.json"))
    for path in files:
        parsed = parse_dump(path.read_bytes(), str(path), date(2026, 11, 25)).papers
        new = []
        for paper in parsed:
            if paper.key not in seen:
                seen.add(paper.key)
                new.append(paper)
        out.append((path.name, new))
    return out


def ndcg(ranked: list[str], rel: dict[str, int], pool: set[str]) -> float:
    dcg = sum((2 ** rel.get(pid, 0) - 1) / math.log2(i + 2) for i, pid in enumerate(ranked[:K]))
    ideal = sorted((g for pid, g in rel.items() if pid in pool), reverse=True)[:K]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else float("nan")


def reader(vague: str, budget: int, arrivals, truth: dict[str, int]) -> tuple[float, int]:
    """One simulated reader of tag ``vague``: (NDCG@10 on the later days, votes cast).

    As in the pipeline, word statistics (the ranker's and the profile's) come from every
    paper seen so far, and judgments name papers by their key (the folded title).
    """
    profile = Profile((Interest(vague),), max_items=K)
    liked: list[Paper] = []
    disliked: list[Paper] = []
    seen: list[Paper] = []
    for _, papers in arrivals[:VOTE_DAYS]:
        seen += papers
        history = Background.of(seen)
        taste = Taste(tuple(liked), tuple(disliked))
        ranked = rank_many(papers, [profile], nudge(papers, [taste], history), history)
        for item in ranked[0][:TOP]:
            if len(liked) + len(disliked) >= budget:
                break
            if truth.get(item.paper.key, 0) > 0:
                liked.append(item.paper)
            else:
                disliked.append(item.paper)
    later = [p for _, papers in arrivals[VOTE_DAYS:] for p in papers]
    taste = Taste(tuple(liked), tuple(disliked))
    history = Background.of(seen + later)
    ranked = rank_many(later, [profile], nudge(later, [taste], history), history)
    keys = [item.paper.key for item in ranked[0]]
    return ndcg(keys, truth, {p.key for p in later}), len(liked) + len(disliked)


def broadest_word(tag: str, papers: list[Paper]) -> str:
    """The word of ``tag`` that most papers use (its vague start when none is given)."""
    words = [w for w in re.findall(r"[a-z0-9]+", tag.lower()) if w not in STOPWORDS]
    background = Background.of(papers)
    return max(words, key=lambda w: (background.df.get(tokens(w)[0], 0), -words.index(w)))


def study(relevance: Path | None = None, wanted: list[str] | None = None) -> None:
    arrivals = days()
    everything = shared_papers()
    truth = judgments(everything, str(relevance.resolve()) if relevance else "relevance.yaml")
    if relevance is None:
        vague, groups = dict(VAGUE), {"dev": DEV, "held-out": HELD_OUT}
    else:
        vague = {}
        for item in wanted or list(truth):
            tag, _, word = item.partition("=")
            if tag not in truth:
                raise SystemExit(f"{relevance}: no judgments for tag {tag!r}")
            vague[tag] = word or broadest_word(tag, everything)
        groups = {relevance.name: list(vague)}
    later = {p.key for _, papers in arrivals[VOTE_DAYS:] for p in papers}
    rows: list[list[object]] = []
    results: dict[str, dict[int, float]] = {}
    skipped = []
    for group, tags in groups.items():
        for tag in tags:
            if not any(truth[tag].get(pid, 0) > 0 for pid in later):
                skipped.append(tag)  # nothing relevant arrives later: NDCG undefined
                continue
            results[tag] = {}
            cast = []
            for budget in BUDGETS:
                score, votes = reader(vague[tag], budget, arrivals, truth[tag])
                results[tag][budget] = score
                cast.append(votes)
            scores = [results[tag][b] for b in BUDGETS]
            votes_cast = "/".join(map(str, cast[1:]))
            rows.append([tag, group, vague[tag], *scores, scores[2] - scores[0], votes_cast])
    for group, tags in groups.items():
        chosen = [t for t in tags if t in results]
        if not chosen:
            continue
        means = [statistics.fmean(results[t][b] for t in chosen) for b in BUDGETS]
        worse = sum(1 for t in chosen if any(results[t][b] < results[t][0] - 1e-9 for b in BUDGETS))
        delta = means[2] - means[0]
        rows.append([f"MEAN {group}", f"{len(chosen)} tags", f"{worse} worse", *means, delta, ""])
    headers = ["tag", "set", "vague tag", *(f"nDCG@10 {b} votes" for b in BUDGETS)]
    headers += ["delta@5", "votes cast (3/5/10)"]
    if skipped:
        print("skipped (nothing judged relevant arrives on the later days):", ", ".join(skipped))
    report(
        "feedback_study" + (f"_{relevance.stem}" if relevance else ""),
        headers,
        rows,
        {
            "vote_days": VOTE_DAYS,
            "top": TOP,
            "k": K,
            "days": [name for name, _ in arrivals],
            "relevance": str(relevance or "data/relevance.yaml"),
            "vague": vague,
            "skipped": skipped,
        },
    )


def speed(readers: int = 10_000, count: int = 300, votes: int = 20, repeat: int = 5) -> None:
    papers = shared_papers()[:count]
    old = synthetic_papers(2_000, seed=7, prefix="history ")
    history = Background.of(old + papers)
    rng = random.Random(3)
    people = tag_profiles(readers)
    tastes = []
    for _ in range(readers):
        picked = rng.sample(old, votes)
        split = rng.randint(votes // 2, votes)
        tastes.append(Taste(tuple(picked[:split]), tuple(picked[split:])))
    rank_many(papers, people, nudge(papers, tastes, history), history)  # warm the caches
    load_before = os.getloadavg()[0]
    plain, with_votes, build = [], [], []  # (wall, CPU) seconds per round
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        rank_many(papers, people, background=history)
        plain.append((time.perf_counter() - wall, time.process_time() - cpu))
        wall, cpu = time.perf_counter(), time.process_time()
        taught = nudge(papers, tastes, history)
        build.append((time.perf_counter() - wall, time.process_time() - cpu))
        rank_many(papers, people, taught, history)
        with_votes.append((time.perf_counter() - wall, time.process_time() - cpu))
    load = os.getloadavg()[0]

    def median(runs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(run[i] for run in runs)

    ratios = [t[1] / p[1] for t, p in zip(with_votes, plain, strict=True)]
    rows = [
        ["tags only", readers, len(papers), 0, median(plain, 0), median(plain, 1)],
        [
            "tags + votes: profiles built",
            readers,
            len(papers),
            votes,
            *map(median, [build] * 2, (0, 1)),
        ],
        [
            "tags + votes: total",
            readers,
            len(papers),
            votes,
            *map(median, [with_votes] * 2, (0, 1)),
        ],
        [
            "ratio total / tags only, CPU (median of paired rounds)",
            "",
            "",
            "",
            "",
            statistics.median(ratios),
        ],
        ["load average (1 min) before / after", "", "", "", load_before, load],
    ]
    report(
        "feedback_speed",
        ["ranking", "readers", "papers", "votes each", "median wall s", "median CPU s"],
        rows,
        {
            "plain": plain,
            "build": build,
            "total": with_votes,
            "ratios_cpu": ratios,
            "load_before": load_before,
            "load_after": load,
        },
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def endpoint(count: int = 1_000, clients: int = 50, postgres: str | None = None) -> None:
    from sqlalchemy import MetaData, func, select

    from paperpost import schema
    from paperpost.feedback import (
        VoteLink,
        export_votes,
        make_vote_token,
        paper_ref,
        reader_ids,
        vote_expiry,
    )
    from paperpost.store import Store, engine_for, feedback

    key = secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="paperpost-votes-"))
    url = postgres or f"sqlite:///{work / 'paperpost.db'}"
    if postgres:  # a scratch database: every table dropped, then migrated afresh
        tables = MetaData()
        tables.reflect(engine_for(postgres))
        tables.drop_all(engine_for(postgres))
        schema.upgrade(engine_for(postgres))
    store = Store(url)
    papers = synthetic_papers(100, seed=11, prefix="endpoint ")
    store.ingest("bench", papers)
    addresses = [f"reader{i}@example.org" for i in range(count // len(papers))]
    ids = reader_ids(store, addresses)
    for address in addresses:  # the ledger: each reader was sent digest 0-100
        store.claim(address, "0-100", 0, 100, f"<0-100.{address}>", 1)
        store.settle(address, "0-100", "sent", 100, None)
    expires = vote_expiry(datetime.now(UTC).date())
    tokens = [
        make_vote_token(key, VoteLink(ids[a], paper_ref(p), "0-100", expires))
        for a in addresses
        for p in papers
    ][:count]
    port = _free_port()
    env = {
        "PAPERPOST_DATABASE_URL": url,
        "PAPERPOST_SECRET_KEY": key,
        "PATH": str(Path(sys.executable).parent),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "paperpost", "web", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        local = threading.local()

        def post(path: str) -> tuple[int, float]:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            start = time.perf_counter()
            status = session.post(f"{base}{path}", timeout=60).status_code
            return status, time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda t: post(f"/vote/more/{t}"), tokens))
        elapsed = time.perf_counter() - start
        with store.engine.connect() as conn:
            recorded = conn.execute(select(func.count()).select_from(feedback)).scalar_one()
        # every vote again, now "fewer": still one row each, and the last vote counts
        with ThreadPoolExecutor(clients) as pool:
            again = list(pool.map(lambda t: post(f"/vote/fewer/{t}"), tokens))
        with store.engine.connect() as conn:
            after = conn.execute(
                select(func.count(), func.sum(feedback.c.vote)).select_from(feedback)
            ).one()

        good = tokens[0]
        body, tag = good.split(".")
        flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
        stranger = reader_ids(store, ["stranger@example.org"])["stranger@example.org"]
        bad = {
            "tampered": f"{flipped}.{tag}",
            "expired": make_vote_token(
                key, VoteLink(ids[addresses[0]], paper_ref(papers[0]), "0-1", 1)
            ),
            "cross-address (other reader id, same signature)": _swap_reader(good, stranger),
            "other key": make_vote_token(
                "not-the-key", VoteLink(stranger, paper_ref(papers[0]), "0-1", expires)
            ),
            "never sent (valid signature, no such digest in the ledger)": make_vote_token(
                key, VoteLink(stranger, paper_ref(papers[0]), "0-100", expires)
            ),
        }
        before_bad = list(export_votes(store))
        bad_status = {name: post(f"/vote/more/{t}")[0] for name, t in bad.items()}
        changed = len(set(export_votes(store)) ^ set(before_bad))
        with store.engine.connect() as conn:
            stranger_rows = conn.execute(
                select(func.count())
                .select_from(feedback)
                .where(feedback.c.address == "stranger@example.org")
            ).scalar_one()
    finally:
        server.terminate()
        server.wait(timeout=10)
    latencies = sorted(t for _, t in results)
    rows = [
        ["database", store.engine.dialect.name, ""],
        ["votes posted", count, f"{clients} concurrent clients"],
        ["HTTP 200", sum(1 for s, _ in results if s == 200), ""],
        ["rows recorded", recorded, "exactly once each" if recorded == count else "MISMATCH"],
        ["votes per second", round(count / elapsed), f"{elapsed:.2f} s in all"],
        [
            "median / p99 latency ms",
            round(statistics.median(latencies) * 1000),
            round(latencies[int(0.99 * len(latencies))] * 1000),
        ],
        ["same votes re-posted as 'fewer': 200", sum(1 for s, _ in again if s == 200), ""],
        ["rows after re-vote / sum of votes", after[0], after[1]],
    ]
    for name, status in bad_status.items():
        rows.append([f"{name}: HTTP status", status, ""])
    rows.append(
        ["rows added or changed by the bad tokens", changed, f"stranger rows {stranger_rows}"]
    )
    name = "feedback_endpoint" + ("_postgres" if postgres else "")
    report(name, ["measure", "value", "note"], rows, {})


def _swap_reader(token: str, reader_id: str) -> str:
    """The same token with another reader's id in its body (signature left as it was)."""
    from paperpost.feedback import _b64, _unb64

    body, tag = token.split(".")
    parts = _unb64(body).decode().split("\n")
    parts[0] = reader_id
    return f"{_b64(chr(10).join(parts).encode())}.{tag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", help="study, speed, endpoint (default: all three)")
    parser.add_argument("--relevance", type=Path, help="study: a judged YAML file")
    parser.add_argument("--tags", help="study: TAG[=VAGUE_WORD],... (default: every tag)")
    parser.add_argument("--rounds", type=int, default=5, help="speed: paired rounds")
    parser.add_argument("--postgres", help="endpoint: a scratch PostgreSQL URL (emptied)")
    args = parser.parse_args()
    unknown = set(args.parts) - {"study", "speed", "endpoint"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    for part in args.parts or ["study", "speed", "endpoint"]:
        if part == "study":
            study(args.relevance, args.tags.split(",") if args.tags else None)
        elif part == "speed":
            speed(repeat=args.rounds)
        else:
            endpoint(postgres=args.postgres)


if __name__ == "__main__":
    main()
