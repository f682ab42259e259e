from __future__ import annotations

import json
import time
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from conftest import EXAMPLE_API_DAY, EXAMPLE_DUMP
from paperpost.dumps import parse_dump
from paperpost.fetch import (
    api_day_urls,
    display_source,
    expand_sources,
    fetch_all,
    fetch_api_day,
    fetch_url,
    redact,
    session,
)
from paperpost.store import FetchState

LIMIT = 5_000_000
DUMP = EXAMPLE_DUMP.read_bytes()


def fetch_one(url: str, known: FetchState | None = None, limit: int = LIMIT, read: float = 5.0):
    return fetch_url(url, known, limit, session(retries=2, backoff=0.01), (2.0, read))


def test_etag_makes_an_unchanged_dump_a_304(httpserver: HTTPServer) -> None:
    def handler(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(
            DUMP, headers={"ETag": '"v1"', "Last-Modified": "Tue, 24 Nov 2026 08:00:00 GMT"}
        )

    httpserver.expect_request("/dump.txt").respond_with_handler(handler)
    first = fetch_one(httpserver.url_for("/dump.txt"))
    assert first.status == "fetched" and first.content == DUMP and first.etag == '"v1"'
    assert first.captured.isoformat() == "2026-11-24"
    again = fetch_one(
        httpserver.url_for("/dump.txt"),
        FetchState(first.etag, first.last_modified, first.content_hash),
    )
    assert again.status == "unchanged" and again.content is None


def test_same_content_without_validators_is_unchanged(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/dump.txt").respond_with_data(DUMP)
    first = fetch_one(httpserver.url_for("/dump.txt"))
    again = fetch_one(httpserver.url_for("/dump.txt"), FetchState(None, None, first.content_hash))
    assert again.status == "unchanged"


def test_a_304_to_a_request_that_was_not_conditional_is_a_failed_source(
    httpserver: HTTPServer,
) -> None:
    """ATTACK6 #9. Before: a cache answering 304 to every GET made a source that was never
    read "unchanged … since the last run" forever (exit 0, no paper ever delivered). A 304 is
    "unchanged" only when we asked with an ETag or a date."""
    asked: list[tuple[str | None, str | None]] = []

    def handler(request: Request) -> Response:
        asked.append(
            (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
        )
        return Response(status=304)

    httpserver.expect_request("/dump.txt").respond_with_handler(handler)
    url = httpserver.url_for("/dump.txt")
    first = fetch_one(url)  # nothing stored yet
    assert first.status == "failed" and first.content is None
    assert first.error.startswith(
        "the server answered 304 Not Modified to a request that was not conditional"
    )
    hashed = fetch_one(url, FetchState(None, None, "abc"))  # stored, but no validator to send
    assert hashed.status == "failed"
    again = fetch_one(url, FetchState('"v1"', "Tue, 24 Nov 2026 08:00:00 GMT", "abc"))
    assert again.status == "unchanged" and again.content_hash == "abc"
    assert asked == [(None, None), (None, None), ('"v1"', "Tue, 24 Nov 2026 08:00:00 GMT")]


def test_5xx_is_retried_then_succeeds(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/d").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/d").respond_with_data(DUMP)
    result = fetch_one(httpserver.url_for("/d"))
    assert result.status == "fetched" and result.content == DUMP


def test_persistent_500_is_a_failure_not_an_exception(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/d").respond_with_data("oops", status=500)
    result = fetch_one(httpserver.url_for("/d"))
    assert result.status == "failed" and "500" in result.error


def test_404_names_the_problem(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    result = fetch_one(httpserver.url_for("/missing"))
    assert result.status == "failed" and "HTTP 404" in result.error


def test_read_timeout(httpserver: HTTPServer) -> None:
    def slow(_: Request) -> Response:
        time.sleep(1.5)
        return Response(DUMP)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    result = fetch_url(httpserver.url_for("/slow"), None, LIMIT, session(retries=0), (2.0, 0.3))
    assert result.status == "failed" and "timed out" in result.error


def test_truncated_body_is_reported(httpserver: HTTPServer) -> None:
    def short(_: Request) -> Response:
        response = Response(DUMP[:1000])
        response.headers["Content-Length"] = str(len(DUMP))
        response.automatically_set_content_length = False
        return response

    httpserver.expect_request("/short").respond_with_handler(short)
    result = fetch_url(httpserver.url_for("/short"), None, LIMIT, session(retries=0), (2.0, 2.0))
    assert result.status == "failed"
    assert "truncated" in result.error or "closed" in result.error


def test_size_cap(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/big").respond_with_data(b"x" * 60_000)
    result = fetch_one(httpserver.url_for("/big"), limit=50_000)
    assert result.status == "failed" and "over the" in result.error


def test_down_server_is_a_failure(unused_port: int) -> None:
    result = fetch_one(f"http://127.0.0.1:{unused_port}/x")
    assert result.status == "failed" and "cannot connect" in result.error


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_sources_folder_glob_and_missing_file(tmp_path) -> None:
    (tmp_path / "a.txt").write_bytes(DUMP)
    (tmp_path / "b.json").write_text("[]")
    (tmp_path / "notes.md").write_text("ignored")
    expanded = expand_sources([str(tmp_path), str(tmp_path / "*.txt")], {}, None)
    assert expanded == [str(tmp_path / "a.txt"), str(tmp_path / "b.json"), str(tmp_path / "a.txt")]
    results = fetch_all([str(tmp_path / "a.txt"), str(tmp_path / "nope.txt")], {}, LIMIT, 5)
    assert [r.status for r in results] == ["fetched", "failed"]
    assert "no such file" in results[1].error


def test_api_range_skips_weekends_and_resumes_at_last_day() -> None:
    from datetime import date

    base = "https://huggingface.co/api/daily_papers?limit=100"
    urls = api_day_urls(base, date(2026, 11, 19), date(2026, 11, 24))
    days = ["2026-11-19", "2026-11-20", "2026-11-23", "2026-11-24"]
    assert [u.rsplit("date=", 1)[1] for u in urls] == days
    assert all("limit=100" in u for u in urls)


def test_a_day_after_today_in_the_fetch_states_does_not_stop_the_api_range() -> None:
    """Before: an ingested `?date=2062-11-24` (a typo for 2026) made the range skip every
    day until 2062, and `?date=9999-12-31` crashed every run (no next day: OverflowError)."""
    from datetime import date

    from paperpost.fetch import last_api_days
    from paperpost.store import FetchState

    base = "https://huggingface.co/api/daily_papers"
    known = {
        f"{base}?date={day}": FetchState(None, None, None)
        for day in ("2026-11-19", "2062-11-24", "9999-12-31", "not-a-day")
    }
    today = date(2026, 11, 24)
    assert last_api_days([base], known, today) == {base: date(2026, 11, 19)}
    urls = expand_sources([base], last_api_days([base], known, today), today)
    days = ["2026-11-19", "2026-11-20", "2026-11-23", "2026-11-24"]
    assert [u.rsplit("date=", 1)[1] for u in urls] == days


def test_api_day_follows_pages_and_skips_unchanged_days(httpserver: HTTPServer) -> None:
    items = json.loads(EXAMPLE_API_DAY.read_text())  # 3 papers: pages of 2

    def handler(request: Request) -> Response:
        page, limit = int(request.args["p"]), int(request.args["limit"])
        assert request.args["date"] == "2026-08-10"
        body = json.dumps(items[page * limit : (page + 1) * limit])
        return Response(body, headers={"ETag": '"day-v1"'}, content_type="application/json")

    httpserver.expect_request("/api/daily_papers").respond_with_handler(handler)
    url = httpserver.url_for("/api/daily_papers") + "?date=2026-08-10"
    http = session(retries=0)
    day = fetch_api_day(url, None, LIMIT, http, (2.0, 2.0), limit=2)
    assert day.status == "fetched" and day.source == url
    parsed = parse_dump(day.content, url, date(2026, 11, 25))
    assert [p.arxiv_id for p in parsed.papers] == [i["paper"]["id"] for i in items]
    again = fetch_api_day(
        url, FetchState(day.etag, None, day.content_hash), LIMIT, http, (2.0, 2.0), limit=2
    )
    assert again.status == "unchanged"


def test_oversized_local_file_is_refused(tmp_path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2_000_000)
    (result,) = fetch_all([str(big)], {}, 1_000_000, 5)
    assert result.status == "failed" and "2.0 MB is over the 1 MB limit" in result.error


def test_sources_that_are_not_regular_files_fail_alone(tmp_path) -> None:
    """Before: a pipe named *.txt in a dumps folder hung the run forever (and a link to
    /dev/zero would have read until memory ran out)."""
    import os

    folder = tmp_path / "dumps"
    folder.mkdir()
    (folder / "good.txt").write_bytes(DUMP)
    os.mkfifo(folder / "pipe.txt")
    (folder / "zero.txt").symlink_to("/dev/zero")
    (folder / "dir.json").mkdir()
    sources = expand_sources([str(folder)], {}, date(2026, 11, 25))
    results = {r.source.rsplit("/", 1)[1]: r for r in fetch_all(sources, {}, LIMIT, 5.0)}
    assert results["good.txt"].status == "fetched"
    for name in ("pipe.txt", "zero.txt", "dir.json"):
        assert results[name].status == "failed"
        assert "not a regular file" in results[name].error


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, "3600"), (429, "999999999"), (503, "Fri, 01 Jan 2100 00:00:00 GMT")],
)
def test_a_retry_after_beyond_the_deadline_fails_that_source_alone(
    httpserver: HTTPServer, status: int, retry_after: str
) -> None:
    """ATTACK5 #3: urllib3 slept for whatever Retry-After said (hours; an HTTP date decades
    ahead), in time.sleep, which the download's deadline (6x the read timeout) cannot cut
    short; every other source and every reader waited. Now a wait that does not fit in the
    deadline ends that download at once, and the other source is fetched."""
    import threading

    httpserver.expect_request("/busy").respond_with_data(
        "", status=status, headers={"Retry-After": retry_after}
    )
    httpserver.expect_request("/ok").respond_with_data(DUMP)
    results: list = []
    sources = [httpserver.url_for("/busy"), httpserver.url_for("/ok")]
    worker = threading.Thread(
        target=lambda: results.extend(fetch_all(sources, {}, LIMIT, 5.0)), daemon=True
    )
    worker.start()
    worker.join(20)  # the deadline is 6 x 5 s; a wait within it would still be under 20 s
    assert not worker.is_alive(), "the fetch is still waiting for Retry-After"
    busy, ok = results
    assert busy.status == "failed" and "Retry-After" in busy.error
    assert "will retry next run" in busy.error and str(status) in busy.error
    assert ok.status == "fetched" and ok.content == DUMP
    assert sum(1 for r, _ in httpserver.log if r.path == "/busy") == 1


def test_a_short_retry_after_is_still_honoured(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/d").respond_with_data(
        "", status=503, headers={"Retry-After": "0"}
    )
    httpserver.expect_ordered_request("/d").respond_with_data(DUMP)
    result = fetch_one(httpserver.url_for("/d"))
    assert result.status == "fetched" and result.content == DUMP


# ATTACK6 #10: a secret in a source URL (userinfo, a query value, the fragment) never shows.
_SECRET = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789+/=%_-.~", min_size=8, max_size=40)
_NAME = st.sampled_from(
    ["token", "access_token", "X-Amz-Signature", "X-Amz-Credential", "sig", "key"]
)


@given(
    secrets=st.lists(_SECRET, min_size=1, max_size=4),
    names=st.lists(_NAME, min_size=4, max_size=4),
    user=st.booleans(),
    fragment=st.booleans(),
    day=st.dates(),
    path=st.sampled_from(["/dump.txt", "/api/daily_papers", "/", ""]),
)
def test_a_source_urls_secrets_are_shown_as_stars_in_the_source_and_its_errors(
    secrets: list[str], names: list[str], user: bool, fragment: bool, day, path: str
) -> None:
    """Before: ``display_source`` hid only ``user:password@``: a pre-signed S3 URL's
    signature or an ``?access_token=`` was printed in the run summary, stored in
    ``runs.summary`` and published in the Prefect artefact. Now every query value but the
    day and page paperpost itself writes is ``***``, in the source and in any error text
    quoting the URL as sent (as written, percent-decoded or percent-encoded)."""
    from urllib.parse import quote, unquote_plus

    from requests.utils import requote_uri

    query = "&".join(f"{n}={v}" for n, v in zip(names, secrets, strict=False))
    userinfo = f"ann:{quote(secrets[0], safe='')}@" if user else ""
    url = f"https://{userinfo}dumps.example.org{path}?date={day}&{query}"
    url += f"#{secrets[-1]}" if fragment else ""
    shown = display_source(url)
    assert shown.startswith(f"https://{'***@' if user else ''}dumps.example.org{path}?date={day}&")
    for name in names[: len(secrets)]:
        assert f"{name}=***" in shown
    sent = url.split("#")[0].replace("https://" + userinfo, "https://")
    errors = [
        f"request failed: Failed to parse: {url}",
        f"Max retries exceeded with url: {sent.split('.org', 1)[1]} (Caused by x)",
        f"Invalid URL '{unquote_plus(url)}': No host supplied",
        f"redirected to {requote_uri(url.split('#')[0])} and back",  # as requests sends it
    ]
    for text in [shown] + [redact(error, url) for error in errors]:
        for secret in secrets:
            for form in {secret, unquote_plus(secret)}:
                assert form not in text, (form, text)
    assert redact("HTTP 503 after 10 s", url) == "HTTP 503 after 10 s"
