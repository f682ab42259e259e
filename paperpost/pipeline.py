"""The pipeline's stages as plain functions: fetch → diff → rank → render → send.

``flows/digest.py`` runs each as a Prefect task; :func:`run_plain` runs the same
functions in a loop without Prefect (benchmarks compare the two). Nothing here
imports Prefect.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from paperpost import lease
from paperpost.bounces import BounceError, process
from paperpost.db import explain
from paperpost.delivery import (
    NOT_ATTEMPTED,
    Outcome,
    resolve_interrupted,
    send_batch,
    transport_for,
)
from paperpost.dumps import DumpError, parse_dump
from paperpost.errors import ConfigError, DatabaseError
from paperpost.feedback import rank_readers, reader_ids
from paperpost.fetch import (
    Fetched,
    display_source,
    expand_sources,
    failed_api_days,
    fetch_all,
    last_api_days,
)
from paperpost.models import Paper, pickled_by_fields
from paperpost.rank import (
    BACKGROUND_PAPERS,
    Background,
    Interest,
    MatchCache,
    Profile,
    Ranked,
    Record,
    ranker_version,
)
from paperpost.render import Edition, Outgoing, Reader, Renderer
from paperpost.settings import Settings
from paperpost.store import Lease, RunPlan, Store
from paperpost.subscribers import (
    LoadedSubscriber,
    SubscriberErrors,
    folder_problem,
    iter_subscribers,
)
from paperpost.unsubscribe import apply_queued

if TYPE_CHECKING:
    import numpy as np

    from paperpost.semantic import Vectors

LOCK = "digest-run"
LOCK_TTL = timedelta(hours=2)
# Why a digest tried before is skipped, by its ledger status (``already-<status>``).
ALREADY = {
    "already-sent": "already delivered",
    "already-failed": "failed permanently before (not tried again)",
    "already-ambiguous": "interrupted after the end of data before (not resent)",
}
# Routine deliveries (sent, already delivered earlier, deferred with their domain, or not
# attempted because the run paused) listed one by one in a run's summary; beyond this they are
# only counted (the ledger has every one), so a run's memory and its summary do not grow with
# the subscriber list. Deliveries needing attention are all listed.
LISTED_ROUTINE = 1000
# Batches a run has in flight: each is ranked and rendered in a worker process, then sent by
# a thread of the run's own process, so that both cores are busy while one batch is written.
BATCHES_IN_FLIGHT = 3
RENDER_CHUNK = 500  # digests a worker renders and sends back at a time (about 13 MB)
# A batch smaller than this is ranked and rendered in place: starting the worker processes
# (an interpreter importing paperpost each, 1-1.5 CPU s) costs more than such a batch.
IN_PLACE_BELOW = 200
T = TypeVar("T")


@dataclass(slots=True)
class SourceReport:
    source: str
    status: str  # ingested, unchanged, failed, invalid
    papers: int = 0
    new: int = 0
    detail: str = ""
    warnings: list[str] = field(default_factory=list)


@pickled_by_fields
@dataclass(slots=True)
class Skip:
    address: str
    reason: str


@pickled_by_fields
@dataclass(slots=True)
class DigestJob:
    """A digest to render: who, which papers in which order, and the window it covers."""

    reader: Reader
    items: list[Ranked]
    lo: int
    hi: int


@pickled_by_fields
@dataclass(slots=True)
class RankedBatch:
    jobs: list[DigestJob]
    skips: list[Skip]
    failed: list[Outcome] = field(default_factory=list)  # readers whose ranking failed


@dataclass(slots=True)
class RunSummary:
    run_id: int
    status: str = "finished"
    sources: list[SourceReport] = field(default_factory=list)
    papers_seen: int = 0
    papers_new: int = 0
    digests_sent: int = 0
    digests_skipped: int = 0
    digests_failed: int = 0
    digests_retry: int = 0
    digests_ambiguous: int = 0
    digests_deferred: int = 0  # their domain refused us repeatedly: sent next run
    digests_not_attempted: int = 0  # left for the next run by a pause (among digests_retry)
    # per receiving domain deferred to the next run: {"digests": n, "reason": why}
    deferred_domains: dict[str, dict[str, object]] = field(default_factory=dict)
    invalid_subscribers: list[str] = field(default_factory=list)  # at most a few per file
    invalid_subscriber_files: int = 0
    deliveries: list[dict[str, object]] = field(default_factory=list)
    deliveries_not_listed: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    bounces: dict[str, object] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    message: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class Tally:
    """A run's delivery outcomes as its batches finish: every status counted, every outcome
    needing attention kept, routine ones (sent, already delivered, deferred with their domain,
    which are counted per domain; not attempted after a pause, counted) kept up to
    LISTED_ROUTINE."""

    counts: Counter[str] = field(default_factory=Counter)
    listed: list[Outcome] = field(default_factory=list)
    routine_listed: int = 0
    not_listed: int = 0
    not_attempted: int = 0
    deferred: dict[str, dict[str, object]] = field(default_factory=dict)

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self.counts[outcome.status] += 1
            if outcome.status == "deferred":
                domain = outcome.address.rpartition("@")[2].lower()
                entry = self.deferred.setdefault(domain, {"digests": 0, "reason": outcome.detail})
                entry["digests"] = int(entry["digests"]) + 1  # type: ignore[call-overload]
            waiting = outcome.status == "retry" and outcome.detail.startswith(NOT_ATTEMPTED)
            self.not_attempted += waiting
            if (
                waiting
                or outcome.status in {"sent", "deferred"}
                or outcome.status.startswith("already-")
            ):
                if self.routine_listed >= LISTED_ROUTINE:
                    self.not_listed += 1
                    continue
                self.routine_listed += 1
            self.listed.append(outcome)

    def total(self) -> int:
        return sum(self.counts.values())


# --- fetch ----------------------------------------


def fetch_stage(settings: Settings, store: Store, today: date) -> list[Fetched]:
    """Fetch every configured source (conditional requests against what was ingested)."""
    known = store.fetch_states()
    sources = expand_sources(settings.sources, last_api_days(settings.sources, known, today), today)
    retry = failed_api_days(settings.sources, store.failed_sources())
    sources = [s for s in retry if s not in sources] + sources
    return fetch_all(sources, known, int(settings.max_dump_mb * 1_000_000), settings.fetch_timeout)


# --- diff ----------------------------------------


def diff_stage(store: Store, fetched: Sequence[Fetched], today: date) -> list[SourceReport]:
    """Parse what was fetched and store it; a bad source is reported, never fatal.

    Each source is parsed and stored on its own: whatever goes wrong with one (a parser
    failure on hostile input, a value the database refuses) is reported for it and leaves
    its fetch state as it was, so the next run tries it again. Only a database that cannot
    be used at all (locked, unreachable, read-only) stops the run.
    """
    reports = []
    for item in fetched:
        shown = display_source(item.source)  # no credentials in reports or stored papers
        if item.status == "unchanged":
            reports.append(SourceReport(shown, "unchanged", detail="not modified"))
            continue
        if item.status == "failed" or item.content is None:
            store.record_fetch_error(item.source, item.error or "failed")
            reports.append(SourceReport(shown, "failed", detail=item.error or ""))
            continue
        try:
            parsed = parse_dump(item.content, shown, item.captured or today)
        except DumpError as exc:
            store.record_fetch_error(item.source, str(exc))
            reports.append(SourceReport(shown, "invalid", detail=str(exc)))
            continue
        except Exception as exc:  # hostile input must not stop the other sources
            detail = f"{shown}: cannot parse this dump ({_reason(exc)}); skipped"
            store.record_fetch_error(item.source, detail)
            reports.append(SourceReport(shown, "invalid", detail=detail))
            continue
        try:
            counts = store.ingest(
                item.source, parsed.papers, item.etag, item.last_modified, item.content_hash
            )
        except (OperationalError, InterfaceError):
            raise  # the database itself is unusable: not this source's fault
        except Exception as exc:  # rolled back; the other sources go on
            detail = f"cannot store its papers ({_reason(exc)}); will retry next run"
            store.record_fetch_error(item.source, detail)
            reports.append(SourceReport(shown, "failed", detail=detail))
            continue
        reports.append(
            SourceReport(shown, "ingested", counts.seen, counts.new, warnings=parsed.warnings)
        )
    return reports


def _reason(exc: BaseException) -> str:
    """An exception in one short line (a database error without its SQL and parameters)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"[:300]


