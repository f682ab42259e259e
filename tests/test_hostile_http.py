"""Hostile HTTP sources, served for real on 127.0.0.1: every one fails alone with a clear
reason (or is read correctly), within a bounded time, and the other sources are served."""

from __future__ import annotations

import gzip
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from raw_http import RawHttpServer, respond

from conftest import EXAMPLE_API_DAY, EXAMPLE_DUMP
from paperpost.fetch import DEADLINE_READS, fetch_all
from smtp_server import self_signed

DUMP = EXAMPLE_DUMP.read_bytes()
LIMIT = 2_000_000


@pytest.fixture
def server() -> Iterator[RawHttpServer]:
    running = RawHttpServer()
    yield running
    running.close()


def fetch(server: RawHttpServer, *paths: str, read: float = 5.0) -> dict[str, object]:
    urls = [server.url("/" + p) for p in paths]
    return {r.source.rsplit("/", 1)[1]: r for r in fetch_all(urls, {}, LIMIT, read)}


def trickle(head: bytes, body: bytes, server: RawHttpServer, pause: float = 0.05):
    """A handler that sends one byte at a time, forever if the body is endless."""

    def handler(conn: socket.socket, _: str) -> None:
        conn.sendall(head)
        index = 0
        while not server.stop.is_set():
            if pause:
                conn.sendall(body[index % len(body) : index % len(body) + 1])
                time.sleep(pause)
            else:
                conn.sendall(body)
            index += 1

    return handler


