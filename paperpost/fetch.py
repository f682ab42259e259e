"""Fetch dumps: local files, folders, globs, http(s) URLs and the daily-papers API.

Returns bytes plus what is needed to skip unchanged input next time (ETag,
Last-Modified, content hash). Nothing here writes state: the caller records a
fetch only once its papers are stored, so a crash in between loses nothing.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import re
import socket
import stat
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote_plus, urlencode, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

if TYPE_CHECKING:  # only a type here: importing the store costs SQLAlchemy and Alembic
    from urllib3.response import BaseHTTPResponse

    from paperpost.store import FetchState

USER_AGENT = "paperpost/0.1 (+https://github.com/paperpost)"
DUMP_SUFFIXES = {".txt", ".json"}
API_PATH = "/api/daily_papers"
# A server that sends a byte now and then never trips the read timeout, so one download
# (headers and body, retries included) also has a deadline: this many read timeouts.
DEADLINE_READS = 6


@dataclass(frozen=True, slots=True)
class Fetched:
    """One source's outcome: ``fetched`` (content set), ``unchanged`` or ``failed``."""

    source: str
    status: str
    content: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_hash: str | None = None
    captured: date | None = None
    error: str | None = None
    stalled: bool = False  # failed because the server was too slow or could not be reached


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


# Query names whose values may be shown: paperpost writes them itself (an API day, a page)
# or they name a day. Every other value may be a credential: a pre-signed S3/GCS link
# (X-Amz-Signature, X-Goog-Credential), ?token=, ?access_token=, ?key=...
SHOWN_QUERY = frozenset({"date", "week", "month", "p", "limit"})
MASK = "***"


# scheme://netloc path ?query #fragment, for any text (urlsplit raises on some: "http://[::1/")
_URL_PARTS = re.compile(r"([^:/?#]+://)([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#(.*))?", re.S)


def display_source(source: str) -> str:
    """A source as it may be shown (run summary, errors, logs, the Prefect artefact, stored
    papers): a URL's credentials, as in ``https://user:token@host/dump``, the values of its
    query (but those of SHOWN_QUERY: ``?date=2026-11-24&token=***``) and its fragment become
    ``***``. The source itself stays the key of its fetch state."""
    if not is_url(source):
        return source
    scheme, netloc, path, query, fragment = _URL_PARTS.fullmatch(source).groups()  # type: ignore[union-attr]
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    shown = scheme + netloc + path
    if query is not None:
        shown += "?" + "&".join(_shown_pair(pair) for pair in query.split("&"))
    return shown + (f"#{MASK}" if fragment else "")


def _shown_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if not equals or not value or unquote_plus(name).strip().lower() in SHOWN_QUERY:
        return pair
    return f"{name}={MASK}"


def redact(text: str, source: str) -> str:
    """``text`` (an error about ``source``) with what :func:`display_source` hides of the
    source replaced by ``***`` where it stands as it does in a URL (``=value``,
    ``userinfo@``, ``#fragment``; as written, percent-decoded or percent-encoded):
    exception texts may quote the URL as it was sent."""
    if not is_url(source):
        return text
    _, netloc, _, query, fragment = _URL_PARTS.fullmatch(source).groups()  # type: ignore[union-attr]
    hidden: list[tuple[str, str, str]] = []  # (before, value, after)
    if "@" in netloc:
        hidden.append(("", netloc.rsplit("@", 1)[0], "@"))
    for pair in query.split("&") if query else []:
        if _shown_pair(pair) != pair:
            hidden.append(("=", pair.partition("=")[2], ""))
    if fragment:
        hidden.append(("#", fragment, ""))
    for before, value, after in hidden:
        for form in {value, unquote_plus(value), quote(value, safe="")} - {""}:
            end = re.escape(after) if after else r"(?=[&#;\s'\")\]]|$)"
            text = re.sub(re.escape(before + form) + end, before + MASK + after, text)
    return text


def _is_api_range(source: str) -> bool:
    parts = urlsplit(source)
    query = parse_qs(parts.query)
    return parts.path.rstrip("/").endswith(API_PATH) and not (
        {"date", "week", "month"} & query.keys()
    )


def expand_sources(specs: Iterable[str], api_since: dict[str, date], today: date) -> list[str]:
    """Concrete sources, in order: folders list their dumps, globs expand, and an API
    URL without ``date=`` becomes one URL per weekday from its last fetched day on."""
    out: list[str] = []
    for spec in specs:
        if is_url(spec):
            if _is_api_range(spec):
                out.extend(api_day_urls(spec, api_since.get(spec), today))
            else:
                out.append(spec)
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            found = [str(p) for p in sorted(path.iterdir()) if p.suffix in DUMP_SUFFIXES]
        elif any(ch in spec for ch in "*?["):
            found = sorted(glob.glob(str(path)))
        else:
            found = []
        # a folder without dumps or a pattern matching nothing stays, to fail with its reason
        out.extend(found or [str(path)])
    return out


