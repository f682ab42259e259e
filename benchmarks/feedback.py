"""Reader feedback: a simulated reader study, ranking speed with votes, the vote endpoint.

    python benchmarks/feedback.py [study] [speed] [endpoint]     (default: all three)

study     For each judged tag of data/relevance.yaml a reader starts from a deliberately
          vague one-word tag (VAGUE below, fixed before any measurement). The papers of
          ../shared arrive day by day in the order of the dumps (dumps/ then hf_api/, each
          day only what earlier days had not shown). On the first VOTE_DAYS days the reader
          votes on their top 5: "more" on papers judged relevant (grade > 0), "fewer" on
          papers judged 0, until their budget of 0, 3, 5 or 10 votes is spent. NDCG@10 is then
          measured on the later days' papers ranked together, against the same reader with no
          feedback (budget 0). Tags are split: DEV tags were used to choose the constants in
          paperpost/profile.py, BLIND tags were not tuned on.
speed     10,000 readers x 300 papers, each reader with 1-4 tags and 20 votes on papers of a
          2,000-paper history: building the profiles + ranking, vs ranking without feedback.
endpoint  `paperpost web` (uvicorn) on 127.0.0.1 with a SQLite file: 1,000 distinct votes
          from 50 concurrent clients, each recorded exactly once; then tampered, expired and
          cross-address tokens, each expected to get 400 and record nothing.
Writes results/feedback_*.json.
"""

from __future__ import annotations

import math
import random
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
from paperpost.rank import Background, Interest, Profile, rank_many
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
BLIND = list(VAGUE)[7:]
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


def reader(tag: str, budget: int, arrivals, truth) -> tuple[float, int]:
    """One simulated reader: (NDCG@10 on the later days, votes cast).

    As in the pipeline, word statistics (the ranker's and the profile's) come from every
    paper seen so far, and judgments name papers by their key (the folded title).
    """
    profile = Profile((Interest(VAGUE[tag]),), max_items=K)
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
            if truth[tag].get(item.paper.key, 0) > 0:
                liked.append(item.paper)
            else:
                disliked.append(item.paper)
    later = [p for _, papers in arrivals[VOTE_DAYS:] for p in papers]
    taste = Taste(tuple(liked), tuple(disliked))
    history = Background.of(seen + later)
    ranked = rank_many(later, [profile], nudge(later, [taste], history), history)
    keys = [item.paper.key for item in ranked[0]]
    return ndcg(keys, truth[tag], {p.key for p in later}), len(liked) + len(disliked)


def study() -> None:
    arrivals = days()
    truth = judgments(shared_papers())
    later = {p.key for _, papers in arrivals[VOTE_DAYS:] for p in papers}
    rows: list[list[object]] = []
    results: dict[str, dict[int, float]] = {}
    for tag in VAGUE:
        if not any(truth[tag].get(pid, 0) > 0 for pid in later):
            continue  # nothing relevant arrives later: NDCG undefined
        results[tag] = {}
        cast = []
        for budget in BUDGETS:
            score, votes = reader(tag, budget, arrivals, truth)
            results[tag][budget] = score
            cast.append(votes)
        base = results[tag][0]
        group = "dev" if tag in DEV else "blind"
        scores = [results[tag][b] for b in BUDGETS]
        votes_cast = "/".join(map(str, cast[1:]))
        rows.append([tag, group, VAGUE[tag], *scores, results[tag][5] - base, votes_cast])
    for name, tags in (("MEAN dev", DEV), ("MEAN blind", BLIND), ("MEAN all", list(VAGUE))):
        chosen = [t for t in tags if t in results]
        means = [statistics.fmean(results[t][b] for t in chosen) for b in BUDGETS]
        worse = sum(1 for t in chosen if any(results[t][b] < results[t][0] - 1e-9 for b in BUDGETS))
        rows.append(
            [name, f"{len(chosen)} tags", f"{worse} worse", *means, means[2] - means[0], ""]
        )
    headers = ["tag", "set", "vague tag", *(f"nDCG@10 {b} votes" for b in BUDGETS)]
    headers += ["delta@5", "votes cast (3/5/10)"]
    report(
        "feedback_study",
        headers,
        rows,
        {"vote_days": VOTE_DAYS, "top": TOP, "k": K, "days": [name for name, _ in arrivals]},
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
    plain, with_votes, build = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        rank_many(papers, people, background=history)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        taught = nudge(papers, tastes, history)
        build.append(time.perf_counter() - start)
        rank_many(papers, people, taught, history)
        with_votes.append(time.perf_counter() - start)
    ratio = statistics.median(t / p for t, p in zip(with_votes, plain, strict=True))
    rows = [
        ["tags only", readers, len(papers), 0, statistics.median(plain), 1.0],
        ["tags + votes: profiles built", readers, len(papers), votes, statistics.median(build), ""],
        ["tags + votes: total", readers, len(papers), votes, statistics.median(with_votes), ratio],
    ]
    report(
        "feedback_speed",
        ["ranking", "readers", "papers", "votes each", "median s", "ratio (paired rounds)"],
        rows,
        {"plain": plain, "build": build, "total": with_votes},
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def endpoint(count: int = 1_000, clients: int = 50) -> None:
    from sqlalchemy import func, select

    from paperpost.feedback import (
        VoteLink,
        export_votes,
        make_vote_token,
        paper_ref,
        reader_ids,
        vote_expiry,
    )
    from paperpost.store import Store, feedback

    key = secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="paperpost-votes-"))
    url = f"sqlite:///{work / 'paperpost.db'}"
    store = Store(url)
    papers = synthetic_papers(100, seed=11, prefix="endpoint ")
    store.ingest("bench", papers)
    addresses = [f"reader{i}@example.org" for i in range(count // len(papers))]
    ids = reader_ids(store, addresses)
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
    report("feedback_endpoint", ["measure", "value", "note"], rows, {})


def _swap_reader(token: str, reader_id: str) -> str:
    """The same token with another reader's id in its body (signature left as it was)."""
    from paperpost.feedback import _b64, _unb64

    body, tag = token.split(".")
    parts = _unb64(body).decode().split("\n")
    parts[0] = reader_id
    return f"{_b64(chr(10).join(parts).encode())}.{tag}"


def main() -> None:
    parts = sys.argv[1:] or ["study", "speed", "endpoint"]
    for part in parts:
        {"study": study, "speed": speed, "endpoint": endpoint}[part]()


if __name__ == "__main__":
    main()
