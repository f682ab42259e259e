"""``paperpost web``: the unsubscribe endpoint behind the links in every digest.

GET shows a confirmation page with a button and changes nothing (mail scanners follow
GETs); POST records the unsubscribe: the button, and RFC 8058 one-click requests from mail
clients (``List-Unsubscribe=One-Click``). Tampered tokens get a 400.
"""

from __future__ import annotations

from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.unsubscribe import BadToken, read_token

PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:-apple-system,Segoe UI,Roboto,Arial,sans-serif;max-width:32rem;
margin:3rem auto;padding:0 1rem;line-height:1.5}}button{{font-size:1rem;padding:.5rem 1rem}}
</style></head><body><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = Store(settings.db_url)
    key = settings.secret_key.get_secret_value()
    app = FastAPI(title="paperpost", docs_url=None, redoc_url=None, openapi_url=None)

    def address_or_error(token: str) -> str | HTMLResponse:
        try:
            return read_token(key, token)
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
        address = address_or_error(token)
        if isinstance(address, HTMLResponse):
            return address
        store.suppress(address, "unsubscribed")
        return page(
            "Unsubscribed",
            f"<p>{escape(address)} will get no more digests. To come back, ask whoever runs "
            "this paperpost to re-activate your subscription.</p>",
        )

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