def last_api_days(
    specs: Iterable[str], known: dict[str, FetchState], today: date
) -> dict[str, date]:
    """For each API range source, the latest day up to ``today`` already ingested from it
    (a later one, from a ``date=`` source with a typo such as 2062, would stop the range
    until that day, and 9999-12-31 would have no next day)."""
    out: dict[str, date] = {}
    for spec in specs:
        if not (is_url(spec) and _is_api_range(spec)):
            continue
        base = urlsplit(spec)
        for source in known:
            parts = urlsplit(source)
            if (parts.scheme, parts.netloc, parts.path) != (base.scheme, base.netloc, base.path):
                continue
            for value in parse_qs(parts.query).get("date", []):
                try:
                    day = date.fromisoformat(value)
                except ValueError:
                    continue
                if day > today:
                    continue
                if spec not in out or day > out[spec]:
                    out[spec] = day
    return out


def failed_api_days(specs: Iterable[str], failed: Iterable[str]) -> list[str]:
    """Day URLs of API range sources that failed and were never ingested: a later day's
    success moves the range past them, so they are tried again on their own."""
    bases = {_endpoint(spec) for spec in specs if is_url(spec) and _is_api_range(spec)}
    return sorted(s for s in failed if is_url(s) and _is_api_day(s) and _endpoint(s) in bases)


