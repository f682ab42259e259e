"""Hand-written subscriber files: addresses the send path cannot use, duplicate keys and
runaway sizes are refused at load time with file:line:col errors; a digest that still
cannot be rendered or sent fails alone."""

from __future__ import annotations

import email
import os
import re
from dataclasses import replace
from datetime import date
from email import policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from test_delivery import smtp_settings

from conftest import EXAMPLE_DUMP, FULL_TESTS
from paperpost.exitcodes import ExitCode, for_summary
from paperpost.models import Paper
from paperpost.pipeline import (
    DigestJob,
    Rendered,
    begin,
    profile_of,
    reader_of,
    render_stage,
    run_plain,
    send_stage,
)
from paperpost.rank import Interest, Profile, rank
from paperpost.render import Edition, Reader, Renderer
from paperpost.settings import Settings
from paperpost.store import Store
from paperpost.subscribers import (
    MAX_NAME_CHARS,
    MAX_TAGS,
    LoadedSubscriber,
    Subscriber,
    load_subscribers,
)
from smtp_server import SmtpServer

EDITION = Edition("paperpost <digest@example.org>", "k", None, date(2026, 11, 25), 3)
UNSENDABLE = {
    "a..b@x.org": "two periods in a row",
    ".lead@x.org": "cannot start with a period",
    "trail.@x.org": "period immediately before the @-sign",
    "../../etc/x@y.org": "cannot start with a period",
    "a..b@x": "two periods in a row",
    "x" * 65 + "@example.org": "at most 64 are allowed",
    "x" * 321 + "@example.org": "too long",
    "ann@" + "b" * 250 + ".org": "too long",
    "ünï@example.org": "Internationalized characters before the @-sign are not supported",
    "ann@localhost": "should have a period",
    'ann\r\nBcc: x@y.org"@example.org': "invalid characters",
}


def load(folder: Path, files: dict[str, str]) -> tuple[list, list[str]]:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    entries, errors = load_subscribers(folder)
    return entries, [str(e) for e in errors]


def test_addresses_the_send_path_cannot_use_are_refused_at_load(tmp_path: Path) -> None:
    lines = ["- email: ok@example.org\n  tags: [agents]\n"]
    lines += [f"- email: {address!r}\n  tags: [agents]\n" for address in UNSENDABLE]
    entries, errors = load(tmp_path / "subs", {"list.yaml": "".join(lines)})
    assert [e.subscriber.email for e in entries] == ["ok@example.org"]
    assert len(errors) == len(UNSENDABLE)
    lines_of_emails = range(3, 3 + 2 * len(UNSENDABLE), 2)
    for (address, reason), error, line in zip(
        UNSENDABLE.items(), errors, lines_of_emails, strict=True
    ):
        assert error.startswith(f"{tmp_path / 'subs' / 'list.yaml'}:{line}:10: [")
        assert "].email: expected an email address like ada@example.org" in error
        assert reason in error, (address, error)
        assert "\n" not in error and len(error) < 400


def test_a_valid_address_is_stored_in_the_form_smtp_needs() -> None:
    sub = Subscriber.model_validate({"email": " Ann@Bücher.Example ", "tags": ["agents"]})
    assert sub.email == "Ann@xn--bcher-kva.example" and sub.address == "ann@xn--bcher-kva.example"


addresses = st.emails() | st.from_regex(r"[a-z0-9.!#$%&'*+/=?^_`{|}~\-]{0,70}@[a-z0-9.\-]{0,70}")


@settings(max_examples=500 if FULL_TESTS else 50, deadline=None)
@given(address=addresses)
def test_every_address_that_loads_can_be_rendered_and_addressed(address: str) -> None:
    try:
        sub = Subscriber.model_validate({"email": address, "tags": ["agents"]})
    except ValueError:
        return
    assert len(sub.email) <= 254 and len(sub.email.split("@")[0]) <= 64
    assert sub.email.isascii() and sub.email == sub.email.strip()
    papers = rank([Paper("Agents at work", "LLM agents.")], Profile((Interest("agents"),)))
    out = Renderer().render(Reader(sub.email, "Ann", ("agents",)), papers, EDITION, 0, 1)
    msg = email.message_from_bytes(out.data, policy=policy.default)
    assert [a.addr_spec for a in msg["To"].addresses] == [sub.email]


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    dup = "email: ann@example.org\nname: Ann\ntags: [agents]\nemail: eve@evil.example\n"
    nested = (
        "- email: bob@example.org\n  tags:\n    - tag: agents\n      weight: 2\n      weight: 9\n"
        "- email: cy@example.org\n  tags: [agents]\n"
    )
    entries, errors = load(tmp_path / "subs", {"ann.yaml": dup, "list.yaml": nested})
    folder = tmp_path / "subs"
    assert errors == [
        f'{folder / "ann.yaml"}:4:1: email: duplicate key "email", also on line 1; '
        "keep one of them",
        f'{folder / "list.yaml"}:5:7: [0].tags[0].weight: duplicate key "weight", also on '
        "line 4; keep one of them",
    ]
    assert [e.subscriber.email for e in entries] == ["cy@example.org"]  # the others still load