# --- bounces ----------------------------------------


def bounce_stage(settings: Settings, store: Store) -> dict[str, object]:
    """Read bounces, complaints and unsubscribes before sending, so that nobody who must not
    be mailed is; a mailbox that cannot be read is reported and the run goes on."""
    if not settings.bounce_mailbox:
        return {}
    try:
        return process(settings, store).to_json()
    except BounceError as exc:
        return {"error": str(exc)}


# --- rank ----------------------------------------


def profile_of(entry: LoadedSubscriber) -> Profile:
    sub = entry.subscriber
    return Profile(
        interests=tuple(Interest(t.tag, t.weight, tuple(t.keywords)) for t in sub.tags),
        exclude=tuple(sub.exclude),
        min_score=sub.min_score,
        max_items=sub.max_items,
    )


def reader_of(entry: LoadedSubscriber, reader_id: str | None = None) -> Reader:
    sub = entry.subscriber
    return Reader(
        email=sub.email,
        name=sub.name,
        tags=tuple(t.tag for t in sub.tags),
        text_only=sub.format == "text",
        reader_id=reader_id,
    )


_RUN_CACHE = threading.Lock()


@lru_cache(maxsize=1)
def _run_cache(
    url: str, run_id: int, high: int, semantic: bool = False
) -> tuple[MatchCache, Background]:
    """What a run's batches share (:func:`ranking_context`), built once per process."""
    return ranking_context(Store(url), semantic, high)