def _endpoint(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path


def api_day_urls(base: str, last_day: date | None, today: date, first_days: int = 3) -> list[str]:
    """One ``?date=`` URL per weekday from ``last_day`` (or the last few days) to today.

    ``last_day`` itself is fetched again: a day fetched while the listing was still filling
    (a morning run) gets its later papers; what was already seen is not news again, and an
    unchanged day costs one conditional request."""
    start = last_day if last_day else today - timedelta(days=first_days - 1)
    parts = urlsplit(base)
    urls = []
    day = start
    while day <= today:
        if day.weekday() < 5:  # the listing is empty on weekends
            query = parse_qs(parts.query)
            query["date"] = [day.isoformat()]
            urls.append(urlunsplit(parts._replace(query=urlencode(query, doseq=True))))
        day += timedelta(days=1)
    return urls


class _Deadline:
    """Ends one download at a fixed time by shutting down its connections.

    Per-read timeouts cannot stop a server that trickles a byte every few seconds (in its
    headers or its body), so every connection the download uses is registered here and
    shut down when time is up; the blocked read then fails at once. What is kept is a
    duplicate of the socket's descriptor: TLS replaces the socket object (and a shutdown
    through any descriptor ends the connection for all of them).
    """

    current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _Deadline.current.value = self
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        _Deadline.current.value = None
        with self._lock:
            for sock in self._sockets:
                sock.close()  # the duplicates only; the connection stays in its pool
            self._sockets.clear()

    @classmethod
    def watch(cls, sock: socket.socket | None) -> None:
        deadline = getattr(cls.current, "value", None)
        if deadline is None or sock is None:
            return
        try:
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
        except OSError:  # closed meanwhile
            return
        with deadline._lock:
            deadline._sockets.append(duplicate)
            if deadline.expired:
                _shut(duplicate)

    @classmethod
    def remaining(cls) -> float | None:
        """Seconds left to the current download's deadline (None outside a download)."""
        deadline = getattr(cls.current, "value", None)
        return None if deadline is None else deadline.ends - time.monotonic()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """Registers a connection with the current deadline: when it connects (``_new_conn``,
    which covers the TLS handshake) and before each response (a kept-alive connection is
    reused)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _Deadline.watch(sock)
        return sock

    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _Deadline.watch(self.sock)  # type: ignore[attr-defined]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WaitTooLong(Exception):  # not an OSError: requests would wrap it as a ConnectionError
    """The server asked (Retry-After) for a longer wait than the download's deadline leaves."""

    def __init__(self, status: int, seconds: float) -> None:
        super().__init__(f"HTTP {status} with Retry-After: {seconds:.0f} s")
        self.status, self.seconds = status, seconds


class _Retry(Retry):
    """urllib3's Retry, but a server's Retry-After never outlasts the download's deadline:
    ``time.sleep`` cannot be interrupted by shutting the connections, so a ``Retry-After:
    3600`` would hold the whole run for hours. A wait that does not fit in what is left of
    the deadline ends the download at once (it is retried next run)."""

    def sleep_for_retry(self, response: BaseHTTPResponse) -> bool:
        wait = self.get_retry_after(response)
        remaining = _Deadline.remaining()
        if wait and remaining is not None and wait >= remaining:
            raise WaitTooLong(response.status, wait)
        return super().sleep_for_retry(response)


class DowngradeRedirect(requests.exceptions.RequestException):
    """An https URL redirected to a plain http one."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(f"{source} redirected to {target}")
        self.source, self.target = source, target


class _Session(requests.Session):
    """Follows redirects, but never from https to plain http: what an https source
    promises (no one on the way reads or changes the dump) would silently be lost."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target and resp.url.lower().startswith("https:"):
            absolute = urljoin(resp.url, target)
            if absolute.lower().startswith("http:"):
                raise DowngradeRedirect(resp.url, absolute)
        return target


def session(retries: int = 3, backoff: float = 0.5) -> requests.Session:
    """A session that retries connection errors and 5xx with exponential backoff, and
    refuses a redirect from https to http."""
    s = _Session()
    retry = _Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    adapter.poolmanager.pool_classes_by_scheme = {
        "http": _WatchedHTTPPool,
        "https": _WatchedHTTPSPool,
    }
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = USER_AGENT
    return s


def _hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def fetch_file(path: str, known: FetchState | None, max_bytes: int) -> Fetched:
    file = Path(path)
    if file.is_dir() and file.suffix not in DUMP_SUFFIXES:  # a source folder without dumps
        suffixes = ", ".join(sorted(DUMP_SUFFIXES))
        return Fetched(
            path,
            "failed",
            error=f"a folder with no dump files (named *{suffixes.replace(', ', ', *')}); "
            "check the source path",
        )
    if any(ch in path for ch in "*?[") and not file.exists():
        return Fetched(path, "failed", error="the pattern matches no file; check the source")
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):  # reading a pipe or /dev/zero never ends
            return Fetched(
                path,
                "failed",
                error="not a regular file (a folder, pipe or device); remove it from the sources",
            )
        if info.st_size > max_bytes:
            return Fetched(path, "failed", error=_too_large(info.st_size, max_bytes))
        with file.open("rb") as handle:
            content = handle.read(max_bytes + 1)  # the file may have grown since
        if len(content) > max_bytes:
            return Fetched(path, "failed", error=_too_large(len(content), max_bytes))
        captured = _plausible(info.st_mtime)
    except FileNotFoundError:
        return Fetched(path, "failed", error="no such file; check the source path")
    except OSError as exc:
        return Fetched(path, "failed", error=f"cannot read: {exc.strerror or exc}")
    try:
        content = _gunzip(content, max_bytes)
    except ValueError as exc:
        return Fetched(path, "failed", error=str(exc))
    digest = _hash(content)
    if known and known.content_hash == digest:
        return Fetched(path, "unchanged", content_hash=digest)
    return Fetched(path, "fetched", content, content_hash=digest, captured=captured)


