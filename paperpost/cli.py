"""The ``paperpost`` command line (typer + rich, both already used by Prefect's stack).

Commands import what they use when they run: ``paperpost --help`` and the commands that do
not run a flow never import Prefect, SQLAlchemy or numpy before they need them.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from paperpost.exitcodes import ExitCode, for_summary
from paperpost.sanitize import reply_text

if TYPE_CHECKING:
    from paperpost.models import Paper
    from paperpost.settings import Settings
    from paperpost.subscribers import LoadedSubscriber

app = typer.Typer(
    help="paperpost: personal email digests from the Hugging Face Daily Papers listing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold addresses and secrets
)
subscribers_app = typer.Typer(
    help="Add, remove, list and check subscriber YAML files.", no_args_is_help=True
)
app.add_typer(subscribers_app, name="subscribers")
db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
feedback_app = typer.Typer(
    help="Move readers' votes between databases (JSON lines).", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SourcesArg = Annotated[list[str], typer.Argument(help="Files, folders, globs or http(s) URLs.")]


def main() -> None:
    """The ``paperpost`` command: a configuration error is one line per variable, exit 2;
    a database or file-system error is one line saying what to do, exit 7 or 8."""
    from paperpost.errors import ConfigError

    try:
        app()
    except ConfigError as exc:
        for line in exc.lines:
            err.print(f"[red]configuration error[/red] {escape(line)}")
        sys.exit(ExitCode.USAGE)
    except SystemExit as done:
        if "prefect" in sys.modules:
            _exit_without_teardown(done.code)
        raise
    except Exception as exc:
        fatal = _fatal(exc)
        if fatal is None:
            raise
        err.print(fatal[1])
        sys.exit(fatal[0])


def _exit_without_teardown(code: object) -> NoReturn:
    """Exit at once after a flow ran. Tearing down Prefect's thousands of modules, threads and
    objects at interpreter exit costs 1-2 CPU-seconds and writes nothing: the run has drained
    Prefect's log and event queues, and the streams are flushed here."""
    import logging

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


# errno values that mean "this file or folder cannot be used as it is"
_FILE_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
}


def _fatal(exc: BaseException) -> tuple[ExitCode, str] | None:
    """(exit code, one line) for a database or file-system error; None for anything else."""
    from paperpost.errors import DatabaseError

    alchemy = sys.modules.get("sqlalchemy.exc")  # imported only by commands that use it
    if alchemy is not None and isinstance(exc, alchemy.SQLAlchemyError):
        from paperpost.db import explain

        return ExitCode.DATABASE, f"[red]database error[/red] {escape(explain(exc))}"
    if isinstance(exc, DatabaseError):
        return ExitCode.DATABASE, f"[red]database error[/red] {escape(str(exc))}"
    if isinstance(exc, OSError) and exc.errno in _FILE_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        return ExitCode.FILESYSTEM, (
            f"[red]file-system error[/red] {escape((exc.strerror or str(exc)) + where)}; check "
            "that the folder exists, is writable by this user and has space "
            "(PAPERPOST_OUTBOX_DIR, PAPERPOST_STATE_DIR)"
        )
    return None


def _settings() -> Settings:
    from paperpost.settings import Settings

    return Settings()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Command-line options as the PAPERPOST_ variables they override, for this call only.

    Settings reach the flow through its process's environment, never as flow parameters
    (Prefect stores those in plain text).
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _today(value: str | None) -> date:
    return date.fromisoformat(value) if value else datetime.now(UTC).date()


def _database_url(db: str | None) -> str | None:
    """A ``--db`` value: a SQLAlchemy URL, or a SQLite file path."""
    return db if db is None or "://" in db else f"sqlite:///{Path(db)}"


