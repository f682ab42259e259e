"""``paperpost web``: the unsubscribe and vote endpoints behind the links in every digest.

GET shows a confirmation page with a button and changes nothing (mail scanners follow
GETs); POST records the unsubscribe (the button, and RFC 8058 one-click requests from mail
clients, ``List-Unsubscribe=One-Click``) or the "more/fewer like this" vote. Tampered,
expired or foreign tokens get a 400 and change nothing. Nothing else is tracked.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import OperationalError

from paperpost.db import explain
from paperpost.feedback import (
    VOTES,
    BadVoteToken,
    Vote,
    address_of,
    read_vote_token,
    record_click,
    voted_paper,
)
from paperpost.models import Paper
from paperpost.settings import Settings
from paperpost.store import Store, now
from paperpost.unsubscribe import (
    BadToken,
    apply_queued,
    queue_unsubscribe,
    read_token,
    token_reader,
)

if TYPE_CHECKING:
    import uvicorn

# Signed tokens in link paths act as passwords: the access log shows "/unsubscribe/…".
_TOKEN_PATH = re.compile(r"^(/(?:unsubscribe|vote/[^/?]+)/)[^/?]+")


class HideTokens(logging.Filter):
    """Take the tokens out of uvicorn's access-log lines (client, method, path, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):
            record.args = (*args[:2], _TOKEN_PATH.sub(r"\1…", args[2]), *args[3:])
        return True


def server(host: str, port: int, settings: Settings | None = None) -> uvicorn.Server:
    """``paperpost web``'s uvicorn server (refuses the development key; no tokens logged)."""
    import uvicorn

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="info")
    logging.getLogger("uvicorn.access").addFilter(HideTokens())
    return uvicorn.Server(config)


PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:-apple-system,Segoe UI,Roboto,Arial,sans-serif;max-width:32rem;
margin:3rem auto;padding:0 1rem;line-height:1.5}}button{{font-size:1rem;padding:.5rem 1rem}}
</style></head><body><h1>{title}</h1>{body}</body></html>"""


QUEUE_RETRY = 30.0  # seconds between tries to record queued unsubscribes


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.require_own_key("paperpost web")
    store = Store(settings.db_url)
    key = settings.secret_key.get_secret_value()
    log = logging.getLogger("paperpost.web")

    def record_queued() -> int:
        return apply_queued(settings.state_dir, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def retry() -> None:
            while True:
                try:
                    await asyncio.to_thread(record_queued)
                except OperationalError as exc:
                    log.warning("queued unsubscribes not recorded yet: %s", explain(exc))
                await asyncio.sleep(QUEUE_RETRY)

        task = asyncio.create_task(retry())
        yield
        task.cancel()

    app = FastAPI(
        title="paperpost", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    @app.exception_handler(OperationalError)
    def database_busy(request: Request, exc: OperationalError) -> HTMLResponse:
        """A locked or unreachable database: 503 with Retry-After and one log line, never a
        bare 500 and a traceback (a one-click unsubscribe's sender may try again)."""
        where = request.url.path.split("/")[1]
        log.warning("%s not recorded: %s", where, explain(exc))
        response = page(
            "Please try again in a minute",
            "<p>This paperpost is busy and could not record your request. Nothing was "
            "changed; please open the link again in a minute.</p>",
            503,
        )
        response.headers["Retry-After"] = "60"
        return response

    def address_or_error(token: str) -> str | HTMLResponse:
        try:
            return read_token(key, token, lambda reader_id: address_of(store, reader_id))
        except BadToken as exc:
            return page("Link not valid", f"<p>{escape(str(exc))}.</p>", 400)

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def confirm(token: str) -> HTMLResponse:
        address = address_or_error(token)
        if isinstance(address, HTMLResponse):
            return address
        return page(
            "Unsubscribe from paperpost?",
            f"<p>Stop sending paper digests to <strong>{escape(address)}</strong>?</p>"
            f'<form method="post" action="/unsubscribe/{escape(token)}">'
            '<button type="submit">Unsubscribe</button></form>',
        )

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe(token: str) -> HTMLResponse:
        # the mailbox provider's one-click POST is not retried: whenever the database
        # cannot take it (or cannot even say whose reader id this is), keep it on disk
        try:
            reader = token_reader(key, token)
        except BadToken as exc:
            return page("Link not valid", f"<p>{escape(str(exc))}.</p>", 400)
        address: str | HTMLResponse | None = None
        try:
            address = address_or_error(token)
            if isinstance(address, HTMLResponse):
                return address
            record_queued()
            store.suppress(address, "unsubscribed")
        except OperationalError as exc:
            queue_unsubscribe(settings.state_dir, now().isoformat(), address, reader)
            log.warning("unsubscribe queued (the database is busy): %s", explain(exc))
        who = escape(address) if isinstance(address, str) else "This address"
        return page(
            "Unsubscribed",
            f"<p>{who} will get no more digests. To come back, ask whoever runs "
            "this paperpost to re-activate your subscription.</p>",
        )

    def vote_or_error(direction: str, token: str) -> tuple[str, str, Paper] | HTMLResponse:
        """(address, digest, paper) of a valid vote link, else the error page to show."""
        if direction not in VOTES:
            return page("Not found", "<p>Vote links end in /more/… or /fewer/….</p>", 404)
        try:
            link = read_vote_token(key, token)
        except BadVoteToken as exc:
            return page("Link not valid", f"<p>{escape(str(exc))}.</p>", 400)
        address = address_of(store, link.reader_id)
        paper = voted_paper(store, address, link) if address is not None else None
        if address is None or paper is None:
            return page(
                "Link not valid",
                "<p>This vote link is for a reader, paper or digest this paperpost has no "
                "record of sending (was its database replaced?).</p>",
                400,
            )
        return address, link.digest, paper

    def vote_form(direction: str, token: str, label: str) -> str:
        return (
            f'<form method="post" action="/vote/{direction}/{escape(token)}">'
            f'<button type="submit">{label}</button></form>'
        )

    @app.get("/vote/{direction}/{token}", response_class=HTMLResponse)
    def confirm_vote(direction: str, token: str) -> HTMLResponse:
        found = vote_or_error(direction, token)
        if isinstance(found, HTMLResponse):
            return found
        title = escape(found[2].title)
        effect = (
            "Your future digests will lean toward papers like this one."
            if direction == "more"
            else "Once two of your \u201cfewer\u201d papers agree, papers like them that your "
            "topics match only weakly move down your digests. It also takes back a "
            "\u201cmore like this\u201d on this paper."
        )
        return page(
            f"{direction.capitalize()} like this?",
            f"<p><strong>{title}</strong></p><p>{effect} Your topics stay as they are.</p>"
            + vote_form(direction, token, f"Yes, {direction} like this"),
        )

    @app.post("/vote/{direction}/{token}", response_class=HTMLResponse)
    def vote(direction: str, token: str) -> HTMLResponse:
        found = vote_or_error(direction, token)
        if isinstance(found, HTMLResponse):
            return found
        address, digest, paper = found
        click = Vote(address, paper.id, VOTES[direction], paper.title, digest, now())
        if not record_click(store, click):  # never say "noted" for a vote that was not kept
            return page(
                "Not recorded",
                "<p>Your vote could not be recorded. Please try the link again later.</p>",
                409,
            )
        other = "fewer" if direction == "more" else "more"
        noted = "You will see more" if direction == "more" else "Noted: fewer"
        return page(
            "Thanks, noted",
            f"<p>{noted} papers like <strong>{escape(paper.title)}</strong>."
            "</p><p>Changed your mind? Your last vote on a paper is the one that counts.</p>"
            + vote_form(other, token, f"{other.capitalize()} like this instead"),
        )

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