def _gunzip(content: bytes, max_bytes: int) -> bytes:
    """A gzip-compressed dump (served without ``Content-Encoding: gzip``, or saved as is)
    decompressed, up to ``max_bytes``; anything else unchanged."""
    if not content.startswith(b"\x1f\x8b"):
        return content
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(content, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(f"looks gzip-compressed but cannot be decompressed ({exc})") from None
    if len(out) > max_bytes:
        raise ValueError(_too_large(len(out), max_bytes) + " (after decompressing)")
    if not inflate.eof:
        raise ValueError("the gzip-compressed dump is truncated; download it again")
    return out


def _too_large(size: int, limit: int) -> str:
    return (
        f"{size / 1e6:.1f} MB is over the {limit / 1e6:.0f} MB limit for one dump; "
        "raise PAPERPOST_MAX_DUMP_MB if this is really a dump"
    )


def fetch_url(
    url: str,
    known: FetchState | None,
    max_bytes: int,
    http: requests.Session,
    timeout: tuple[float, float],
) -> Fetched:
    """GET with conditional headers, a size cap, retries (in ``http``) and a deadline."""
    with _Deadline(DEADLINE_READS * timeout[1]) as deadline:
        result = _get(url, known, max_bytes, http, timeout)
    if deadline.expired:  # whatever arrived is incomplete
        return Fetched(
            url,
            "failed",
            stalled=True,
            error=f"the download took over {deadline.seconds:g} s (a server sending very "
            "slowly?); will retry next run",
        )
    return result


def _get(
    url: str,
    known: FetchState | None,
    max_bytes: int,
    http: requests.Session,
    timeout: tuple[float, float],
) -> Fetched:
    headers = {}
    if known and known.etag:
        headers["If-None-Match"] = known.etag
    if known and known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    try:
        with http.get(url, headers=headers, timeout=timeout, stream=True) as response:
            if response.status_code == 304 and not headers:  # nothing to be "not modified" from
                return Fetched(
                    url,
                    "failed",
                    error="the server answered 304 Not Modified to a request that was not "
                    "conditional (no ETag or date was sent), so nothing was read; a cache or "
                    "proxy in front of it is misconfigured? Will retry next run",
                )
            if response.status_code == 304:
                return Fetched(url, "unchanged", content_hash=known.content_hash if known else None)
            if response.status_code >= 400:
                return Fetched(
                    url,
                    "failed",
                    error=f"HTTP {response.status_code} {response.reason}; the source is down "
                    "or the URL is wrong (will retry next run)",
                )
            declared = _content_length(response.headers.get("Content-Length"))
            if declared > max_bytes:
                return Fetched(url, "failed", error=_too_large(declared, max_bytes))
            body = bytearray()
            for block in response.iter_content(65536):
                body.extend(block)
                if len(body) > max_bytes:
                    return Fetched(url, "failed", error=_too_large(len(body), max_bytes))
            try:
                content = _gunzip(bytes(body), max_bytes)
            except ValueError as exc:
                return Fetched(url, "failed", error=str(exc))
            etag = response.headers.get("ETag")
            last_modified = response.headers.get("Last-Modified")
            captured = _header_date(last_modified) or _header_date(response.headers.get("Date"))
    except requests.exceptions.Timeout:
        return Fetched(
            url, "failed", stalled=True, error=f"timed out after {timeout[1]:g} s (will retry)"
        )
    except requests.exceptions.ChunkedEncodingError:
        return Fetched(
            url, "failed", error="the connection closed before the whole body arrived (truncated)"
        )
    except requests.exceptions.ContentDecodingError:
        return Fetched(
            url,
            "failed",
            error="the server says the body is compressed (Content-Encoding) but it is not; "
            "the server or a proxy is misconfigured (will retry next run)",
        )
    except requests.exceptions.InvalidSchema:
        return Fetched(
            url,
            "failed",
            error="redirected to an address that is not http(s) (file:, ftp:...); refused. "
            "Use the final http(s) URL as the source",
        )
    except DowngradeRedirect as exc:
        return Fetched(
            url,
            "failed",
            error=f"{display_source(exc.source)} redirected from https to plain http "
            f"({display_source(exc.target)}); refused: anyone on the way could read or change "
            "the dump. Use an https URL that does not redirect to http",
        )
    except WaitTooLong as exc:
        return Fetched(
            url,
            "failed",
            error=f"HTTP {exc.status}: the server asks to wait {exc.seconds:.0f} s before "
            "trying again (Retry-After), longer than this download may take; will retry "
            "next run",
        )
    except requests.exceptions.TooManyRedirects:
        return Fetched(url, "failed", error="too many redirects (a redirect loop?)")
    except requests.exceptions.RetryError as exc:
        return Fetched(url, "failed", error=f"gave up after retries: {exc}")
    except requests.exceptions.ConnectionError as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, ReadTimeoutError):
            return Fetched(
                url, "failed", stalled=True, error=f"timed out after {timeout[1]:g} s (will retry)"
            )
        broken = next(
            (
                e
                for e in (reason, exc.args[0] if exc.args else None)
                if isinstance(e, ProtocolError)
            ),
            None,
        )
        if broken is not None:  # connected, but the answer was cut off or is not HTTP
            inner = broken.args[-1] if broken.args else broken
            why = " ".join(str(inner).split())[:120] or type(inner).__name__
            return Fetched(
                url,
                "failed",
                error=f"the server's response could not be read ({why}): it closed the "
                "connection or sent a malformed response; will retry next run",
            )
        return Fetched(
            url, "failed", stalled=True, error="cannot connect (server down?); will retry next run"
        )
    except requests.exceptions.RequestException as exc:
        return Fetched(url, "failed", error=f"request failed: {exc}")
    digest = _hash(content)
    if known and known.content_hash == digest:
        return Fetched(
            url, "unchanged", etag=etag, last_modified=last_modified, content_hash=digest
        )
    return Fetched(url, "fetched", content, etag, last_modified, digest, captured)


def _content_length(value: str | None) -> int:
    """The declared body size; 0 (unknown: the streamed size is checked) if it is not
    a plain number, as servers and proxies sometimes send."""
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) <= 18 else 0


