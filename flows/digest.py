"""The ``digest`` flow: fetch → diff → rank → render → send, each a task over one domain function.

Subscribers are fanned out in batches (``PAPERPOST_BATCH_SIZE``), not one task per
subscriber: Prefect's per-task overhead is several milliseconds. I/O tasks retry;
pure tasks do not. The run summary is returned and published as artefacts.

Tasks may run in another process or on another machine (a Dask worker): each reads its
settings, the database URL and every secret included, from the environment of the process
it runs in. Only non-secret overrides (the run's folders) travel with a task, and a task
that touches the database first checks that this database holds the run's lease.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from datetime import UTC, date, datetime
from typing import Generic, Literal, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from paperpost import pipeline
from paperpost.delivery import Outcome
from paperpost.errors import ConfigError, DatabaseError
from paperpost.fetch import Fetched
from paperpost.report import markdown
from paperpost.settings import Settings
from paperpost.store import RunPlan, Store
from paperpost.subscribers import LoadedSubscriber

_TASK = {"cache_policy": NONE, "persist_result": False}
# Batches submitted ahead of the one being collected; this also bounds memory (rendered
# messages) at any number of subscribers. On threads, each batch is ranked and rendered in
# this process's worker processes (pipeline.workers) as in the plain path, and as many
# batches are in flight; Dask workers are separate processes.
THREAD_BATCHES = pipeline.BATCHES_IN_FLIGHT
DASK_BATCHES = 8
T = TypeVar("T")


def task_runner(settings: Settings) -> TaskRunner:
    """Threads in this process, or Dask: a local cluster ("local") or a scheduler address."""
    if not settings.dask_address:
        # a thread for each task of every batch in flight, so none waits on a queued one
        return ThreadPoolTaskRunner(max_workers=3 * THREAD_BATCHES)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address == "local":
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 2,
                "threads_per_worker": 1,
                "dashboard_address": None,
            }
        )
    return DaskTaskRunner(address=settings.dask_address)


class WrongDatabase(RuntimeError):
    """A task ran against a database that does not hold the run's lease."""


def settings_here(overrides: dict[str, object]) -> Settings:
    """The settings of the process this task runs in (its environment and ``.env``) with
    the run's non-secret overrides: a Dask worker never receives the database URL or a
    secret from the flow."""
    return Settings(**overrides)


def run_store(settings: Settings, owner: str) -> Store:
    """This process's store, checked to be the one the run holds its lease in: a worker
    configured with another database (or none: the default SQLite file) would keep its
    own ledger and send digests a second time."""
    store = Store(settings.db_url)
    if store.lock_owner(pipeline.LOCK) != owner:
        raise WrongDatabase(
            f"this task's database does not hold the run's lease (run by {owner}); set the "
            "same PAPERPOST_DATABASE_URL on every Dask worker as on the flow's process, or the "
            "run ended meanwhile"
        )
    return store


@task(name="fetch", retries=2, retry_delay_seconds=[5, 30], **_TASK)
def fetch(overrides: dict[str, object], today: date) -> list[Fetched]:
    settings = settings_here(overrides)
    return pipeline.fetch_stage(settings, Store(settings.db_url), today)


@task(name="diff", retries=2, retry_delay_seconds=[2, 10], **_TASK)
def diff(overrides: dict[str, object], fetched: list[Fetched], today: date, run_id: int):  # type: ignore[no-untyped-def]
    settings = settings_here(overrides)
    store = Store(settings.db_url)
    reports = pipeline.diff_stage(store, fetched, today)
    plan, interrupted = pipeline.prepare(settings, store, run_id)
    return reports, plan, interrupted


@task(name="bounces", retries=1, retry_delay_seconds=10, **_TASK)
def bounces(overrides: dict[str, object]) -> dict:
    settings = settings_here(overrides)
    return pipeline.bounce_stage(settings, Store(settings.db_url))


