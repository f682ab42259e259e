"""The ``digest`` flow: fetch → diff → rank → render → send, each a task over one domain function.

Subscribers are fanned out in batches (``PAPERPOST_BATCH_SIZE``), not one task per
subscriber: Prefect's per-task overhead is several milliseconds. I/O tasks retry;
pure tasks do not. The run summary is returned and published as artefacts.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from datetime import UTC, date, datetime
from typing import Generic, Literal, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from paperpost import pipeline
from paperpost.delivery import Outcome
from paperpost.fetch import Fetched
from paperpost.render import Edition, Renderer
from paperpost.report import markdown
from paperpost.settings import Settings
from paperpost.store import RunPlan, Store
from paperpost.subscribers import LoadedSubscriber, SubscriberError

_TASK = {"cache_policy": NONE, "persist_result": False}
# Batches submitted ahead of the one being collected; this also bounds memory (rendered
# messages) at any number of subscribers. Threads share one GIL and one SQLite writer, so
# more than two only adds contention; Dask workers are separate processes.
THREAD_BATCHES = 2
DASK_BATCHES = 8
_renderer: Renderer | None = None
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


def renderer() -> Renderer:
    """One renderer per worker process: premailer's result is learned once."""
    global _renderer
    if _renderer is None:
        _renderer = Renderer()
    return _renderer


@task(name="fetch", retries=2, retry_delay_seconds=[5, 30], **_TASK)
def fetch(settings: Settings, today: date) -> list[Fetched]:
    return pipeline.fetch_stage(settings, Store(settings.db_url), today)


@task(name="diff", retries=2, retry_delay_seconds=[2, 10], **_TASK)
def diff(settings: Settings, fetched: list[Fetched], today: date, run_id: int):  # type: ignore[no-untyped-def]
    store = Store(settings.db_url)
    reports = pipeline.diff_stage(store, fetched, today)
    plan, interrupted = pipeline.prepare(settings, store, run_id)
    return reports, plan, interrupted


@task(name="bounces", retries=1, retry_delay_seconds=10, **_TASK)
def bounces(settings: Settings) -> dict:
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
    settings: Settings, plan: RunPlan, batch: Box[list[LoadedSubscriber]], today: date
) -> Box[pipeline.RankedBatch]:
    return Box(
        pipeline.rank_stage(Store(settings.db_url), plan, batch.value, today, settings.send_empty)
    )


@task(name="render", **_TASK)
def render(ranked: Box[pipeline.RankedBatch], edition: Edition) -> Box[pipeline.Rendered]:
    return Box(pipeline.render_stage(renderer(), ranked.value.jobs, edition))


@task(name="send", retries=2, retry_delay_seconds=[10, 60], **_TASK)
def send(settings: Settings, rendered: Box[pipeline.Rendered], run_id: int) -> list[Outcome]:
    return pipeline.send_stage(settings, Store(settings.db_url), rendered.value, run_id)


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
    URL and every secret included, comes from the settings of the flow's process (its
    environment and ``.env``): Prefect stores a flow run's parameters in plain text.
    """
    logger = get_run_logger()
    overrides = {"sources": sources, "subscribers_dir": subscribers_dir, "outbox_dir": outbox_dir}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    today = today or datetime.now(UTC).date()
    store, owner, run_id = pipeline.begin(settings)
    if run_id is None:
        logger.warning("Another digest run holds the lock; this run does nothing.")
        return pipeline.RunSummary(0, "locked", message="Another run holds the lock.").to_json()
    summary = pipeline.RunSummary(run_id)
    try:
        clock = time.perf_counter()
        fetched = fetch(settings, today)
        summary.stage_seconds["fetch"] = time.perf_counter() - clock
        clock = time.perf_counter()
        reports, plan, outcomes = diff(settings, fetched, today, run_id)
        summary.stage_seconds["diff"] = time.perf_counter() - clock
        logger.info(
            "Window %s..%s: %s new papers",
            plan.low_water,
            plan.high_water,
            plan.high_water - plan.low_water,
        )
        clock = time.perf_counter()
        summary.bounces = bounces(settings)
        summary.stage_seconds["bounces"] = time.perf_counter() - clock
        clock = time.perf_counter()
        # subscribers are read as batches are submitted: memory holds the batches in
        # flight, not the whole list
        errors: list[SubscriberError] = []
        readers = pipeline.stream_readers(settings.subscribers_dir, errors, cadence)
        edition = pipeline.edition_for(settings, plan, today)
        skips: Counter[str] = Counter()
        in_flight: deque = deque()
        done = 0

        def collect() -> None:
            nonlocal done
            ranked, sent = in_flight.popleft()
            skips.update(skip.reason for skip in ranked.result().value.skips)
            outcomes.extend(sent.result())
            done += 1
            logger.info("Batch %s done: %s deliveries so far", done, len(outcomes))

        for batch in pipeline.batches(readers, settings.batch_size):
            ranked = rank.submit(settings, plan, Box(batch), today)
            rendered = render.submit(ranked, edition)
            in_flight.append((ranked, send.submit(settings, rendered, run_id)))
            if len(in_flight) >= (DASK_BATCHES if settings.dask_address else THREAD_BATCHES):
                collect()
        while in_flight:
            collect()
        for error in errors:
            logger.warning(  # where, not what: the message may quote an address
                "Skipping invalid subscriber entry at %s:%s (%s)",
                error.path,
                error.line,
                error.field or "file",
            )
        summary.stage_seconds["rank+render+send"] = time.perf_counter() - clock
        pipeline.summarize(store, summary, plan, reports, errors, skips, outcomes)
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