def test_sizes_are_bounded_with_clear_errors(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    tags = ", ".join(f"t{i}" for i in range(MAX_TAGS + 1))
    files = {
        "name.yaml": f"email: a@example.org\nname: {'N' * 1_000_000}\ntags: [agents]\n",
        "tags.yaml": f"email: b@example.org\ntags: [{tags}]\n",
        "tag.yaml": f"email: c@example.org\ntags: [{'t' * 81}]\n",
        "words.yaml": f"email: d@example.org\ntags: [x]\nexclude: [{', '.join('w' * 51)}]\n",
        "fine.yaml": "email: e@example.org\nname: Eve\ntags: [agents]\n",
    }
    entries, errors = load(folder, files)
    with (folder / "huge.yaml").open("wb") as handle:
        handle.truncate(257_000_000)  # sparse: never read, refused by its size
    entries, errors = load_subscribers(folder)
    text = [str(e) for e in errors]
    assert [e.subscriber.email for e in entries] == ["e@example.org"]
    assert all(len(line) < 300 for line in text)
    joined = "\n".join(text)
    assert "huge.yaml:1:1: the file is 257 MB, over the 256 MB limit" in joined
    assert f"name.yaml:2:7: name: String should have at most {MAX_NAME_CHARS} characters" in joined
    assert f"tags.yaml:2:7: tags: List should have at most {MAX_TAGS} items" in joined
    assert "tag.yaml:2:8: tags[0].tag: String should have at most 80 characters" in joined
    assert "words.yaml:3:10: exclude: List should have at most 50 items" in joined


def test_a_file_of_many_bad_entries_costs_a_count_not_memory(tmp_path: Path) -> None:
    """ATTACK6 #6. Before: a run kept every error of the list until its end (~0.5 KB each:
    1.15 GB for a 26 MB file of ``- {email: x}``); now a run keeps a file's first
    ERRORS_PER_FILE and counts the rest, and the summary still says how many and where the
    first ones are. Measured with tracemalloc on the run's own reader."""
    import tracemalloc

    from paperpost.pipeline import ERRORS_PER_FILE, _listed, run_errors, stream_readers

    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "hog.yaml").write_text("- {email: x}\n" * 4000)  # 8,000 errors
    (folder / "ok.yaml").write_text("email: ok@example.org\ntags: [agents]\n")
    warm = tmp_path / "warm"  # what the first read loads once (the tag vocabulary, ...)
    warm.mkdir()
    (warm / "two.yaml").write_text("- {email: x}\n- {email: w@example.org, tags: [agents]}\n")
    errors = run_errors()
    tracemalloc.start()
    try:
        list(stream_readers(warm, run_errors()))
        before = tracemalloc.get_traced_memory()[0]
        loaded = [entry.subscriber.email for entry in stream_readers(folder, errors)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert loaded == ["ok@example.org"]  # the other file is served
    assert grown < 200_000, f"{grown:,} bytes kept after reading 8,000 errors"
    assert errors.total == 8000 and len(errors.kept) == ERRORS_PER_FILE
    hog = folder / "hog.yaml"
    assert _listed(errors) == [
        f"{hog}:1:3: [0].tags: this field is required",
        f"{hog}:1:11: [0].email: expected an email address like ada@example.org, got 'x' "
        "(An email address must have an @-sign.)",
        f"{hog}:2:3: [1].tags: this field is required",
        f"{hog}:2:11: [1].email: expected an email address like ada@example.org, got 'x' "
        "(An email address must have an @-sign.)",
        f"{hog}:3:3: [2].tags: this field is required",
        f"{hog}: 7,995 more errors in this file; `paperpost subscribers validate {hog}` "
        "lists them all",
    ]


def _jobs(*addresses: str) -> list[DigestJob]:
    items = rank([Paper("Agents at work", "LLM agents.")], Profile((Interest("agents"),)))
    return [DigestJob(Reader(a, None, ("agents",)), items, 0, 1) for a in addresses]


def test_a_digest_that_cannot_be_rendered_fails_alone(tmp_path: Path, db_url: str) -> None:
    # "a..b@x.org" as if loaded by a laxer version of paperpost: the renderer refuses it
    jobs = _jobs("r1@example.org", "a..b@x.org", "r2@example.org")
    rendered = render_stage(Renderer(), jobs, EDITION)
    assert [m.address for m in rendered.outgoing] == ["r1@example.org", "r2@example.org"]
    settings = Settings(outbox_dir=tmp_path / "outbox", database_url=db_url)
    store, owner, run_id = begin(settings, date.today())
    assert run_id is not None
    outcomes = send_stage(settings, store, rendered, run_id, owner)
    status = {o.address: (o.status, o.detail) for o in outcomes}
    assert status["r1@example.org"][0] == status["r2@example.org"][0] == "sent"
    assert status["a..b@x.org"][0] == "failed"
    assert "cannot render this digest" in status["a..b@x.org"][1]
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 2


def test_a_message_smtp_cannot_write_fails_alone(tmp_path: Path, db_url: str) -> None:
    rendered = render_stage(Renderer(), _jobs("r1@example.org", "r2@example.org"), EDITION)
    odd = replace(rendered.outgoing[0], address="ünï@example.org")  # not ASCII: no SMTPUTF8
    server = SmtpServer(tmp_path).start()
    try:
        settings = smtp_settings(server).model_copy(
            update={"database_url": db_url, "secret_key": SecretStr("k" * 32)}
        )
        batch = Rendered([odd, *rendered.outgoing], [])
        store, owner, run_id = begin(settings, date.today())
        assert run_id is not None
        outcomes = send_stage(settings, store, batch, run_id, owner)
    finally:
        server.stop()
    status = {o.address: (o.status, o.detail) for o in outcomes}
    assert status["ünï@example.org"][0] == "failed"
    assert "cannot send this message" in status["ünï@example.org"][1]
    assert status["r1@example.org"][0] == status["r2@example.org"][0] == "sent"
    delivered = sorted(r for rcpts, _ in server.handler.messages for r in rcpts)
    assert delivered == ["r1@example.org", "r2@example.org"]


# --- round 2: files no editor should produce, and tags the ranker cannot read --------


def _lol(levels: int = 9) -> str:
    """A "billion laughs" alias bomb: 9**9 leaves built from a few shared lists."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        previous, name = chr(96 + level), chr(97 + level)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_reported_not_expanded(tmp_path: Path) -> None:
    """Before: an error message printed the value with repr(), expanding 9**9 items
    (validate was killed after 20 s). After: every error is one short line."""
    bomb = _lol()
    files = {
        f"{field}.yaml": f"{bomb}email: {field}@example.org\ntags: [agents]\n{field}: *i\n"
        for field in ("cadence", "max_items", "name", "exclude", "like", "weekday")
    }
    files["tags.yaml"] = f"{bomb}email: tags@example.org\ntags: *i\n"
    files["fine.yaml"] = "email: fine@example.org\ntags: [agents]\n"
    entries, errors = load(tmp_path / "subs", files)
    assert [e.subscriber.email for e in entries] == ["fine@example.org"]
    for field in ("cadence", "max_items", "name", "exclude", "like", "weekday", "tags"):
        # located at the alias, line 12 (tags: 11; before: at its anchor, line 8 or 9)
        assert any(re.search(rf"{field}\.yaml:1[12]:\d+: {field}(\[0\])?: ", e) for e in errors)
    assert all(len(e) < 400 and "\n" not in e for e in errors)


def test_an_error_in_an_aliased_value_points_at_the_alias(tmp_path: Path) -> None:
    """Before: every error below named line 3 or 4, where the anchors are."""
    text = (
        "- email: a@example.org\n"  # 1
        "  tags: [agents]\n"
        "  max_items: &n 5\n"  # 3
        "  exclude: &ex [diffusion, 7]\n"  # 4
        "- email: b@example.org\n"
        "  tags: [agents]\n"
        "  cadence: *n\n"  # 7
        "- email: c@example.org\n"
        "  tags: *ex\n"  # 9: tags[1] is a number
        "- &whole hello\n"  # 10
        "- *whole\n"  # 11
    )
    _, errors = load(tmp_path / "subs", {"list.yaml": text})
    where = sorted(re.match(r".*list\.yaml:(\d+:\d+): ([^:]*):", e).groups() for e in errors)
    assert where == [
        ("10:3", "[3]"),
        ("11:3", "[4]"),
        ("4:28", "[0].exclude[1]"),  # the value's own place: not an alias here
        ("7:12", "[1].cadence"),
        ("9:9", "[2].tags[1]"),
    ], errors


@settings(max_examples=100 if FULL_TESTS else 25, deadline=None)
@given(
    anchor=st.sampled_from(
        [("name", "'never'"), ("tags", "[agents]"), ("max_items", "5"), ("exclude", "[x, y]")]
    ),
    field=st.sampled_from(["cadence", "weekday", "format"]),
    gap=st.integers(min_value=0, max_value=30),
)
def test_any_aliased_bad_value_is_reported_on_the_aliass_line(
    tmp_path_factory: pytest.TempPathFactory, anchor: tuple[str, str], field: str, gap: int
) -> None:
    first = f"- email: a@example.org\n  {anchor[0]}: &v {anchor[1]}\n"
    if anchor[0] != "tags":
        first += "  tags: [agents]\n"
    padding = "".join(f"- email: p{i}@example.org\n  tags: [agents]\n" for i in range(gap))
    text = first + padding + f"- email: b@example.org\n  tags: [agents]\n  {field}: *v\n"
    line = text.count("\n")
    _, errors = load(tmp_path_factory.mktemp("subs"), {"list.yaml": text})
    assert [e.split("list.yaml:", 1)[1].split(": ", 1)[0] for e in errors] == [
        f"{line}:{len(field) + 5}"
    ], errors


def test_a_merge_key_shares_defaults_and_its_overrides_are_not_duplicates(
    tmp_path: Path,
) -> None:
    """Before: every entry that overrode a merged key (`<<: *defaults` then `email:`) was
    refused as 'duplicate key "email", also on line 2': the YAML library puts the merged
    pairs into the entry itself while building it, and duplicates were looked for after."""
    text = (
        "- &defaults\n"
        "  email: first@example.org\n"  # 2
        "  tags: [agents, reasoning]\n"
        "  cadence: weekly\n"
        "  weekday: friday\n"
        "- <<: *defaults\n"
        "  email: second@example.org\n"  # 7
        "- <<: *defaults\n"
        "  email: third@example.org\n"
        "  cadence: monthly\n"  # 10
        "- email: dup@example.org\n"  # 11
        "  tags: [agents]\n"
        "  email: dup2@example.org\n"  # 13
    )
    entries, errors = load(tmp_path / "subs", {"list.yaml": text})
    assert [(e.subscriber.email, e.line) for e in entries] == [
        ("first@example.org", 2),
        ("second@example.org", 7),
    ]
    second = entries[1].subscriber
    assert (second.cadence, second.weekday, [t.tag for t in second.tags]) == (
        "weekly",
        "friday",
        ["agents", "reasoning"],
    )
    assert [re.sub(r"^.*list\.yaml:", "", e).split(": ")[:2] for e in errors] == [
        ["10:12", "[2].cadence"],
        ["13:3", "[3].email"],
    ]


UNREADABLE_TAGS = {
    "blank": "'   '",
    "zero-width": "'\u200b\u200b'",
    "stopword": "the",
    "punctuation": "'*'",
    "regex": "'(a+)+$'",
    "chinese": "扩散模型",
}


def test_a_tag_the_ranker_cannot_read_is_an_error_and_the_others_get_their_digests(
    tmp_path: Path, db_url: str
) -> None:
    """Before: one subscriber with such a tag (or exclusion) crashed the rank stage with
    a numpy ValueError: exit 1, no digest for anybody."""
    subs, dumps = tmp_path / "subs", tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "a.txt").write_bytes(EXAMPLE_DUMP.read_bytes())
    files = {
        f"{n}.yaml": f"email: {n}@example.org\ntags: [{t}]\n" for n, t in UNREADABLE_TAGS.items()
    }
    files["excl.yaml"] = "email: excl@example.org\ntags: [agents]\nexclude: [the, '  ']\n"
    files["fine.yaml"] = "email: fine@example.org\ntags: [agents]\n"
    entries, errors = load(subs, files)
    assert [e.subscriber.email for e in entries] == ["fine@example.org"]
    for name in UNREADABLE_TAGS:
        assert any(e.startswith(str(subs / f"{name}.yaml") + ":2:8: tags[0].tag: ") for e in errors)
    assert any("excl.yaml:3:11: exclude[0]: 'the' has no words to match" in e for e in errors)
    settings = Settings(
        sources=[str(dumps)],
        subscribers_dir=subs,
        outbox_dir=tmp_path / "outbox",
        database_url=db_url,
        send_empty=True,
    )
    summary = run_plain(settings, date(2026, 11, 25))
    assert summary.digests_sent == 1
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 1


hand_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(" \t*.-the"),
    max_size=30,
)


@settings(max_examples=600 if FULL_TESTS else 60, deadline=None)
@given(
    tags=st.lists(hand_text, min_size=1, max_size=3),
    exclude=st.lists(hand_text, max_size=2),
    keywords=st.lists(hand_text, max_size=2),
    like=st.lists(hand_text, max_size=2),
)
def test_whatever_loads_can_be_ranked_and_rendered(tags, exclude, keywords, like) -> None:
    """The invariant: a subscriber the loader accepts never breaks the rank or render
    stage (for any text in tags, exclude, keywords and like)."""
    data = {
        "email": "ann@example.org",
        "tags": [{"tag": tags[0], "keywords": keywords}, *tags[1:]],
        "exclude": exclude,
        "like": like,
    }
    try:
        sub = Subscriber.model_validate(data)
    except ValueError:
        return
    for text in [t.tag for t in sub.tags] + sub.exclude + sub.like:
        assert text == text.strip() and not any(ord(ch) < 32 for ch in text)
    entry = LoadedSubscriber(sub, "ann.yaml", 1)
    papers = [Paper("Agents at work", "LLM agents plan."), Paper("Diffusion", "Images.")]
    items = rank(papers, profile_of(entry))
    Renderer().render(reader_of(entry), items, EDITION, 0, 1)


def test_files_that_are_not_subscriber_files_are_reported(tmp_path: Path) -> None:
    """Before: a link to /etc/passwd printed its first line in the error; a link to a
    file outside the folder loaded silently; a folder, a pipe or a broken link named
    *.yaml were skipped without a word (a subscriber lost silently)."""
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("email: out@example.org\ntags: [agents]\n")
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "fine.yaml").write_text("email: fine@example.org\ntags: [agents]\n")
    (subs / "inside.yaml").symlink_to(subs / "fine.yaml")  # inside the folder: allowed...
    (subs / "passwd.yaml").symlink_to("/etc/passwd")
    (subs / "out.yaml").symlink_to(outside)
    (subs / "broken.yaml").symlink_to(tmp_path / "missing.yaml")
    (subs / "folder.yaml").mkdir()
    os.mkfifo(subs / "pipe.yaml")  # opening it would block forever
    entries, errors = load_subscribers(subs)
    assert [e.path for e in entries] == [str(subs / "fine.yaml")]
    text = {Path(e.path).name: str(e) for e in errors}
    assert (
        "root:" not in text["passwd.yaml"]
        and "is a link to /etc/passwd, outside" in text["passwd.yaml"]
    )
    assert f"is a link to {outside}, outside {subs}" in text["out.yaml"]
    assert "is a broken link" in text["broken.yaml"]
    assert "is a folder, not a subscriber file" in text["folder.yaml"]
    assert "is not a regular file" in text["pipe.yaml"]
    assert "already subscribed in" in text["inside.yaml"]  # ...and read like any file


def test_encodings_and_control_characters(tmp_path: Path) -> None:
    files = {
        "utf16.yaml": "email: u16@example.org\nname: Zoë\ntags: [agents]\n".encode("utf-16"),
        "bom.yaml": "\ufeffemail: bom@example.org\r\ntags: [agents]\r\n".encode(),
        "latin1.yaml": "email: l@example.org\nname: José\ntags: [agents]\n".encode("latin-1"),
        "esc.yaml": b'email: esc@example.org\nname: "\\e]0;owned\\a"\ntags: [agents]\n',
        "nul.yaml": b'email: nul@example.org\ntags: ["age\\0nts"]\n',
        "rlo.yaml": b'email: rlo@example.org\nname: "Ann \\u202egnp.exe"\ntags: [agents]\n',
    }
    subs = tmp_path / "subs"
    subs.mkdir()
    for name, data in files.items():
        (subs / name).write_bytes(data)
    entries, errors = load_subscribers(subs)
    assert sorted(e.subscriber.email for e in entries) == ["bom@example.org", "u16@example.org"]
    assert [e.subscriber.name for e in entries if e.subscriber.name] == ["Zoë"]
    text = {Path(e.path).name: str(e) for e in errors}
    assert text["latin1.yaml"].endswith(
        "latin1.yaml:2:10: not UTF-8 text (byte E9 here); save the file as UTF-8 (a Latin-1 "
        "or Windows-1252 editor setting does this)"
    )
    assert (
        "esc.yaml:2:7: name: contains the control character U+001B; remove it" in text["esc.yaml"]
    )
    assert "nul.yaml:2:8: tags[0].tag: contains the control character U+0000" in text["nul.yaml"]
    assert "rlo.yaml:2:7: name: contains the control character U+202E" in text["rlo.yaml"]


def _expire_lease(store: Store) -> None:
    """What two hours without a renewal leave in the database (no sleeping in a test)."""
    from sqlalchemy import update

    from paperpost.store import locks

    with store.engine.begin() as conn:
        conn.execute(update(locks).values(expires_at=0))


def test_a_run_whose_lease_another_run_took_sends_nothing_more(tmp_path: Path, db_url: str) -> None:
    """Before: a run that outlived its 2-hour lease kept sending, while a second run took the
    lease, released the first run's claimed digests as a crash's leftovers and sent them
    again: duplicates. Now the first run checks its lease before it claims or sends."""
    from paperpost.pipeline import LOCK, LOCK_TTL

    settings = Settings(outbox_dir=tmp_path / "outbox", database_url=db_url)
    store, owner, run_id = begin(settings, date.today())
    assert run_id is not None
    _expire_lease(store)
    assert store.acquire_lock(LOCK, "otherhost:2:later-run", LOCK_TTL)  # the second run
    rendered = render_stage(Renderer(), _jobs("r1@example.org", "r2@example.org"), EDITION)
    outcomes = send_stage(settings, store, rendered, run_id, owner)
    assert {o.status for o in outcomes} == {"retry"}
    assert all("another run took this run's lease" in (o.detail or "") for o in outcomes)
    assert not (tmp_path / "outbox" / "new").exists() or not any(
        (tmp_path / "outbox" / "new").iterdir()
    )
    assert store.delivery_status("r1@example.org") == []  # nothing claimed, nothing settled
    assert store.lock_owner(LOCK) == "otherhost:2:later-run"
    reason = store.pause_reason(run_id)  # how the run ends: exit 5, another run has the lock
    assert for_summary({"status": "paused", "message": reason}) == ExitCode.LOCKED


def test_a_run_that_keeps_sending_keeps_its_lease(tmp_path: Path, db_url: str) -> None:
    """A lease that has run out while nobody else took it is renewed by the run still
    sending: its digests go out, and the lease is good for LOCK_TTL again."""
    from sqlalchemy import select

    from paperpost.pipeline import LOCK, LOCK_TTL
    from paperpost.store import locks, now

    settings = Settings(outbox_dir=tmp_path / "outbox", database_url=db_url)
    store, owner, run_id = begin(settings, date.today())
    assert run_id is not None
    _expire_lease(store)
    rendered = render_stage(Renderer(), _jobs("r1@example.org", "r2@example.org"), EDITION)
    outcomes = send_stage(settings, store, rendered, run_id, owner)
    assert [o.status for o in outcomes] == ["sent", "sent"]
    with store.engine.connect() as conn:
        expires = conn.execute(select(locks.c.expires_at)).scalar_one()
    assert expires > now().timestamp() + LOCK_TTL.total_seconds() - 60
    assert not store.acquire_lock(LOCK, "otherhost:2:later-run", LOCK_TTL)