class Box(Generic[T]):
    """A batch's data between tasks, boxed: Prefect walks lists, dataclasses and models in
    task arguments and results looking for futures, which costs real time for thousands
    of subscribers, digests and messages; a plain object it passes through untouched
    (also to Dask workers, which unpickle it)."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


@task(name="rank", retries=1, retry_delay_seconds=2, **_TASK)
def rank(
    overrides: dict[str, object],
    owner: str,
    plan: RunPlan,
    batch: Box[list[LoadedSubscriber]],
    today: date,
) -> Box[pipeline.RankedBatch]:
    settings = settings_here(overrides)
    store = run_store(settings, owner)
    return Box(pipeline.rank_in_worker(store, plan, batch.value, today, settings.send_empty))


@task(name="render", **_TASK)
def render(
    overrides: dict[str, object], ranked: Box[pipeline.RankedBatch], plan: RunPlan, today: date
) -> Box[tuple[pipeline.Rendered, Counter[str]]]:
    """Render a batch; its skip reasons ride along, so the flow never fetches the ranking."""
    edition = pipeline.edition_for(settings_here(overrides), plan, today)
    rendered = pipeline.render_in_worker(ranked.value.jobs, edition, ranked.value.failed)
    return Box((rendered, Counter(skip.reason for skip in ranked.value.skips)))


@task(name="send", retries=2, retry_delay_seconds=[10, 60], **_TASK)
def send(
    overrides: dict[str, object],
    owner: str,
    rendered: Box[tuple[pipeline.Rendered, Counter[str]]],
    run_id: int,
) -> Box[tuple[list[Outcome], Counter[str]]]:
    settings = settings_here(overrides)
    digests, skips = rendered.value
    outcomes = pipeline.send_stage(settings, run_store(settings, owner), digests, run_id, owner)
    return Box((outcomes, skips))


@flow(name="digest", log_prints=False, task_runner=task_runner(Settings()))
def digest(
    sources: list[str] | None = None,
    subscribers_dir: str | None = None,
    outbox_dir: str | None = None,
    cadence: Literal["daily", "weekly"] | None = None,
    today: date | None = None,
) -> dict:
    """Fetch new dumps, find the papers no run has delivered, and send each reader a digest.

    ``cadence`` limits the run to daily or weekly subscribers (the two deployments in
    prefect.yaml); by default everyone due today is served. Everything else, the database
    URL and every secret included, comes from the settings of the process each step runs in
    (its environment and ``.env``; on Dask, the worker's): Prefect stores a flow run's
    parameters in plain text, and Dask ships task arguments over its connections.
    """
    logger = get_run_logger()
    given = {"sources": sources, "subscribers_dir": subscribers_dir, "outbox_dir": outbox_dir}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = settings_here(overrides)
    try:  # before anything, as `paperpost run` and `serve` do: one line, no traceback
        pipeline.preflight(settings)
    except (ConfigError, DatabaseError) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))  # type: ignore[return-value]
    today = today or datetime.now(UTC).date()
    store, owner, run_id = pipeline.begin(settings, today, cadence)
    if run_id is None:
        message = pipeline.locked_message(store)
        logger.warning("%s", message)
        return pipeline.RunSummary(0, "locked", message=message).to_json()
    summary = pipeline.RunSummary(run_id)
    try:
        clock = time.perf_counter()
        fetched = fetch(overrides, today)
        summary.stage_seconds["fetch"] = time.perf_counter() - clock
        clock = time.perf_counter()
        reports, plan, interrupted = diff(overrides, fetched, today, run_id)
        tally = pipeline.Tally()
        tally.add(interrupted)
        summary.stage_seconds["diff"] = time.perf_counter() - clock
        logger.info(
            "Window %s..%s: %s new papers",
            plan.low_water,
            plan.high_water,
            plan.high_water - plan.low_water,
        )
        clock = time.perf_counter()
        summary.bounces = bounces(overrides)
        summary.stage_seconds["bounces"] = time.perf_counter() - clock
        clock = time.perf_counter()
        # subscribers are read as batches are submitted: memory holds the batches in
        # flight, not the whole list
        errors = pipeline.run_errors()
        readers = pipeline.stream_readers(settings.subscribers_dir, errors, cadence)
        skips: Counter[str] = Counter()
        in_flight: deque = deque()
        done = 0

        def collect() -> None:
            nonlocal done
            sent, batch_skips = in_flight.popleft().result().value
            skips.update(batch_skips)
            tally.add(sent)
            done += 1
            logger.info("Batch %s done: %s deliveries so far", done, tally.total())

        for batch in pipeline.batches(readers, settings.batch_size):
            ranked = rank.submit(overrides, owner, plan, Box(batch), today)
            rendered = render.submit(overrides, ranked, plan, today)
            in_flight.append(send.submit(overrides, owner, rendered, run_id))
            if len(in_flight) >= (DASK_BATCHES if settings.dask_address else THREAD_BATCHES):
                collect()
        while in_flight:
            collect()
        for line in pipeline.error_log_lines(errors):  # one per file
            logger.warning(line)
        summary.stage_seconds["rank+render+send"] = time.perf_counter() - clock
        pipeline.summarize(store, summary, plan, reports, errors, skips, tally)
        store.finish_run(run_id, "finished", summary.to_json())
    except BaseException:
        store.finish_run(run_id, "crashed", summary.to_json())
        raise
    finally:
        store.release_lock(pipeline.LOCK, owner)
    logger.info(summary.message or f"Sent {summary.digests_sent} digests.")
    create_markdown_artifact(
        markdown(summary), key="digest-summary", description="What this digest run did"
    )
    create_table_artifact(
        summary.deliveries
        or [
            {
                "address": "-",
                "digest": "-",
                "status": "nothing sent",
                "papers": 0,
                "detail": summary.message,
            }
        ],
        key="digest-deliveries",
        description="One row per delivery attempt",
    )
    return summary.to_json()