def _read_papers(sources: list[str], settings: Settings) -> list[Paper]:
    """Parse sources without touching any state; errors go to stderr, others continue."""
    from paperpost.dumps import DumpError, distinct_papers, parse_dump
    from paperpost.fetch import display_source, expand_sources, fetch_all

    today = _today(None)
    papers: list[Paper] = []
    failed = 0
    for item in fetch_all(
        expand_sources(sources, {}, today),
        {},
        int(settings.max_dump_mb * 1e6),
        settings.fetch_timeout,
    ):
        if item.content is None:
            shown = display_source(item.source)
            err.print(f"[red]error[/red] {escape(shown)}: {escape(item.error or '')}")
            failed += 1
            continue
        try:
            parsed = parse_dump(item.content, display_source(item.source), item.captured or today)
        except DumpError as exc:
            err.print(f"[red]error[/red] {escape(str(exc))}")
            failed += 1
            continue
        for warning in parsed.warnings:
            err.print(f"[yellow]warning[/yellow] {escape(warning)}")
        papers.extend(parsed.papers)
    if failed and not papers:
        raise typer.Exit(1)
    return distinct_papers(papers)


@app.command()
def run(
    source: Annotated[
        list[str] | None, typer.Option(help="Override the sources (repeatable).")
    ] = None,
    subscribers: Annotated[Path | None, typer.Option(help="Subscribers folder or file.")] = None,
    db: Annotated[str | None, typer.Option(help="Database URL or SQLite file path.")] = None,
    outbox: Annotated[Path | None, typer.Option(help="Maildir folder for digests.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
    no_prefect: Annotated[
        bool, typer.Option("--no-prefect", help="Run the same stages in-process, without Prefect.")
    ] = False,
    today: Annotated[str | None, typer.Option(help="Run as if on this date (YYYY-MM-DD).")] = None,
) -> None:
    """Run the digest job once: fetch → diff → rank → render → send."""
    overrides = {
        "PAPERPOST_SOURCES": json.dumps(source) if source else None,
        "PAPERPOST_SUBSCRIBERS_DIR": str(subscribers) if subscribers else None,
        "PAPERPOST_DATABASE_URL": _database_url(db),
        "PAPERPOST_OUTBOX_DIR": str(outbox) if outbox else None,
    }
    day = _today(today)
    try:
        with _environment(overrides):
            settings = _settings()
            from paperpost.pipeline import preflight

            # a database that cannot be used fails here, in one line, not inside the flow
            preflight(settings)
            if no_prefect:
                summary = _run_plain(settings, day, as_json)
            else:
                from flows.local_api import LocalAPIError, run_digest

                try:
                    summary = run_digest(day)
                except LocalAPIError as exc:
                    err.print(f"[red]error[/red] {escape(str(exc))}")
                    raise typer.Exit(ExitCode.INTERNAL) from None
    except Exception as exc:  # the same lines as main(), also under typer's test runner
        fatal = _fatal(exc)
        if fatal is None:
            raise
        err.print(fatal[1])
        raise typer.Exit(fatal[0]) from None
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        _print_summary(summary, settings)
    raise typer.Exit(for_summary(summary))


def _run_plain(settings: Settings, day: date, quiet: bool) -> dict:
    from rich.progress import Progress

    from paperpost.pipeline import run_plain

    with Progress(transient=True, console=err, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("rank → render → send", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        return run_plain(settings, day, advance).to_json()


def _print_summary(summary: dict, settings: Settings) -> None:
    from paperpost.delivery import NOT_ATTEMPTED
    from paperpost.pipeline import RunSummary, SourceReport
    from paperpost.report import summary_rows

    data = dict(summary)
    data["sources"] = [SourceReport(**s) for s in summary["sources"]]
    result = RunSummary(**data)
    table = Table(title=f"paperpost run {result.run_id}", show_header=False)
    for name, value in summary_rows(result):
        table.add_row(name, Text(reply_text(value, 300)))
    out.print(table)
    for s in result.sources:
        colour = {"ingested": "green", "unchanged": "dim"}.get(s.status, "red")
        out.print(
            f"[{colour}]{s.status:>9}[/{colour}] {escape(reply_text(s.source, 300))}  "
            f"{_plural(s.papers, 'paper')}, {s.new} new"
            f"{'  ' + escape(reply_text(s.detail, 300)) if s.detail else ''}"
        )
    for error in result.invalid_subscribers:
        out.print(f"[red]invalid subscriber[/red] {escape(error)}")
    for d in result.deliveries:
        if str(d["detail"]).startswith(NOT_ATTEMPTED):
            continue  # one line for all of them, below
        if d["status"] not in {"sent", "deferred"}:  # deferred: one row per domain above
            out.print(f"[yellow]{d['status']}[/yellow] {d['address']}: {escape(str(d['detail']))}")
    if result.digests_not_attempted:
        out.print(
            f"{_plural(result.digests_not_attempted, 'digest')} not attempted after the pause; "
            "the next run sends"
        )
    if result.message:
        out.print(escape(result.message))
    if result.digests_sent and settings.delivery == "outbox":
        out.print(f"Digests written to the Maildir {settings.outbox_dir.resolve()}/new/")


@app.command()
def bounces(
    mailbox: Annotated[
        str | None,
        typer.Option(help='"imap", a Maildir folder or an mbox file (default: settings).'),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Read bounces, complaints and mailto unsubscribes; suppress who must not be mailed."""
    from paperpost.bounces import BounceError, process
    from paperpost.pipeline import require_own_key
    from paperpost.store import Store

    settings = _settings()
    if mailbox:
        settings = settings.model_copy(update={"bounce_mailbox": mailbox})
    if not settings.bounce_mailbox:
        err.print(
            "[red]error[/red] no bounce mailbox: set PAPERPOST_BOUNCE_MAILBOX (imap, a Maildir "
            "folder or an mbox file) or pass --mailbox"
        )
        raise typer.Exit(ExitCode.USAGE)
    require_own_key(settings)
    try:
        summary = process(settings, Store(settings.db_url))
    except BounceError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(summary.to_json()))
        return
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.counts.items()))
    out.print(f"processed: {counts or 'no new messages'}")
    if summary.counts.get("policy"):
        out.print(
            f"[yellow]{summary.counts['policy']} report(s) say a receiving mail system refuses "
            "our mail by policy[/yellow] (5.7.x: sender reputation, a blocklist, SPF/DKIM/DMARC); "
            "nobody was suppressed for them; check the sending IP and PAPERPOST_SENDER's domain"
        )
    for address, reason, detail in summary.suppressed:
        out.print(f"suppressed {address} ({reason}): {escape(detail)}")
    for problem in summary.unreadable:
        out.print(f"[yellow]unreadable[/yellow] {escape(problem)}")


@app.command()
def parse(
    sources: SourcesArg,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per paper.")] = False,
) -> None:
    """Parse dumps and print every distinct paper (no state is read or written)."""
    papers = _read_papers(sources, _settings())
    if jsonl:
        for paper in papers:
            sys.stdout.write(json.dumps(paper.to_json(), ensure_ascii=False) + "\n")
        return
    table = Table("id", "title", "published", "upvotes")
    for paper in papers:
        table.add_row(
            paper.id,
            Text(reply_text(paper.title, 80)),
            str(paper.published or ""),
            str(paper.upvotes or ""),
        )
    out.print(table)
    out.print(f"{_plural(len(papers), 'distinct paper')}")


def _find_subscriber(settings: Settings, email: str) -> LoadedSubscriber:
    """The valid subscriber file for ``email``, else exit 1 with where to look."""
    from paperpost.subscribers import load_subscribers

    entries, _ = load_subscribers(settings.subscribers_dir)
    match = [e for e in entries if e.subscriber.address == email.lower()]
    if not match:
        err.print(
            f"[red]error[/red] no valid subscriber {escape(email)} in {settings.subscribers_dir}; "
            "see `paperpost subscribers list` and `paperpost subscribers validate`"
        )
        raise typer.Exit(1)
    return match[0]


@app.command(name="rank")
def rank_command(
    sources: Annotated[
        list[str] | None, typer.Argument(help="Files, folders, globs or http(s) URLs.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="An interest tag (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="A tag or keyword to exclude.")] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="How many papers to show (default: 20; with --reader, their max_items: the "
            "digest's own length, which also bounds what their votes may add)."
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            help="Leave out papers scoring below this (0..1; default: the subscribers' default)."
        ),
    ] = None,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="One JSON object per paper, with the evidence.")
    ] = False,
    explain: Annotated[
        list[str] | None,
        typer.Option("--explain-tag", help="Print how a tag is read (facets), then stop."),
    ] = None,
    reader: Annotated[
        str | None,
        typer.Option(
            "--reader",
            help="Rank as this subscriber's digest would: their tags (unless --tag is given), "
            "exclusions, min_score, votes, liked examples and follows.",
        ),
    ] = None,
) -> None:
    """Rank papers for tags, best first, with the reason for each."""
    from dataclasses import replace

    from paperpost.rank import DEFAULT_MIN_SCORE, Interest, Profile, explain_tag, rank, read_tag

    unreadable = [
        t for t in [*(tag or ()), *(exclude or ()), *(explain or ())] if not read_tag(t).facets
    ]
    if unreadable:
        err.print(
            f"[red]error[/red] {escape(repr(unreadable[0]))} has no words to match (only "
            'punctuation, common words like "the", or letters outside a-z); give a topic such '
            'as "diffusion models"'
        )
        raise typer.Exit(2)
    if explain:
        for name in explain:
            for line in explain_tag(name):
                out.print(escape(line), highlight=False)
        return
    if not sources or not (tag or reader):
        err.print(
            "[red]error[/red] give dump files (or folders/URLs) and at least one --tag or --reader"
        )
        raise typer.Exit(2)
    settings = _settings()
    papers = _read_papers(sources, settings)
    if reader:
        from paperpost.feedback import rank_readers
        from paperpost.pipeline import profile_of, ranking_context, require_semantic
        from paperpost.store import Store

        entry = _find_subscriber(settings, reader)
        profile = profile_of(entry)
        if limit is not None:
            profile = replace(profile, max_items=limit)
        if tag:
            profile = replace(profile, interests=tuple(Interest(t) for t in tag))
        if exclude:
            profile = replace(profile, exclude=tuple(exclude))
        if min_score is not None:
            profile = replace(profile, min_score=min_score)
        require_semantic(settings)
        store = Store(settings.db_url)
        cache, background = ranking_context(store, settings.semantic, unstored=papers)
        ranked = rank_readers(store, papers, [entry.subscriber], [profile], background, cache)[0]
    else:
        if settings.semantic:
            err.print(
                "[yellow]note[/yellow] without --reader, rank weighs words over these dumps "
                "alone and leaves the semantic signal out (it needs the database's history); "
                "--reader EMAIL ranks as a run does"
            )
        profile = Profile(
            tuple(Interest(t) for t in tag or ()),
            tuple(exclude or ()),
            min_score=DEFAULT_MIN_SCORE if min_score is None else min_score,
            max_items=20 if limit is None else limit,
        )
        ranked = rank(papers, profile)
    if jsonl:
        for item in ranked:
            record = {
                "id": item.paper.id,
                "title": item.paper.title,
                "score": item.score,
                "matched": list(item.matched),
                "why": item.why,
                "evidence": list(item.evidence),
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    table = Table("#", "score", "title", "why")
    for number, item in enumerate(ranked, 1):
        table.add_row(
            str(number),
            f"{item.score:.2f}",
            Text(reply_text(item.paper.title, 70)),
            Text(reply_text(item.why, 300)),
        )
    out.print(table)


@app.command()
def preview(
    email: Annotated[str, typer.Argument(help="The subscriber's email address.")],
    source: Annotated[
        list[str] | None, typer.Option(help="Dumps to use (default: settings).")
    ] = None,
    output: Annotated[Path, typer.Option("--out", help="Where to write the HTML.")] = Path(
        "preview.html"
    ),
) -> None:
    """Render one subscriber's digest from dumps to an HTML file (nothing is sent or stored)."""
    from paperpost.feedback import rank_readers
    from paperpost.pipeline import profile_of, ranking_context, reader_of, require_semantic
    from paperpost.render import Edition, Renderer
    from paperpost.store import Store

    settings = _settings()
    entry = _find_subscriber(settings, email)
    address = entry.subscriber.address
    store = Store(settings.db_url)
    suppressed = store.suppressions([address]).get(address)
    if suppressed or not entry.subscriber.active:
        why = (
            f"{suppressed.reason} since {suppressed.created_at:%Y-%m-%d}"
            if suppressed
            else f"paused (active: false in {entry.path}:{entry.line})"
        )
        err.print(
            f"[yellow]note[/yellow] {escape(email)} is {escape(why)}: runs send them nothing; "
            "this preview shows what they would get"
        )
    require_semantic(settings)
    papers = _read_papers(source or settings.sources, settings)
    cache, background = ranking_context(store, settings.semantic, unstored=papers)
    profile = profile_of(entry)
    items = rank_readers(store, papers, [entry.subscriber], [profile], background, cache)[0]
    renderer = Renderer()
    edition = Edition(
        settings.sender,
        settings.secret_key.get_secret_value(),
        settings.base_url,
        _today(None),
        len(papers),
    )
    context = renderer.context(
        reader_of(entry), items, edition, "https://example.invalid/unsubscribe"
    )
    output.write_text(renderer.html(context), encoding="utf-8")
    out.print(f"{_plural(len(items), 'paper')} for {email} → {output}")


@subscribers_app.command("validate")
def subscribers_validate(
    folder: Annotated[
        Path | None, typer.Argument(help="Folder or file (default: settings).")
    ] = None,
) -> None:
    """Check every subscriber file; print every error; exit 1 if any; warn on unknown tags."""
    from paperpost.rank import tag_warnings
    from paperpost.subscribers import SubscriberErrors, iter_subscribers

    target = folder or _settings().subscribers_dir
    # each error printed as it is found and counted, not kept: a file of millions of bad
    # entries is as many lines, not as many errors in memory
    errors = SubscriberErrors(keep=0, report=lambda error: err.print(escape(str(error))))
    warnings = valid = 0
    for entry in iter_subscribers(target, errors):
        valid += 1
        for index, interest in enumerate(entry.subscriber.tags):
            for warning in tag_warnings(interest.tag):
                warnings += 1
                err.print(
                    f"[yellow]warning[/yellow] {escape(str(entry.path))}: "
                    f"{escape(entry.subscriber.email)}: tags[{index}]: {escape(warning)}"
                )
        sub = entry.subscriber
        for warning in sub.warnings():
            warnings += 1
            err.print(
                f"[yellow]warning[/yellow] {escape(str(entry.path))}:{entry.line}: "
                f"{escape(sub.email)}: {escape(warning)}"
            )
        if sub.cadence == "weekly" and sub.weekday in {"saturday", "sunday"}:
            warnings += 1
            err.print(
                f"[yellow]warning[/yellow] {escape(str(entry.path))}:{entry.line}: "
                f"{escape(sub.email)}: weekday: {sub.weekday}: the README's schedule "
                '("0 7 * * 1-5", Monday to Friday) never runs then, so this reader gets '
                "the digest at the next run after it (Monday); schedule the job on that day "
                "too or pick a weekday"
            )
    out.print(
        f"{valid} valid subscriber(s), {errors.total} error(s), {warnings} warning(s) in {target}"
    )
    if errors.total:
        raise typer.Exit(1)


@subscribers_app.command("list")
def subscribers_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON array, one object per subscriber.")
    ] = False,
) -> None:
    """List subscribers: tags, cadence, last digest, status, and why and since when an
    address is suppressed (the server's reply for a bounce)."""
    from paperpost.store import Store
    from paperpost.subscribers import load_subscribers

    settings = _settings()
    entries, errors = load_subscribers(settings.subscribers_dir)
    store = Store(settings.db_url)
    addresses = [e.subscriber.address for e in entries]
    cursors = store.cursors(addresses)
    suppressed = store.suppressions(addresses)
    rows = []
    for entry in entries:
        sub = entry.subscriber
        last = cursors.get(sub.address, (None, None))[1]
        gone = suppressed.get(sub.address)
        rows.append(
            {
                "email": sub.email,
                "tags": [t.tag for t in sub.tags],
                "cadence": sub.cadence,
                "weekday": sub.weekday if sub.cadence == "weekly" else None,
                "last_digest": last.isoformat() if last else None,
                "status": gone.reason if gone else ("active" if sub.active else "paused"),
                "since": gone.created_at.isoformat() if gone else None,
                "reason": reply_text(gone.detail) if gone and gone.detail else None,
            }
        )
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        table = Table("email", "tags", "cadence", "last digest", "status")
        table.columns[0].no_wrap = True  # an address is never cut
        table.columns[0].min_width = max((len(r["email"]) for r in rows), default=5)
        table.columns[1].overflow = table.columns[4].overflow = "fold"  # wrap, never "…"
        table.columns[2].no_wrap = True
        for row in rows:
            status = row["status"]
            if row["since"]:
                status += f" since {_day(row['since'])}"
            if row["reason"]:
                status += f"\n{escape(row['reason'])}"
            table.add_row(
                row["email"],
                Text("\n".join(reply_text(t, 100) for t in row["tags"])),
                row["cadence"] if row["weekday"] is None else f"weekly ({row['weekday']})",
                _day(row["last_digest"]) or "never",
                status,
            )
        out.print(table)
    if errors:
        err.print(
            f"{len(errors)} invalid entr{'y' if len(errors) == 1 else 'ies'}; "
            "run `paperpost subscribers validate`"
        )


def _day(stamp: str | None) -> str | None:
    return stamp[:16].replace("T", " ") if stamp else None


@subscribers_app.command("reactivate")
def subscribers_reactivate(
    email: Annotated[str, typer.Argument(help="The suppressed address.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm lifting a complaint or an unsubscribe.")
    ] = False,
) -> None:
    """Lift a suppression (bounce, complaint or unsubscribe) so the address gets digests again."""
    from paperpost.store import Store

    store = Store(_settings().db_url)
    found = store.suppression(email)
    if found is None:
        err.print(f"[red]error[/red] {escape(email)} is not suppressed; nothing to do")
        raise typer.Exit(1)
    when = found.created_at.strftime("%Y-%m-%d %H:%M")
    out.print(
        f"{found.address}: {found.reason} since {when}"
        + (f" ({escape(reply_text(found.detail))})" if found.detail else "")
    )
    if found.reason in {"complained", "unsubscribed"} and not yes:
        who = "marked a digest as spam" if found.reason == "complained" else "unsubscribed"
        err.print(
            f"[red]not reactivated[/red]: the reader {who}; mailing them again without their "
            "consent hurts the sender's reputation. If they asked to come back, run again "
            "with --yes."
        )
        raise typer.Exit(1)
    store.reactivate(found.address)
    out.print(f"{found.address} reactivated; the next run sends them digests again")


@subscribers_app.command("show")
def subscribers_show(
    email: Annotated[str, typer.Argument(help="The subscriber's email address.")],
) -> None:
    """One subscriber: tags, follows, liked examples, votes and the profile's top terms."""
    from paperpost.feedback import find_papers, tastes, votes_of
    from paperpost.pipeline import ranking_context
    from paperpost.profile import top_terms
    from paperpost.store import Store

    settings = _settings()
    entry = _find_subscriber(settings, email)
    sub = entry.subscriber
    store = Store(settings.db_url)
    out.print(f"[bold]{escape(sub.email)}[/bold]  ({escape(entry.path)}:{entry.line})")
    tags = [t.tag if t.weight == 1 else f"{t.tag} (x{t.weight:g})" for t in sub.tags]
    rows = [
        ("tags", ", ".join(tags)),
        ("exclude", ", ".join(sub.exclude) or "-"),
        ("authors", ", ".join(sub.authors) or "-"),
        ("organizations", ", ".join(sub.organizations) or "-"),
    ]
    for name, value in rows:
        out.print(f"{name:>13}: {escape(reply_text(value, 500))}")
    if sub.like:
        found = find_papers(store, sub.like)
        out.print(f"{'like':>13}:")
        for ref in sub.like:
            state = (
                escape(reply_text(found[ref].title, 200))
                if ref in found
                else "[dim]not seen yet[/dim]"
            )
            out.print(f"               {escape(reply_text(ref, 200))} → {state}")
    votes = votes_of(store, [sub.address]).get(sub.address, [])
    out.print(f"{'votes':>13}: {len(votes) or '-'}")
    for vote in reversed(votes):
        mark = "[green]more [/green]" if vote.vote > 0 else "[red]fewer[/red]"
        when = vote.voted_at.strftime("%Y-%m-%d")
        out.print(f"               {mark} {when} {escape(reply_text(vote.title, 200))}")
    taste = tastes(store, [sub])[0]
    if taste.liked and settings.semantic:
        out.print(
            f"{'profile':>13}: by meaning (PAPERPOST_SEMANTIC is on): new papers close in "
            f"meaning to the {_plural(len(taste.liked), 'liked paper')} are lifted; an "
            "embedding has no terms to list"
        )
    elif taste.liked or taste.disliked:
        terms = top_terms(taste, ranking_context(store, semantic=False)[1], 12)
        out.print(f"{'profile':>13}: " + ", ".join(f"{t} {w:+.2f}" for t, w in terms))
    else:
        out.print(f"{'profile':>13}: - (no votes or liked examples yet; tags alone rank)")


@subscribers_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The new subscriber's email address.")],
    tag: Annotated[list[str], typer.Option(help="An interest tag (repeatable).")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    cadence: Annotated[str, typer.Option(help="daily or weekly.")] = "daily",
    weekday: Annotated[str, typer.Option(help="For weekly: the day it is sent.")] = "monday",
    exclude: Annotated[list[str] | None, typer.Option(help="A tag or word to exclude.")] = None,
) -> None:
    """Write a new subscriber file (never overwrites one)."""
    from pydantic import ValidationError

    from paperpost.rank import tag_warnings
    from paperpost.subscribers import Subscriber, SubscriberFileError, add_subscriber

    folder = _settings().subscribers_dir
    fields = {
        "email": email,
        "name": name,
        "tags": tag,
        "exclude": exclude or [],
        "cadence": cadence,
        "weekday": weekday,
    }
    try:
        subscriber = Subscriber.model_validate({k: v for k, v in fields.items() if v is not None})
        path = add_subscriber(folder, subscriber)
    except ValidationError as exc:
        for problem in exc.errors():
            field = ".".join(str(p) for p in problem["loc"])
            err.print(f"[red]error[/red] {escape(field)}: {escape(problem['msg'])}")
        raise typer.Exit(1) from None
    except (SubscriberFileError, OSError) as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    out.print(f"added {subscriber.email} → {path}")
    for interest in subscriber.tags:
        for warning in tag_warnings(interest.tag):
            err.print(f"[yellow]warning[/yellow] {escape(warning)}")


@subscribers_app.command("remove")
def subscribers_remove(
    email: Annotated[str, typer.Argument(help="The subscriber's email address.")],
) -> None:
    """Remove a subscriber: deletes their file, or their entry in a list file."""
    from paperpost.subscribers import SubscriberFileError, remove_subscriber

    try:
        path = remove_subscriber(_settings().subscribers_dir, email)
    except SubscriberFileError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    out.print(f"removed {email} ({path})")


@subscribers_app.command("tags")
def subscribers_tags(
    search: Annotated[str | None, typer.Argument(help="Only topics containing this text.")] = None,
) -> None:
    """The topic vocabulary: tags the ranker understands (other tags match by their words)."""
    from paperpost.rank import vocabulary

    seen: dict[str, list[str]] = {}
    for name, topic in vocabulary().items():
        seen.setdefault(topic.id, [topic.name]).append(name)
    table = Table("tag", "topic", "also answers to")
    for tag_id, (name, *aliases) in sorted(seen.items()):
        text = " ".join([tag_id, name, *aliases]).lower()
        if search and search.lower() not in text:
            continue
        table.add_row(tag_id, name, ", ".join(a for a in aliases if a != tag_id.replace("-", " ")))
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(
    db: Annotated[str | None, typer.Option(help="Database URL or SQLite file path.")] = None,
) -> None:
    """Migrate the database to the current schema (runs also on any first use)."""
    from paperpost import schema
    from paperpost.db import create

    url = _database_url(db) or _settings().db_url
    engine = create(url)
    try:
        with engine.connect() as conn:
            before = schema.current(conn)
        after = schema.upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        out.print(f"database already at revision {after} (current)")
    else:
        out.print(f"database upgraded from {before or 'empty'} to revision {after}")


@feedback_app.command("export")
def feedback_export(
    output: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: standard output).")
    ] = None,
) -> None:
    """Write every vote as JSON lines: address, paper_id, vote, title, digest, voted_at."""
    from paperpost.feedback import export_votes
    from paperpost.store import Store

    lines = export_votes(Store(_settings().db_url))
    if output is None:
        for line in lines:
            sys.stdout.write(line + "\n")
        return
    count = 0
    with output.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
            count += 1
    err.print(f"{count} votes → {output}")


@feedback_app.command("import")
def feedback_import(
    source: Annotated[Path, typer.Argument(help="A file written by `paperpost feedback export`.")],
) -> None:
    """Load votes from JSON lines; per (address, paper) the later vote wins. All or nothing."""
    from paperpost.feedback import BadExport, parse_export, record_votes
    from paperpost.store import Store

    try:
        with source.open(encoding="utf-8") as handle:
            votes = parse_export(handle, str(source))
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error[/red] cannot read {escape(str(source))}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    except BadExport as exc:
        err.print(f"[red]error[/red] nothing imported:\n{escape(str(exc))}")
        raise typer.Exit(1) from None
    record_votes(Store(_settings().db_url), votes)
    out.print(f"imported {len(votes)} votes from {source}")


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="When to run, as cron (UTC).")] = "0 7 * * 1-5",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "digest-served",
) -> None:
    """Serve the digest flow on a cron schedule from this process (needs a Prefect server)."""
    import requests
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    problem = None
    if not api:
        problem = "PREFECT_API_URL is not set"
    else:
        try:
            requests.get(f"{api.rstrip('/')}/health", timeout=3).raise_for_status()
        except requests.RequestException as exc:
            problem = f"no Prefect server answers at {api} ({type(exc).__name__})"
    if problem:
        err.print(
            f"[red]error[/red] paperpost serve needs a running Prefect server: {problem}. "
            "Start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or use `paperpost run` from cron)."
        )
        raise typer.Exit(2)
    try:  # the checks `paperpost run` makes, now rather than in every scheduled run's log
        from paperpost.pipeline import preflight

        preflight(_settings())
    except Exception as exc:
        fatal = _fatal(exc)
        if fatal is None:
            raise
        err.print(fatal[1])
        raise typer.Exit(fatal[0]) from None
    from flows.digest import digest

    digest.serve(name=name, cron=cron)