def ranking_context(
    store: Store, semantic: bool, high: int | None = None, unstored: Sequence[Paper] = ()
) -> tuple[MatchCache, Background]:
    """What ranking needs besides the papers: the ranker's per-paper cache (records kept in
    the database, filled as papers are needed), the word weights over the most recent
    ``BACKGROUND_PAPERS`` papers of the history up to ``high`` and, with the semantic signal,
    the papers' vectors (kept in the database too and looked up there by paper, whatever its
    age). A run's batches share one (:func:`_run_cache`); ``preview``, ``rank --reader`` and
    ``subscribers show`` build theirs the same way, so they rank as the run does, with
    ``unstored``: papers of the dumps they read that the history does not hold yet (the
    newest, as a run would have stored them)."""
    cache = MatchCache()
    if semantic:
        cache.vectors = _stored_vectors(store)
    history = store.latest_papers(BACKGROUND_PAPERS, high)
    if unstored:
        known = {p.key for p in history}
        history = [*history, *(p for p in unstored if p.key not in known)][-BACKGROUND_PAPERS:]
    _load_records(store, cache, history)
    background = Background.of(history, cache)
    _save_records(store, cache)
    return cache, background


def _stored_vectors(store: Store) -> Vectors:
    """The semantic extra's paper vectors, looked up in the database before any is computed;
    a stored vector that fails its checksum (dropped by the store) or does not decode is
    computed again."""
    from paperpost.semantic import MODEL_KEY, Vectors, decode_vector

    def lookup(keys: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for key, data in store.vector_rows(MODEL_KEY, keys).items():
            try:
                found[key] = decode_vector(data)
            except ValueError:
                continue
        return found

    return Vectors(lookup=lookup)


def _load_records(store: Store, cache: MatchCache, papers: Sequence[Paper]) -> None:
    """Fill ``cache`` with the stored records of ``papers`` it lacks. A stored record that
    fails its checksum (dropped by the store) or does not decode is recomputed instead."""
    wanted = list({key for p in papers if (key := cache.key(p)) not in cache.records})
    for key, data in store.evidence_rows(ranker_version(), wanted).items():
        try:
            cache.records[key] = Record.decode(data)
        except ValueError:
            continue


def _save_records(store: Store, cache: MatchCache) -> None:
    """Store the records computed or extended since the last save (after computing them)."""
    changed = cache.take_changed()
    store.save_evidence(ranker_version(), {key: r.encode() for key, r in changed.items()})
    if cache.vectors is not None:
        from paperpost.semantic import MODEL_KEY

        store.save_vectors(MODEL_KEY, cache.vectors.take_changed())


def encode_stage(store: Store, plan: RunPlan) -> None:
    """With the semantic signal on, before the batches fan out: the vectors every batch needs
    (the calibration's most recent papers, this run's new papers) computed here, once, and
    stored. Each worker process builds its own run cache from the database, so without this
    the day's new papers were encoded once per worker."""
    with _RUN_CACHE:
        cache, _ = _run_cache(store.url, plan.run_id, plan.high_water, True)
    assert cache.vectors is not None
    cache.vectors.of([paper for _, paper in store.papers_between(plan.low_water, plan.high_water)])
    _save_records(store, cache)


def rank_stage(
    store: Store,
    plan: RunPlan,
    batch: Sequence[LoadedSubscriber],
    today: date,
    send_empty: bool,
) -> RankedBatch:
    """Decide who gets a digest now and rank their new papers (vectorised per window)."""
    addresses = [e.subscriber.address for e in batch]
    cursors = store.cursors(addresses)
    suppressed = store.suppressed(addresses)
    weekly = [e.subscriber.address for e in batch if e.subscriber.cadence == "weekly"]
    overdue = store.awaiting_retry(weekly) if weekly else set()
    skips: list[Skip] = []
    windows: dict[int, list[LoadedSubscriber]] = {}
    fresh: list[tuple[str, int]] = []
    for entry in batch:
        sub = entry.subscriber
        address = sub.address
        if not sub.active:
            skips.append(Skip(address, "inactive"))
            continue
        if address in suppressed:
            skips.append(Skip(address, f"suppressed ({suppressed[address]})"))
            continue
        cursor, last = cursors.get(address, (None, None))
        if cursor is None:  # a new subscriber starts with the current news, not the archive
            cursor = plan.low_water
            fresh.append((address, cursor))
        if sub.cadence == "weekly":
            # their weekday passed with no run serving them: due now, not next week
            missed = sub.weekday in plan.weekly_missed and (
                (reached := plan.weekly_missed[sub.weekday]) is None or cursor < reached
            )
            if not (today.strftime("%A").lower() == sub.weekday or address in overdue or missed):
                skips.append(Skip(address, f"not due (weekly on {sub.weekday})"))
                continue
            if last is not None and last.astimezone(UTC).date() == today:
                skips.append(Skip(address, "weekly digest already sent today"))
                continue
        if cursor >= plan.high_water:
            skips.append(Skip(address, "no new papers"))
            continue
        windows.setdefault(cursor, []).append(entry)
    if fresh:
        store.advance_cursors(fresh)

    jobs: list[DigestJob] = []
    quiet: list[tuple[str, int]] = []
    ids = reader_ids(store, [e.subscriber.address for group in windows.values() for e in group])
    if windows:
        with _RUN_CACHE:  # a run's concurrent batches build it once
            cache, background = _run_cache(store.url, plan.run_id, plan.high_water, plan.semantic)
    failed: list[Outcome] = []
    for lo, entries in windows.items():
        papers = [paper for _, paper in store.papers_between(lo, plan.high_water)]
        _load_records(store, cache, papers)
        ranked = _rank_apart(store, papers, entries, background, cache)
        _save_records(store, cache)
        for entry, items in ranked:
            if isinstance(items, BaseException):  # not ranked: not sent, cursor kept
                failed.append(
                    Outcome(
                        entry.subscriber.address,
                        f"{lo}-{plan.high_water}",
                        "failed",
                        0,
                        f"cannot rank this reader's papers ({_reason(items)}); the others were "
                        f"served. Check {entry.path}:{entry.line} and this reader's votes; "
                        "tried again next run",
                    )
                )
                continue
            if not items and not send_empty:
                skips.append(Skip(entry.subscriber.address, "nothing above min_score"))
                quiet.append((entry.subscriber.address, plan.high_water))
                continue
            reader = reader_of(entry, ids[entry.subscriber.address])
            jobs.append(DigestJob(reader, items, lo, plan.high_water))
    if quiet:  # deciding that nothing is worth sending is work done: move past it
        store.advance_cursors(quiet)
    return RankedBatch(jobs, skips, failed)


def _rank_apart(
    store: Store,
    papers: Sequence[Paper],
    entries: Sequence[LoadedSubscriber],
    background: Background,
    cache: MatchCache,
) -> list[tuple[LoadedSubscriber, list[Ranked] | Exception]]:
    """Rank readers together; when that fails, in halves, down to the readers whose own
    data fails (each with its exception), so one reader never costs the others their
    digest. A database that cannot be used stops the run as everywhere else."""
    try:
        rankings = rank_readers(
            store,
            papers,
            [e.subscriber for e in entries],
            [profile_of(e) for e in entries],
            background,
            cache,
        )
        return list(zip(entries, rankings, strict=True))
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        if len(entries) == 1:
            return [(entries[0], exc)]
    half = len(entries) // 2
    return [
        *_rank_apart(store, papers, entries[:half], background, cache),
        *_rank_apart(store, papers, entries[half:], background, cache),
    ]


# --- render and send ----------------------------------------


@pickled_by_fields
@dataclass(slots=True)
class Rendered:
    """A batch's digests ready to send, and the readers whose digest could not be made."""

    outgoing: list[Outgoing]
    failed: list[Outcome]


def render_stage(
    renderer: Renderer,
    jobs: Sequence[DigestJob],
    edition: Edition,
    failed: Sequence[Outcome] = (),
) -> Rendered:
    """Render each digest; one that cannot be made fails alone, with the reason. ``failed``:
    the batch's readers already failed (by the rank stage), reported with the rest."""
    rendered = Rendered([], list(failed))
    for job in jobs:
        try:
            message = renderer.render(job.reader, job.items, edition, job.lo, job.hi)
        except Exception as exc:  # one reader's data must not stop the others' digests
            rendered.failed.append(
                Outcome(
                    job.reader.email.lower(),
                    f"{job.lo}-{job.hi}",
                    "failed",
                    len(job.items),
                    f"cannot render this digest ({_reason(exc)}); tried again next run",
                )
            )
            continue
        rendered.outgoing.append(message)
    return rendered


def send_stage(
    settings: Settings, store: Store, rendered: Rendered, run_id: int, owner: str
) -> list[Outcome]:
    """Send a batch's digests; the ones that could not be rendered are reported with them.
    ``owner`` holds the run's lease, which is renewed as the batch is sent."""
    transport = transport_for(settings)
    workers = settings.smtp_connections if settings.delivery == "smtp" else 1
    try:
        return rendered.failed + send_batch(
            store,
            transport,
            rendered.outgoing,
            run_id,
            workers=workers,
            max_error_rate=settings.max_error_rate,
            resend_ambiguous=settings.resend_ambiguous,
            systemic_domains=settings.systemic_domains,
            lease=Lease(store, LOCK, owner, LOCK_TTL),
            soft_bounce_limit=settings.soft_bounce_limit,
            soft_bounce_days=settings.soft_bounce_days,
        )
    finally:
        transport.close()


# --- worker processes ----------------------------------------


_POOLS: dict[int, ProcessPoolExecutor] = {}  # by process id: a pool does not survive a fork
_POOLS_LOCK = threading.Lock()
_RENDERERS: dict[int, Renderer] = {}


def workers() -> ProcessPoolExecutor | None:
    """This process's pool of worker processes for ranking and rendering, one per core
    (both are CPU-bound Python: threads would share one core), started on first use and
    kept for the process's life. None on one core, and in a process that may not start
    children (a Dask worker's task ranks and renders its batch in place)."""
    cores = os.cpu_count() or 1
    if cores < 2 or multiprocessing.current_process().daemon:
        return None
    with _POOLS_LOCK:
        pool = _POOLS.get(os.getpid())
        if pool is None:
            context = multiprocessing.get_context("spawn")  # no inherited threads or sockets
            pool = _POOLS[os.getpid()] = ProcessPoolExecutor(
                cores, mp_context=context, initializer=_watch_parent
            )
        return pool


def _watch_parent() -> None:
    """In each worker process: exit as soon as the process that started it is gone (a run
    killed with SIGKILL), instead of waiting for work forever with its stdout open."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent,), daemon=True).start()


def _exit_after(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent's end of the pipe to this process closes
    os._exit(1)


def offload(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker process (:func:`workers`), or here when there is none.
    ``fn`` and its arguments must pickle; its exceptions are raised here."""
    pool = workers()
    return fn(*args) if pool is None else pool.submit(fn, *args).result()


def renderer() -> Renderer:
    """One renderer per process: premailer's result is learned once."""
    pid = os.getpid()
    if pid not in _RENDERERS:
        _RENDERERS[pid] = Renderer()
    return _RENDERERS[pid]


def rank_in_worker(
    store: Store, plan: RunPlan, batch: Sequence[LoadedSubscriber], today: date, send_empty: bool
) -> RankedBatch:
    """:func:`rank_stage` in a worker process (:func:`offload`); here for a small batch
    and for an in-memory SQLite database, which no other process can open."""
    url = _absolute(store.url)
    if url is None or len(batch) < IN_PLACE_BELOW:
        return rank_stage(store, plan, batch, today, send_empty)
    return offload(_rank, url, plan, batch, today, send_empty)


def render_in_worker(
    jobs: Sequence[DigestJob], edition: Edition, failed: Sequence[Outcome] = ()
) -> Rendered:
    """:func:`render_stage` in the worker processes, with their renderers: RENDER_CHUNK
    digests at a time, so that every worker can take part of a batch and none holds a whole
    batch of messages (and their pickled copy) at once. Same result, in the same order."""
    pool = workers() if len(jobs) >= IN_PLACE_BELOW else None
    if pool is None:
        return _render(jobs, edition, failed)
    parts = [
        pool.submit(_render, jobs[start : start + RENDER_CHUNK], edition, ())
        for start in range(0, len(jobs), RENDER_CHUNK)
    ]
    rendered = Rendered([], list(failed))
    for part in parts:
        done = part.result()
        rendered.outgoing += done.outgoing
        rendered.failed += done.failed
    return rendered


def _rank(
    url: str, plan: RunPlan, batch: Sequence[LoadedSubscriber], today: date, send_empty: bool
) -> RankedBatch:
    return rank_stage(Store(url), plan, batch, today, send_empty)


def _render(jobs: Sequence[DigestJob], edition: Edition, failed: Sequence[Outcome]) -> Rendered:
    return render_stage(renderer(), jobs, edition, failed)


def _absolute(url: str) -> str | None:
    """The URL with a relative SQLite path made absolute (a worker process started earlier
    may have another working directory); None for an in-memory SQLite database."""
    parsed = make_url(url)
    database = parsed.database
    if not parsed.drivername.startswith("sqlite"):
        return url
    if not database or database == ":memory:" or "mode=memory" in url:
        return None
    if database.startswith("file:") or os.path.isabs(database):
        return url
    return parsed.set(database=os.path.abspath(database)).render_as_string(hide_password=False)


# --- whole-run helpers ---------------------------------------------------------------


def stream_readers(
    folder: Path, errors: SubscriberErrors, cadence: str | None = None
) -> Iterator[LoadedSubscriber]:
    """Valid subscribers (of one cadence, if given), read as they are needed; every error
    in their files is appended to ``errors``. Only a batch of them is ever in memory."""
    for entry in iter_subscribers(folder, errors):
        if not cadence or entry.subscriber.cadence == cadence:
            yield entry


def batches(items: Iterable[LoadedSubscriber], size: int) -> Iterator[list[LoadedSubscriber]]:
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


def edition_for(settings: Settings, plan: RunPlan, today: date) -> Edition:
    return Edition(
        sender=settings.sender,
        secret_key=settings.secret_key.get_secret_value(),
        base_url=settings.base_url,
        day=today,
        new_papers=plan.high_water - plan.low_water,
    )


def preflight(settings: Settings) -> None:
    """What every run needs, checked before it starts (``paperpost run``, ``serve`` and the
    flow itself, so each deployment's run on a worker too): the signing key for SMTP, and a
    database that answers (PostgreSQL within ``db.CONNECT_TIMEOUT``), is at this paperpost's
    schema (migrated now if it can be) and takes a write. Raises ConfigError or DatabaseError,
    one line saying what to do."""
    require_own_key(settings)
    require_semantic(settings)
    require_subscribers(settings)
    try:
        Store(settings.db_url).check_writable()
    except SQLAlchemyError as exc:
        raise DatabaseError(explain(exc)) from None


def require_own_key(settings: Settings) -> None:
    """ConfigError for the public development key where outsiders could use it: SMTP
    delivery (links anyone could sign) and a bounce mailbox (reports anyone could sign: VERP
    addresses and the keyed Message-IDs of :func:`render.message_hash`)."""
    if settings.delivery == "smtp":
        settings.require_own_key("SMTP delivery")
    if settings.bounce_mailbox:
        settings.require_own_key("a bounce mailbox (PAPERPOST_BOUNCE_MAILBOX)")


def require_subscribers(settings: Settings) -> None:
    """ConfigError when the subscribers folder is missing or holds no subscriber file: such
    a run fetched, took the new papers as news, and sent them to nobody (exit 0, "no
    subscriber had new papers above their min_score"); the readers never got them."""
    problem = folder_problem(settings.subscribers_dir)
    if problem:
        raise ConfigError(
            [
                f"PAPERPOST_SUBSCRIBERS_DIR={settings.subscribers_dir} {problem}; nothing was "
                "fetched or sent. Set it to the folder of subscriber files (`paperpost "
                "subscribers validate <folder>` checks one) or add a subscriber with "
                "`paperpost subscribers add`"
            ]
        )


def require_semantic(settings: Settings) -> None:
    """With ``PAPERPOST_SEMANTIC`` on, the encoder loaded and checked now (a worker process
    loads its own); ConfigError, saying what to do, when the extra is missing or its weights
    are not the expected file. What ``run``, ``preview`` and ``rank --reader`` check first."""
    if settings.semantic:
        from paperpost.semantic import SemanticUnavailable, encoder

        try:
            encoder()
        except SemanticUnavailable as exc:
            raise ConfigError([f"PAPERPOST_SEMANTIC is on, but {exc}"]) from None


def begin(
    settings: Settings, today: date, cadence: str | None = None
) -> tuple[Store, str, int | None]:
    """Open the store and take the run lease for a run serving ``today`` (the subscribers
    of ``cadence``; None: all); run id None when another run holds it
    (:func:`locked_message` says who).

    A lease expires after LOCK_TTL; one held by a process of this machine that no longer
    exists (a run killed mid-way, also a container's PID 1 before a restart) is taken over at
    once (:mod:`paperpost.lease`).
    """
    require_own_key(settings)
    store = Store(settings.db_url)
    owner = lease.new_owner()
    if not store.acquire_lock(LOCK, owner, LOCK_TTL):
        holder = store.lock_owner(LOCK)
        if not (holder and lease.dead_here(holder)):
            return store, owner, None
        if not store.take_over_lock(LOCK, holder, owner, LOCK_TTL):
            return store, owner, None
    return store, owner, store.start_run(today, cadence)


def locked_message(store: Store) -> str:
    """Why a run did nothing (exit 5): who holds the lease, since when, how to clear it."""
    row = store.lock_row(LOCK)
    if row is None:  # released between the attempt and now
        return "Another run held the lease a moment ago; nothing done. Run again."
    return lease.held(*row, LOCK_TTL.total_seconds())


def prepare(settings: Settings, store: Store, run_id: int) -> tuple[RunPlan, list[Outcome]]:
    """Fix the run's window and settle what a crashed run left mid-send; with the semantic
    signal, encode the papers the run needs (:func:`encode_stage`)."""
    apply_queued(settings.state_dir, store)  # unsubscribes web kept while the db was busy
    transport = transport_for(settings)
    try:
        interrupted = resolve_interrupted(store, transport, settings.resend_ambiguous)
    finally:
        transport.close()
    plan = replace(store.plan_run(run_id), semantic=settings.semantic)
    if plan.semantic:
        encode_stage(store, plan)
    return plan, interrupted


ERRORS_PER_FILE = 5  # a file's errors a run's summary lists; `subscribers validate` shows all


def run_errors() -> SubscriberErrors:
    """Where a run collects subscriber errors: every one counted, a file's first
    ERRORS_PER_FILE kept (a file of millions of bad entries is not millions of errors in
    memory, in the summary or in the log)."""
    return SubscriberErrors(keep=ERRORS_PER_FILE)


def _listed(errors: SubscriberErrors) -> list[str]:
    """The subscriber errors as a run's summary lists them: a file's first ERRORS_PER_FILE,
    then one line counting the rest (a file of 2,500 bad keywords is not 2,500 lines)."""
    lines: list[str] = []
    for path, kept, count in errors.by_file():
        lines += [str(e) for e in kept[:ERRORS_PER_FILE]]
        if count > ERRORS_PER_FILE:
            lines.append(
                f"{path}: {count - ERRORS_PER_FILE:,} more errors in this file; "
                f"`paperpost subscribers validate {path}` lists them all"
            )
    return lines


def error_log_lines(errors: SubscriberErrors) -> list[str]:
    """One line per file with errors, for a log that may not quote an entry (an error can
    name an address): how many entries were skipped and where the first one is."""
    lines = []
    for path, kept, count in errors.by_file():
        first = kept[0]
        lines.append(
            f"Skipping {count:,} invalid subscriber entr{'y' if count == 1 else 'ies'} in "
            f"{path} (first at line {first.line}, {first.field or 'file'}); "
            f"`paperpost subscribers validate {path}` lists them"
        )
    return lines


def summarize(
    store: Store,
    summary: RunSummary,
    plan: RunPlan,
    reports: Sequence[SourceReport],
    errors: SubscriberErrors,
    skips: Counter[str],
    tally: Tally,
) -> RunSummary:
    """Fill in the summary; ``skips`` counts subscribers left out, by reason."""
    paused = store.pause_reason(summary.run_id)
    if paused:
        summary.status, summary.message = "paused", paused
    summary.sources = list(reports)
    summary.papers_seen = sum(r.papers for r in reports)
    summary.papers_new = plan.high_water - plan.low_water
    summary.invalid_subscribers = _listed(errors)
    summary.invalid_subscriber_files = len(errors.counts)
    counts = tally.counts
    summary.digests_sent = counts["sent"]
    summary.digests_failed = counts["failed"]
    summary.digests_retry = counts["retry"]
    summary.digests_ambiguous = counts["ambiguous"]
    summary.digests_deferred = counts["deferred"]
    summary.deferred_domains = dict(sorted(tally.deferred.items()))
    summary.skip_reasons = dict(skips)
    already = {k: v for k, v in counts.items() if k.startswith("already-")}
    summary.digests_skipped = sum(skips.values()) + sum(already.values())
    for status, count in already.items():  # a digest that failed was not delivered
        reason = ALREADY.get(status, "being sent by another run")
        summary.skip_reasons[reason] = summary.skip_reasons.get(reason, 0) + count
    summary.deliveries = [
        {
            "address": o.address,
            "digest": o.digest,
            "status": o.status,
            "papers": o.papers,
            "detail": o.detail,
        }
        for o in tally.listed
    ]
    summary.deliveries_not_listed = tally.not_listed
    summary.digests_not_attempted = tally.not_attempted
    if not summary.message:
        summary.message = outcome_message(summary)
    return summary


def outcome_message(summary: RunSummary) -> str:
    """What happened, in a sentence or two, when it is not simply "sent N digests"."""
    message = _outcome_message(summary)
    if not summary.deferred_domains:
        return message
    domains = list(summary.deferred_domains)
    named = ", ".join(domains[:5]) + (f" and {len(domains) - 5:,} more" if len(domains) > 5 else "")
    deferred = (
        f"{summary.digests_deferred:,} digest{'' if summary.digests_deferred == 1 else 's'} "
        f"deferred to the next run: {named} refused several messages in a row by policy or "
        "rate limit (listed above)."
    )
    return f"{message} {deferred}" if message else deferred


def _outcome_message(summary: RunSummary) -> str:
    failed = [r for r in summary.sources if r.status in {"failed", "invalid"}]
    if summary.sources and len(failed) == len(summary.sources):
        return "every source failed: " + "; ".join(f"{r.source}: {r.detail}" for r in failed)
    down = f" ({len(failed)} of {len(summary.sources)} sources failed)" if failed else ""
    if summary.digests_failed:
        return (
            f"{summary.digests_failed} deliver{'y' if summary.digests_failed == 1 else 'ies'} "
            f"failed permanently (listed above){down}."
        )
    if summary.digests_sent:
        return f"Some sources failed{down}; the others were delivered." if failed else ""
    if summary.digests_ambiguous:
        return (
            f"No digest was confirmed: {summary.digests_ambiguous} ambiguous (the end of data "
            f"went out, no reply was read; not resent), listed above{down}."
        )
    if summary.sources and all(r.status == "unchanged" for r in summary.sources):
        return "Nothing to send: every source is unchanged since the last run."
    if summary.papers_new == 0 and failed:
        return f"Nothing to send: no new papers{down}; the sources are listed above."
    if summary.papers_new == 0:
        return "Nothing to send: no new papers (weekend, or the listing has not changed)."
    if summary.digests_retry or summary.digests_deferred:
        return f"No digest was delivered; the failures are listed above{down}."
    reasons = summary.skip_reasons
    if not reasons and summary.invalid_subscriber_files:  # nobody was read
        files = summary.invalid_subscriber_files
        return (
            f"Nothing to send: no valid subscriber ({files} subscriber "
            f"file{'' if files == 1 else 's'} with errors, listed above){down}."
        )
    if reasons and "nothing above min_score" not in reasons:  # min_score kept nobody out
        ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        listed = ", ".join(f"{count} {reason}" for reason, count in ranked)
        return f"Nothing to send: every subscriber was skipped ({listed}){down}."
    return f"Nothing to send: no subscriber had new papers above their min_score{down}."


@pickled_by_fields
@dataclass(slots=True)
class BatchResult:
    """What a batch of subscribers came to: delivery outcomes, skip reasons, stage clocks."""

    size: int
    outcomes: list[Outcome]
    skips: list[str]
    seconds: dict[str, float]


def process_batch(
    settings: Settings,
    store: Store,
    plan: RunPlan,
    batch: Sequence[LoadedSubscriber],
    today: date,
    edition: Edition,
    owner: str,
) -> BatchResult:
    """Rank and render a batch in a worker process, then send it from this one (the same
    stage functions, in the same processes, as the flow's tasks)."""
    clock = time.perf_counter()
    ranked = rank_in_worker(store, plan, batch, today, settings.send_empty)
    ranked_at = time.perf_counter()
    rendered = render_in_worker(ranked.jobs, edition, ranked.failed)
    rendered_at = time.perf_counter()
    outcomes = send_stage(settings, store, rendered, plan.run_id, owner)
    return BatchResult(
        len(batch),
        outcomes,
        [skip.reason for skip in ranked.skips],
        {
            "rank": ranked_at - clock,
            "render": rendered_at - ranked_at,
            "send": time.perf_counter() - rendered_at,
        },
    )


def run_plain(
    settings: Settings,
    today: date | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> RunSummary:
    """The whole pipeline without Prefect (the same functions, in the same processes, as
    the flow): subscribers are read here, BATCHES_IN_FLIGHT batches at a time are ranked and
    rendered in worker processes (:func:`workers`) and sent from this process.

    ``progress(done, None)`` is called after each batch of subscribers (the total is not
    known: subscribers are read as the batches need them). The summary's stage clocks add
    up each batch's time in that stage; batches overlap, so they can exceed the wall time.
    """
    today = today or datetime.now(UTC).date()
    store, owner, run_id = begin(settings, today)
    if run_id is None:
        return RunSummary(0, "locked", message=locked_message(store))
    summary = RunSummary(run_id)
    try:
        clock = time.perf_counter()
        fetched = fetch_stage(settings, store, today)
        summary.stage_seconds["fetch"] = time.perf_counter() - clock
        clock = time.perf_counter()
        reports = diff_stage(store, fetched, today)
        plan, interrupted = prepare(settings, store, run_id)
        tally = Tally()
        tally.add(interrupted)
        summary.stage_seconds["diff"] = time.perf_counter() - clock
        clock = time.perf_counter()
        summary.bounces = bounce_stage(settings, store)
        summary.stage_seconds["bounces"] = time.perf_counter() - clock
        errors = run_errors()
        subscribers = stream_readers(settings.subscribers_dir, errors)
        edition = edition_for(settings, plan, today)
        skips: Counter[str] = Counter()
        for stage in ("rank", "render", "send"):
            summary.stage_seconds[stage] = 0.0
        processed = 0
        in_flight: deque[Future[BatchResult]] = deque()

        def collect() -> None:
            nonlocal processed
            result = in_flight.popleft().result()
            tally.add(result.outcomes)
            skips.update(result.skips)
            for stage, seconds in result.seconds.items():
                summary.stage_seconds[stage] += seconds
            processed += result.size
            if progress:
                progress(processed, None)

        with ThreadPoolExecutor(BATCHES_IN_FLIGHT, thread_name_prefix="batch") as threads:
            for batch in batches(subscribers, settings.batch_size):
                in_flight.append(
                    threads.submit(
                        process_batch, settings, store, plan, batch, today, edition, owner
                    )
                )
                if len(in_flight) >= BATCHES_IN_FLIGHT:
                    collect()
            while in_flight:
                collect()
        summarize(store, summary, plan, reports, errors, skips, tally)
        store.finish_run(run_id, "finished", summary.to_json())
        return summary
    except BaseException:
        store.finish_run(run_id, "crashed", summary.to_json())
        raise
    finally:
        store.release_lock(LOCK, owner)