# path -> (handler, expected status, words of the expected error or None)
def hostile_routes(server: RawHttpServer) -> dict[str, tuple[object, str, str | None]]:
    gz = gzip.compress(DUMP)
    return {
        "bad-length": (
            lambda c, _: respond(c, DUMP, "Content-Length: abc"),
            "fetched",
            None,
        ),
        "negative-length": (
            lambda c, _: respond(c, DUMP, "Content-Length: -5"),
            "fetched",
            None,
        ),
        "gzip-unlabelled": (
            lambda c, _: respond(c, gz, "Content-Type: application/gzip"),
            "fetched",
            None,
        ),
        "gzip-truncated": (
            lambda c, _: respond(c, gz[: len(gz) // 2], "Content-Type: application/gzip"),
            "failed",
            "gzip-compressed dump is truncated",
        ),
        "gzip-bomb": (
            lambda c, _: respond(c, gzip.compress(b"a" * (LIMIT * 3)), "Content-Encoding: gzip"),
            "failed",
            "over the 2 MB limit",
        ),
        "gzip-bomb-unlabelled": (
            lambda c, _: respond(c, gzip.compress(b"a" * (LIMIT * 3))),
            "failed",
            "(after decompressing)",
        ),
        "encoding-lie": (
            lambda c, _: respond(c, DUMP, "Content-Encoding: gzip"),
            "failed",
            "says the body is compressed (Content-Encoding) but it is not",
        ),
        "to-file": (
            lambda c, _: respond(c, b"", "Location: file:///etc/passwd", status="302 Found"),
            "failed",
            "redirected to an address that is not http(s)",
        ),
        "loop": (
            lambda c, _: respond(c, b"", "Location: /loop", status="302 Found"),
            "failed",
            "too many redirects",
        ),
        # ATTACK5 #12: before, "cannot connect (server down?)" for a server that answered
        "many-headers": (
            lambda c, _: respond(c, DUMP, *(f"X-H{i}: {i}" for i in range(150))),
            "failed",
            "could not be read (got more than 100 headers)",
        ),
        "endless": (
            trickle(b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 65536, server, pause=0),
            "failed",
            "over the 2 MB limit",
        ),
    }


def test_hostile_responses_fail_alone_with_a_reason(server: RawHttpServer) -> None:
    routes = hostile_routes(server)
    for name, (handler, _, _) in routes.items():
        server.routes["/" + name] = handler  # type: ignore[assignment]
    server.routes["/good"] = lambda c, _: respond(c, DUMP, f"Content-Length: {len(DUMP)}")
    results = fetch(server, *routes, "good")
    assert results["good"].status == "fetched" and results["good"].content == DUMP
    for name, (_, status, words) in routes.items():
        result = results[name]
        assert result.status == status, (name, result.error)
        if status == "fetched":
            assert result.content == DUMP, name
        else:
            assert words in result.error and "\n" not in result.error, (name, result.error)


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_server_trickling_bytes_is_cut_off_at_the_deadline(
    server: RawHttpServer, where: str
) -> None:
    """Each byte comes well within the read timeout, so only the deadline ends it."""
    read = 0.4
    if where == "body":
        handler = trickle(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", DUMP, server)
    else:
        handler = trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 60_000, server)
    server.routes["/slow"] = handler
    server.routes["/good"] = lambda c, _: respond(c, DUMP, f"Content-Length: {len(DUMP)}")
    started = time.monotonic()
    results = fetch(server, "slow", "good", read=read)
    elapsed = time.monotonic() - started
    assert results["slow"].status == "failed"
    assert f"took over {DEADLINE_READS * read:g} s" in results["slow"].error
    assert results["good"].status == "fetched"
    assert elapsed < DEADLINE_READS * read + 3


def test_over_https_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline watches the TCP socket under TLS: a trickled HTTPS body is cut off, a
    normal one is read."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trust the test certificate
    server = RawHttpServer(tls=context)
    try:
        server.routes["/slow"] = trickle(b"HTTP/1.1 200 OK\r\n\r\n", DUMP, server)
        server.routes["/good"] = lambda c, _: respond(c, DUMP, f"Content-Length: {len(DUMP)}")
        results = fetch(server, "slow", "good", "good", read=0.4)
    finally:
        server.close()
    assert results["good"].status == "fetched" and results["good"].content == DUMP
    assert results["slow"].status == "failed" and "took over" in results["slow"].error


def test_an_https_source_redirected_to_plain_http_is_refused_by_name(
    server: RawHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: requests followed https -> http like any redirect, so the dump came over a
    connection anyone on the way could read and change."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    secure = RawHttpServer(tls=context)
    plain = server.url("/dump")
    server.routes["/dump"] = lambda c, _: respond(c, DUMP, f"Content-Length: {len(DUMP)}")
    try:
        secure.routes["/down"] = lambda c, _: respond(c, b"", f"Location: {plain}", status="301 X")
        secure.routes["/hop"] = lambda c, _: respond(c, b"", "Location: /down", status="302 X")
        secure.routes["/up"] = lambda c, _: respond(c, b"", "Location: /good", status="302 X")
        secure.routes["/good"] = lambda c, _: respond(c, DUMP, f"Content-Length: {len(DUMP)}")
        sources = [secure.url(p) for p in ("/down", "/hop", "/up")] + [plain]
        results = {r.source: r for r in fetch_all(sources, {}, LIMIT, 5.0)}
    finally:
        secure.close()
    for path in ("/down", "/hop"):
        result = results[secure.url(path)]
        assert result.status == "failed" and result.content is None
        assert result.error.startswith(
            f"{secure.url('/down')} redirected from https to plain http ({plain}); refused"
        ), result.error
    assert results[secure.url("/up")].content == DUMP  # https -> https is followed
    assert results[plain].content == DUMP  # a plain http source is the operator's choice


def test_a_lying_capture_date_falls_back_to_the_runs_date(
    server: RawHttpServer, tmp_path: Path
) -> None:
    """The capture date gives a text dump's papers their year. Before: `Last-Modified: Fri,
    31 Dec 9999 23:59:59 -1200` (year 10000 in UTC) failed the source with an
    OverflowError; `Mon, 01 Jan 0001` refused the dump as "'Nov 24' is not a real date"; a
    file dated 1970 dated its papers 1969."""
    from datetime import date

    from paperpost.dumps import parse_dump

    lies = {
        "far": "Fri, 31 Dec 9999 23:59:59 -1200",
        "year1": "Mon, 01 Jan 0001 00:00:00 GMT",
        "1970": "Thu, 01 Jan 1970 00:00:00 GMT",
        "future": "Tue, 01 Jan 2999 00:00:00 GMT",
    }
    for name, value in lies.items():
        server.routes["/" + name] = lambda c, _, v=value: respond(c, DUMP, f"Last-Modified: {v}")
    old = tmp_path / "old.txt"
    old.write_bytes(DUMP)
    os.utime(old, (0, 0))
    results = fetch(server, *lies)
    (local,) = fetch_all([str(old)], {}, LIMIT, 5.0)
    today = date(2026, 11, 25)
    for result in [*results.values(), local]:
        assert result.status == "fetched" and result.captured is None, result
        papers = parse_dump(result.content, result.source, result.captured or today).papers
        assert papers and all(p.published is None or p.published.year >= 2025 for p in papers)


def test_an_api_day_whose_pages_add_up_past_the_limit_is_refused(server: RawHttpServer) -> None:
    """Each page was held to the size limit, their sum was not: a server answering every
    page with a full one (100 items) made a day of 50 pages, 25 times the limit here."""
    item = json.dumps({"paper": {"id": "2611.00001", "title": "T", "summary": "x" * 9_800}})
    page = ("[" + ",".join([item] * 100) + "]").encode()  # 1 MB, under the 2 MB limit
    server.routes["/api/daily_papers"] = lambda c, _: respond(c, page)
    (result,) = fetch_all([server.url("/api/daily_papers?date=2026-11-24")], {}, LIMIT, 5.0)
    assert result.status == "failed" and result.content is None
    assert result.error.startswith("3.0 MB is over the 2 MB limit for one dump"), result.error
    assert result.error.endswith("(3 pages)")


def test_once_an_api_day_stalls_its_other_days_wait_for_the_next_run(
    server: RawHttpServer,
) -> None:
    """ATTACK6 #18. Before: a trickling API cost every missing or failed weekday its own
    deadline (6 x PAPERPOST_FETCH_TIMEOUT, 2 minutes by default), one after another, one
    more day every weekday, before anyone got a digest. Now the first day that stalls fails
    the other days of that API at once (retried next run); other sources, another API on
    the same host and the next run are not affected."""
    asked: list[str] = []
    slow = trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", b"[", server)

    def api(conn: socket.socket, target: str) -> None:
        asked.append(target)
        slow(conn, target)

    server.routes["/api/daily_papers"] = api
    day = EXAMPLE_API_DAY.read_bytes()
    server.routes["/mirror/api/daily_papers"] = lambda c, _: respond(c, day)
    server.routes["/dump"] = lambda c, _: respond(c, DUMP)
    days = [server.url(f"/api/daily_papers?date=2026-11-{d}") for d in (16, 17, 18, 19, 20)]
    mirror = server.url("/mirror/api/daily_papers?date=2026-11-23")
    results = fetch_all([*days, mirror, server.url("/dump")], {}, LIMIT, 0.2)
    assert {target.split("&")[0] for target in asked} == {"/api/daily_papers?date=2026-11-16"}
    first, *others, served, dump = results
    assert first.status == "failed" and "took over 1.2 s" in first.error
    for result in others:
        assert result.status == "failed" and result.error == (
            f"not tried this run: {days[0]} of the same API failed first ({first.error}); "
            "will retry next run"
        )
    assert served.status == "fetched" and served.content == day
    assert dump.status == "fetched" and dump.content == DUMP


def test_a_run_with_a_hostile_source_serves_the_others(
    server: RawHttpServer, tmp_path: Path
) -> None:
    """The real CLI: a header that used to crash the whole run (exit 1, no digest) now
    fails its source alone; the local dumps are ingested and the digest written; the
    source URL's password is not shown."""
    server.routes["/dump"] = lambda c, _: respond(c, b"[", "Content-Length: 1x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERPOST_")}
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "a.txt").write_bytes(DUMP)
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ann.yaml").write_text("email: ann@example.org\ntags: [agents]\n")
    # ATTACK6 #10: a pre-signed URL's query, and one that requests cannot even parse
    signed = server.url("/signed?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=9f2c1d0e7b6a5f")
    server.routes["/signed"] = lambda c, _: respond(c, DUMP)
    unparsable = "http://127.0.0.1:99999/dump?access_token=ghp_SECRETSECRET"
    sources = [server.url("/dump").replace("//", "//ann:s3cret@"), str(dumps), signed, unparsable]
    env |= {
        "PAPERPOST_SOURCES": json.dumps(sources),
        "PAPERPOST_SUBSCRIBERS_DIR": str(subs),
        "PAPERPOST_STATE_DIR": str(tmp_path / "state"),
        "PAPERPOST_OUTBOX_DIR": str(tmp_path / "outbox"),
        "PAPERPOST_SEND_EMPTY": "true",
    }
    result = subprocess.run(
        [sys.executable, "-m", "paperpost", "run", "--no-prefect"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "the file is truncated" in result.stdout + result.stderr  # the hostile one
    # before: the source's credentials were printed (and stored in each paper's record)
    assert "s3cret" not in result.stdout + result.stderr and "//***@127.0.0.1" in result.stdout
    # before: query values were printed, and stored in runs.summary (the Prefect artefact's
    # source); now only their names are shown
    assert "/signed?X-Amz-Credential=***&X-Amz-Signature=***" in result.stdout
    assert "127.0.0.1:99999/dump?access_token=***" in result.stdout
    with sqlite3.connect(tmp_path / "state" / "paperpost.db") as db:
        ((summary,),) = db.execute("SELECT summary FROM runs").fetchall()
    for secret in ("s3cret", "AKIAEXAMPLE", "9f2c1d0e7b6a5f", "ghp_SECRETSECRET"):
        assert secret not in result.stdout + result.stderr + summary
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 1