def _header_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return _plausible(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, OverflowError):
        return None


# A dump's capture date dates its papers ("Nov 24" is the latest Nov 24 on or before it). A
# date before the listing existed, or in the future, is a wrong clock or a lie: the run's
# own date is used instead.
EARLIEST_CAPTURE = date(2023, 1, 1)


def _plausible(timestamp: float) -> date | None:
    """The UTC day of a capture time, or None when it cannot be a real capture time."""
    try:
        day = datetime.fromtimestamp(timestamp, UTC).date()
    except (OverflowError, OSError, ValueError):  # beyond year 9999, or not a number
        return None
    if not EARLIEST_CAPTURE <= day <= datetime.now(UTC).date() + timedelta(days=1):
        return None
    return day


def _is_api_day(url: str) -> bool:
    parts = urlsplit(url)
    return parts.path.rstrip("/").endswith(API_PATH) and "date" in parse_qs(parts.query)


def _page_url(url: str, page: int, limit: int) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query["p"], query["limit"] = [str(page)], [str(limit)]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


def fetch_api_day(
    url: str,
    known: FetchState | None,
    max_bytes: int,
    http: requests.Session,
    timeout: tuple[float, float],
    limit: int = 100,
    max_pages: int = 50,
) -> Fetched:
    """One day of the API, following ``p``/``limit`` pages until a short page.

    The first page carries the conditional headers; the pages are joined into one JSON
    list, so the day is stored, hashed and parsed as a single dump.
    """
    first = fetch_url(_page_url(url, 0, limit), known, max_bytes, http, timeout)
    if first.status != "fetched" or first.content is None:
        return replace(first, source=url)
    pages = [first.content]
    items = _json_list_length(first.content)
    page = 1
    while items is not None and items >= limit * page and page < max_pages:
        more = fetch_url(_page_url(url, page, limit), None, max_bytes, http, timeout)
        if more.status != "fetched" or more.content is None:
            return replace(more, source=url, error=f"page {page}: {more.error}")
        count = _json_list_length(more.content)
        if not count:
            break
        pages.append(more.content)
        total = sum(len(p) for p in pages)
        if total > max_bytes:  # each page is within the limit; the day must be too
            return Fetched(
                url, "failed", error=_too_large(total, max_bytes) + f" ({page + 1} pages)"
            )
        items += count
        page += 1
    if len(pages) == 1:
        return replace(first, source=url)
    content = b"[" + b",".join(p.strip()[1:-1] for p in pages if p.strip()[1:-1].strip()) + b"]"
    digest = _hash(content)
    if known and known.content_hash == digest:
        return Fetched(url, "unchanged", content_hash=digest)
    return Fetched(url, "fetched", content, first.etag, first.last_modified, digest, first.captured)


def _json_list_length(content: bytes) -> int | None:
    """How many items a JSON list holds (None if it is not one: the parser will say why)."""
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, huge numbers, deep nesting
        return None
    return len(data) if isinstance(data, list) else None


def fetch_all(
    sources: list[str],
    known: dict[str, FetchState],
    max_bytes: int,
    read_timeout: float,
) -> list[Fetched]:
    """Fetch every source; a failure is reported in its result, never raised.

    Once a day of an API could not be read in time (too slow, timed out, unreachable), its
    other days are not tried this run: each would wait its own deadline (2 minutes by
    default), one more for every weekday the API stays slow."""
    http = session()
    results = []
    stalled: dict[tuple[str, str, str], Fetched] = {}  # API endpoint -> the day that stalled
    for source in sources:
        api = _endpoint(source) if is_url(source) and _is_api_day(source) else None
        if api in stalled:
            first = stalled[api]
            results.append(
                Fetched(
                    source,
                    "failed",
                    stalled=True,
                    error=f"not tried this run: {display_source(first.source)} of the same API "
                    f"failed first ({first.error}); will retry next run",
                )
            )
            continue
        try:
            if is_url(source):
                fetch = fetch_api_day if _is_api_day(source) else fetch_url
                result = fetch(source, known.get(source), max_bytes, http, (5.0, read_timeout))
            else:
                result = fetch_file(source, known.get(source), max_bytes)
        except Exception as exc:  # whatever a hostile server sends fails its source alone
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            result = Fetched(
                source,
                "failed",
                error=f"unexpected response ({type(exc).__name__}: {reason}); will retry next run",
            )
        if result.error:  # an exception's text may quote the URL, credentials and all
            result = replace(result, error=redact(result.error, source))
        if api and result.stalled:
            stalled[api] = result
        results.append(result)
    return results