@app.command()
def web(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the unsubscribe and vote endpoints (set PAPERPOST_BASE_URL to its public URL)."""
    from paperpost.web import server

    server(host, port).run()


@app.command()
def unsubscribe(
    token: Annotated[str, typer.Argument(help="The token from an unsubscribe link.")],
) -> None:
    """Record an unsubscribe from a signed token; later runs skip the address."""
    from paperpost.feedback import address_of
    from paperpost.store import Store
    from paperpost.unsubscribe import BadToken, read_token

    settings = _settings()
    store = Store(settings.db_url)
    try:
        address = read_token(
            settings.secret_key.get_secret_value(), token, lambda r: address_of(store, r)
        )
    except BadToken as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    new = store.suppress(address, "unsubscribed")
    out.print(f"{address} {'unsubscribed' if new else 'was already unsubscribed'}")


@app.command()
def unlock(
    owner: Annotated[
        str, typer.Argument(help="The lease's owner, as the exit-5 message shows it.")
    ],
) -> None:
    """Clear the run lease of a run that is gone for good (on another host or container).
    Only that owner's lease is cleared: one another run took meanwhile stays."""
    from paperpost.pipeline import LOCK
    from paperpost.store import Store

    store = Store(_settings().db_url)
    if not store.release_lock(LOCK, owner):
        holder = store.lock_owner(LOCK)
        err.print(
            f"[red]error[/red] {escape(owner)} does not hold the run lease "
            + (f"({escape(holder)} does now)" if holder else "(nobody does)")
            + "; nothing cleared"
        )
        raise typer.Exit(1)
    out.print(f"cleared the run lease of {escape(owner)}; the next run takes it")
