"""Look at rendered digests in headless Chromium: 600 px and 375 px, light and dark.

Measurements run inside the page (a script appended to a copy of the digest) and come back
through ``--dump-dom``; screenshots are kept under $PAPERPOST_ARTIFACTS/screenshots/.
Chromium is found on PATH (``chromium``, ``chromium-browser``) or at $PAPERPOST_TEST_CHROMIUM;
without a working one these tests skip, unless PAPERPOST_REQUIRE_BROWSER is set (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import date
from html import escape
from pathlib import Path

import pytest

from conftest import ROOT, unavailable
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Edition, Reader, Renderer

CHROMIUM = (
    os.environ.get("PAPERPOST_TEST_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
)
ARTIFACTS = Path(os.environ.get("PAPERPOST_ARTIFACTS", ROOT / "artifacts")) / "screenshots"

PROBE = """
<script>
function rgb(s) {
  const m = s.match(/[\\d.]+/g).map(Number);
  return m.length > 3 ? m : m.concat([1]);
}
function lum(c) {
  const [r, g, b] = c.slice(0, 3).map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
window.addEventListener("load", () => {
  const frame = document.getElementById("digest");
  const doc = frame.contentDocument, win = frame.contentWindow;
  const style = el => win.getComputedStyle(el);
  function background(el) {
    for (; el; el = el.parentElement) {
      const c = rgb(style(el).backgroundColor);
      if (c[3] > 0) return c;
    }
    return [255, 255, 255, 1];
  }
  function contrast(el) {
    const a = lum(rgb(style(el).color)), b = lum(background(el));
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  }
  const texts = [...doc.querySelectorAll(
    ".card .title-link, .card .abstract, .card .meta, .card .why, .card .tldr, .card .rank, "
    + ".card .vote, "
    + ".headline, .counts, .footer")];
  const links = [...doc.querySelectorAll("a[href]")].map(a => {
    const r = a.getClientRects()[0];  // the first line box of a link that wraps
    const hit = doc.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return {href: a.getAttribute("href"), clickable: !!hit && (hit === a || a.contains(hit))};
  });
  const out = {
    scrollWidth: doc.documentElement.scrollWidth, innerWidth: win.innerWidth,
    minContrast: Math.min(...texts.map(contrast)),
    worst: texts.map(e => [e.className, contrast(e)]).sort((a, b) => a[1] - b[1]).slice(0, 3),
    cardBackground: style(doc.querySelector(".card")).backgroundColor,
    links: links,
  };
  const pre = document.createElement("pre");
  pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def frame_page(html: str, width: int) -> str:
    """The digest in an iframe exactly ``width`` px wide (headless windows are >= 500 px)."""
    return (
        '<!DOCTYPE html><html><body style="margin:0;background:#888">'
        f'<iframe id="digest" style="border:0;width:{width}px;height:9000px" '
        f'srcdoc="{escape(html, quote=True)}"></iframe>{PROBE}</body></html>'
    )


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="session")
def working_chromium(tmp_path_factory) -> None:
    """Skip (or fail where required) unless Chromium runs a script in a headless page."""
    need = "install Debian's chromium (or set PAPERPOST_TEST_CHROMIUM) to look at rendered digests"
    if not CHROMIUM or not Path(CHROMIUM).is_file():
        unavailable("PAPERPOST_REQUIRE_BROWSER", f"no chromium found: {need}")
    page = tmp_path_factory.mktemp("probe") / "probe.html"
    page.write_text("<p id=out></p><script>out.textContent = 6 * 7;</script>")
    try:
        dom = chromium(["--dump-dom", page.as_uri()], page.parent / "profile").stdout
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable("PAPERPOST_REQUIRE_BROWSER", f"{CHROMIUM} fails headless ({exc}): {need}")
    if ">42<" not in dom:
        unavailable("PAPERPOST_REQUIRE_BROWSER", f"{CHROMIUM} ran no script: {need}")


@pytest.fixture(scope="module")
def digest_html(corpus, tmp_path_factory) -> Path:
    items = rank(corpus, Profile((Interest("agents"), Interest("reasoning")), max_items=6))
    renderer = Renderer()
    edition = Edition(
        "paperpost <d@example.org>",
        "k",
        "https://pp.example.org",
        date(2026, 11, 25),
        len(corpus),
    )
    reader = Reader("ann@example.org", "Ann", ("agents", "reasoning"), reader_id="r-ann")
    context = renderer.context(
        reader, items, edition, "https://pp.example.org/unsubscribe/t", digest="1-300"
    )
    assert all(card.more_url and card.fewer_url for card in context["cards"])
    path = tmp_path_factory.mktemp("digest") / "digest.html"
    path.write_text(renderer.html(context), encoding="utf-8")
    return path


def shoot_and_probe(page: Path, flags: list[str], shot: Path, tmp_path: Path) -> dict:
    """Screenshot the framed page into `shot`, then read back what its probe script measured."""
    chromium([*flags, f"--screenshot={shot}", page.as_uri()], tmp_path / "p1")
    assert shot.stat().st_size > 10_000
    dom = chromium(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path / "p2"
    ).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.browser
@pytest.mark.parametrize("width", [600, 375])
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.usefixtures("working_chromium")
def test_digest_in_chromium(digest_html: Path, tmp_path: Path, width: int, scheme: str) -> None:
    flags = [
        f"--window-size={max(width, 500)},1400",
        f"--blink-settings=preferredColorScheme={0 if scheme == 'dark' else 1}",
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = tmp_path / "framed.html"
    page.write_text(frame_page(digest_html.read_text(), width), encoding="utf-8")
    result = shoot_and_probe(page, flags, ARTIFACTS / f"digest-{width}-{scheme}.png", tmp_path)

    assert result["innerWidth"] == width
    assert result["scrollWidth"] <= width, "horizontal overflow"
    assert result["minContrast"] >= 4.5, result["worst"]
    dark_card = result["cardBackground"] in {"rgb(22, 27, 34)"}
    assert dark_card == (scheme == "dark")
    assert result["links"], "no links"
    for link in result["links"]:
        assert link["clickable"], link
        assert link["href"].startswith(("https://", "http://"))


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.usefixtures("working_chromium")
def test_card_with_vote_links(corpus, tmp_path: Path, scheme: str) -> None:
    """One card as a reader sees it, with "More like this" / "Fewer like this" (screenshot
    kept as card-votes-<scheme>.png; docs/img has copies for the README)."""
    items = rank(corpus, Profile((Interest("agents"),), max_items=1))
    assert items
    edition = Edition(
        "paperpost <d@example.org>", "k", "https://pp.example.org", date(2026, 11, 25), 1
    )
    reader = Reader("ann@example.org", "Ann", ("agents",), reader_id="r-ann")
    renderer = Renderer()
    context = renderer.context(reader, items, edition, "https://pp.example.org/u/t", digest="1-9")
    page = tmp_path / "card.html"
    page.write_text(frame_page(renderer.html(context), 600), encoding="utf-8")
    flags = [
        "--window-size=600,560",
        f"--blink-settings=preferredColorScheme={0 if scheme == 'dark' else 1}",
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    result = shoot_and_probe(page, flags, ARTIFACTS / f"card-votes-{scheme}.png", tmp_path)
    votes = [link for link in result["links"] if "/vote/" in link["href"]]
    assert [v["href"].split("/")[4] for v in votes] == ["more", "fewer"]
    assert all(v["clickable"] for v in votes)
    assert result["minContrast"] >= 4.5, result["worst"]
