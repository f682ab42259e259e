from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import FULL_TESTS, ROOT
from paperpost.subscribers import SubscriberError, load_file, load_subscribers, remove_subscriber


def errors_for(tmp_path: Path, text: str, name: str = "bob.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    _, errors = load_file(path)
    return [str(e).replace(str(tmp_path) + "/", "") for e in errors]


def test_example_subscribers_are_valid() -> None:
    entries, errors = load_subscribers(ROOT / "subscribers")
    assert errors == []
    assert {e.subscriber.email for e in entries} >= {"alice@example.org", "bob@example.org"}
    alice = next(e.subscriber for e in entries if e.subscriber.email == "alice@example.org")
    spec = next(t for t in alice.tags if t.tag == "speculative-decoding")
    assert spec.weight == 2 and spec.keywords == ["draft model", "acceptance rate"]


def test_tag_of_wrong_type_points_at_line_and_column(tmp_path: Path) -> None:
    text = "email: bob@example.org\ntags:\n  - agents\n  - 42\n"
    assert errors_for(tmp_path, text) == [
        'bob.yaml:4:5: tags[1]: expected a string or a mapping with "tag", got a number'
    ]


def test_unknown_field_suggests_the_near_miss(tmp_path: Path) -> None:
    text = "email: bob@example.org\ntags: [agents]\ncadense: weekly\n"
    assert errors_for(tmp_path, text) == [
        'bob.yaml:3:1: cadense: unknown field "cadense"; did you mean "cadence"?'
    ]


def test_bad_email_wrong_literal_and_bad_number(tmp_path: Path) -> None:
    text = "email: bob-at-example\ntags: [agents]\ncadence: monthly\nmax_items: ten\n"
    assert errors_for(tmp_path, text) == [
        "bob.yaml:1:8: email: expected an email address like ada@example.org, "
        "got 'bob-at-example' (An email address must have an @-sign.)",
        "bob.yaml:3:10: cadence: expected one of daily or weekly, got 'monthly'",
        "bob.yaml:4:12: max_items: expected a whole number, got 'ten'",
    ]


def test_missing_and_empty_fields(tmp_path: Path) -> None:
    assert errors_for(tmp_path, "name: Bob\ntags: []\n") == [
        "bob.yaml:1:1: email: this field is required",
        "bob.yaml:2:7: tags: give at least one tag",
    ]


def test_yaml_syntax_error_and_empty_file(tmp_path: Path) -> None:
    assert errors_for(tmp_path, "email: [unclosed\n") == [
        "bob.yaml:2:1: YAML syntax: did not find expected ',' or ']'"
    ]
    assert errors_for(tmp_path, "") == ["bob.yaml:1:1: the file is empty; expected a subscriber"]


def test_tag_mapping_fields_are_checked(tmp_path: Path) -> None:
    text = "email: b@example.org\ntags:\n  - tag: agents\n    wieght: 2\n"
    assert errors_for(tmp_path, text) == [
        'bob.yaml:4:5: tags[0].wieght: unknown field "wieght"; did you mean "weight"?'
    ]


def test_list_file_reports_each_entry_and_keeps_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "team.yaml"
    path.write_text("- email: a@example.org\n  tags: [agents]\n- 7\n- email: c@example.org\n")
    loaded, errors = load_file(path)
    assert [e.subscriber.email for e in loaded] == ["a@example.org"]
    assert [str(e).replace(str(tmp_path) + "/", "") for e in errors] == [
        "team.yaml:3:3: [1]: expected a subscriber mapping (email, tags, ...), got a number",
        "team.yaml:4:3: [2].tags: this field is required",
    ]


def test_duplicate_email_across_files_names_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("email: Same@example.org\ntags: [agents]\n")
    (tmp_path / "b.yaml").write_text("name: B\nemail: same@example.org\ntags: [diffusion]\n")
    (tmp_path / "c.yaml").write_text("email: [\n")
    entries, errors = load_subscribers(tmp_path)
    assert [e.path for e in entries] == [str(tmp_path / "a.yaml")]
    messages = [str(e) for e in errors]
    assert (
        f"{tmp_path / 'b.yaml'}:2:1: email: same@example.org is already subscribed in "
        f"{tmp_path / 'a.yaml'}; keep one of the two" in messages
    )
    assert any(m.startswith(str(tmp_path / "c.yaml")) for m in messages)


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    errors = errors_for(tmp_path, "email: !!python/object/apply:os.system ['true']\ntags: [a]\n")
    assert len(errors) == 1 and "YAML syntax" in errors[0]


@given(st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_text_loads_or_gives_located_errors(tmp_path_factory, text: str) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "x.yaml"
    path.write_text(text, encoding="utf-8")
    loaded, errors = load_file(path)
    assert all(isinstance(e, SubscriberError) and e.line >= 1 for e in errors)
    assert loaded or errors


@pytest.mark.parametrize("weekday", ["Mon", "monday", "MONDAY"])
def test_weekday_spellings(tmp_path: Path, weekday: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(f"email: w@example.org\ntags: [agents]\ncadence: weekly\nweekday: {weekday}\n")
    loaded, errors = load_file(path)
    assert errors == [] and loaded[0].subscriber.weekday == "monday"


def test_committed_json_schema_is_current_and_accepts_the_examples() -> None:
    import json

    import jsonschema
    import yaml

    from paperpost.subscribers import SCHEMA_FILE, json_schema

    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json_schema(), "regenerate paperpost/data/subscriber.schema.json"
    for path in sorted((ROOT / "subscribers").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), committed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"email": "a@example.org", "tags": ["x"], "cadense": "daily"}, committed
        )


def test_list_files_are_read_entry_by_entry_with_the_same_errors(tmp_path: Path) -> None:
    path = tmp_path / "team.yaml"
    good = "".join(f"- email: r{i}@example.org\n  tags: [agents]\n" for i in range(3))
    # a refused tag spoils only its own entry; the others still load
    path.write_text(good + "- email: !!python/name:os.system x@example.org\n  tags: [a]\n")
    loaded, errors = load_file(path)
    assert [e.subscriber.email for e in loaded] == [f"r{i}@example.org" for i in range(3)]
    assert len(errors) == 1 and errors[0].line == 7 and "YAML syntax" in errors[0].message
    # broken YAML anywhere in the file loads none of it, even entries before the break
    path.write_text(good + "- email: [unclosed\n")
    loaded, errors = load_file(path)
    assert loaded == [] and [str(e).rsplit("/", 1)[1] for e in errors] == [
        "team.yaml:8:1: YAML syntax: did not find expected ',' or ']'"
    ]
    # a second document is refused as before
    path.write_text(good + "---\n- email: z@example.org\n  tags: [agents]\n")
    loaded, errors = load_file(path)
    assert loaded == [] and "but found another document" in str(errors[0])


_entry = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.sampled_from(["[agents]", "[agents, reasoning]", "\n    - agents"]),
    st.sampled_from(["", "  cadence: weekly\n", "  # a comment\n"]),
)


@given(st.lists(_entry, min_size=1, max_size=5, unique_by=lambda e: e[0]), st.data())
@settings(max_examples=150 if FULL_TESTS else 40, deadline=None)
def test_removing_anyone_from_a_list_keeps_the_others_and_the_bom(entries, data) -> None:
    """Whatever the list, removing one reader leaves exactly the others loading as
    before, and the file's byte-order mark as it was (none added, none lost)."""
    import tempfile

    bom = data.draw(st.booleans())
    victim = data.draw(st.sampled_from([name for name, _, _ in entries]))
    text = "".join(f"- email: {n}@example.org\n  tags: {t}\n{extra}" for n, t, extra in entries)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "team.yaml"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        before = {e.subscriber.address: e.subscriber for e in load_file(path)[0]}
        remove_subscriber(Path(folder), f"{victim}@example.org")
        if len(entries) == 1:
            assert not path.exists()
            return
        after, errors = load_file(path)
        assert errors == []
        del before[f"{victim}@example.org"]
        assert {e.subscriber.address: e.subscriber for e in after} == before
        assert path.read_bytes().startswith(b"\xef\xbb\xbf") == bom


@given(st.sampled_from(["max_items", "min_score"]), st.booleans())
def test_yes_or_no_is_not_a_number(field: str, value: bool) -> None:
    """Before: `max_items: true` loaded as 1 (and `min_score: true` as 1.0)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        errors = errors_for(
            Path(folder), f"email: a@example.org\ntags: [agents]\n{field}: {str(value).lower()}\n"
        )
    assert errors == [
        f"bob.yaml:3:{len(field) + 3}: {field}: expected a number, got {str(value).lower()}"
    ]


# Domains for the address property test: repeated (the per-domain checks are made once),
# mixed case, internationalized, refused, and at the length limits.
LONG_DOMAIN = "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 50 + ".org"  # 246
DOMAINS = [
    "example.org",
    "ExAmple.ORG",
    "bücher.example",
    "xn--bcher-kva.example",
    "localhost",
    "a..b.org",
    "invalid.test",
    "x.onion",
    "[192.0.2.1]",
    "example.org>",
    "ex ample.org",
    "\u0301example.org",
    LONG_DOMAIN,
    "ｅxample.org",
]
LOCAL = st.text(
    st.sampled_from("abcXYZ019.!#$%&'*+/=?^_`{|}~-@\"<> \\üé\u0301"), min_size=0, max_size=70
) | st.sampled_from(["Postmaster", "abuse", "ann", "a" * 64, "a" * 65, '"quoted"', "a.b"])


@settings(max_examples=1000 if FULL_TESTS else 150, deadline=None)
@given(local=LOCAL, domain=st.sampled_from(DOMAINS) | st.from_regex(r"[a-zA-Z0-9.\-ü]{0,70}"))
@example(local="a" * 7, domain=LONG_DOMAIN)  # 254 characters: the longest address allowed
@example(local="a" * 8, domain=LONG_DOMAIN)  # one over
def test_an_address_loads_exactly_as_email_validator_checks_it(local: str, domain: str) -> None:
    """The loader checks a domain once and reuses that; the result must be email-validator's
    for every address: the same stored form, or an error with its reason."""
    from email_validator import EmailNotValidError, validate_email
    from pydantic import ValidationError

    from paperpost.subscribers import Subscriber

    address = f"{local}@{domain}"
    for _ in range(2):  # the second time the domain's checks come from the cache
        try:
            expected = validate_email(
                address.strip(), check_deliverability=False, allow_smtputf8=False
            )
        except EmailNotValidError as exc:
            with pytest.raises(ValidationError, match=re.escape(str(exc))):
                Subscriber.model_validate({"email": address, "tags": ["agents"]})
            continue
        if len(expected.local_part) > 64:
            with pytest.raises(ValidationError, match="at most 64 are allowed"):
                Subscriber.model_validate({"email": address, "tags": ["agents"]})
            continue
        loaded = Subscriber.model_validate({"email": address, "tags": ["agents"]})
        assert loaded.email == expected.ascii_email


@settings(max_examples=500 if FULL_TESTS else 100, deadline=None)
@given(name=st.text(min_size=1, max_size=40) | st.text(st.characters(max_codepoint=127)))
def test_a_name_is_refused_exactly_when_it_holds_a_control_character(name: str) -> None:
    import unicodedata

    from pydantic import ValidationError

    from paperpost.sanitize import BIDI
    from paperpost.subscribers import Subscriber

    text = name.replace("\t", " ")
    bad = [c for c in text if unicodedata.category(c) == "Cc" or BIDI.match(c)]
    entry = {"email": "ann@example.org", "name": name, "tags": ["agents"]}
    if "\r" in name or "\n" in name:
        return  # refused as a second line, before the control check
    if bad:
        with pytest.raises(ValidationError, match=f"U\\+{ord(bad[0]):04X}"):
            Subscriber.model_validate(entry)
    else:
        try:
            Subscriber.model_validate(entry)
        except ValidationError as exc:  # blank, too long or no letters: not a control error
            assert "control character" not in str(exc)


YAML_BITS = st.sampled_from(
    [
        "- email: a@example.org\n",
        "  tags: [agents]\n",
        "email: b@example.org\n",
        "---\n",
        "--- \n",
        "...\n",
        "%YAML 1.1\n",
        "%TAG ! tag:x,2000:\n",
        "\ufeff",
        "\r",
        "\n",
        "\x85",
        "\u2028",
        "- [a, b\n",
        "a: 'x\n",
        ": :\n",
        "  - x\n",
        "- &a {k: v}\n",
        "- *a\n",
        "# a comment --- ...\n",
        "key: 100%\n",
        "\t- x\n",
        "---",
        "..",
        ".",
        "-",
    ]
)


@settings(max_examples=600 if FULL_TESTS else 120, deadline=None)
@given(bits=st.lists(YAML_BITS, max_size=12))
def test_the_syntax_check_refuses_exactly_what_the_parser_does(bits: list[str]) -> None:
    """The whole-file check before any entry is used: a YAML error or a second document,
    with the same message as the parser's own event stream gives."""
    import tempfile

    import yaml
    from yaml.events import DocumentStartEvent

    from paperpost.subscribers import _check_syntax

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "list.yaml"
        path.write_text("".join(bits), encoding="utf-8")
        expected = None
        with path.open(encoding="utf-8-sig") as stream:
            parser = yaml.CSafeLoader(stream)
            try:
                documents = 0
                while expected is None and parser.check_event():
                    documents += isinstance(parser.get_event(), DocumentStartEvent)
                    if documents > 1:
                        expected = "but found another document"
            except yaml.YAMLError as exc:
                expected = str(exc)
            finally:
                parser.dispose()
        if expected is None:
            _check_syntax(path, "utf-8-sig")
        else:
            with pytest.raises(yaml.YAMLError, match=re.escape(expected)):
                _check_syntax(path, "utf-8-sig")


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_second_document_is_found_across_the_checks_read_boundary(
    tmp_path: Path, cut: int
) -> None:
    first = "- email: a@example.org\n  tags: [agents]\n"
    padding = "#" * ((1 << 20) - len(first) - cut - 1) + "\n"  # "---" starts `cut` before 1 MB
    path = tmp_path / "list.yaml"
    path.write_text(first + padding + "---\n- email: b@example.org\n  tags: [agents]\n")
    loaded, errors = load_file(path)
    assert loaded == [] and len(errors) == 1
    assert "but found another document" in errors[0].message or "another document" in str(errors[0])


@settings(max_examples=100 if FULL_TESTS else 25, deadline=None)
@given(
    files=st.lists(
        st.lists(st.sampled_from(["a", "b", "c", "D", "e", "f"]), min_size=1, max_size=6),
        min_size=1,
        max_size=4,
    )
)
def test_each_address_loads_once_and_every_repeat_names_the_first_file(
    files: list[list[str]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        first: dict[str, str] = {}
        expected_errors = []
        for number, names in enumerate(files):
            path = Path(folder) / f"{number}.yaml"
            path.write_text("".join(f"- email: {n}@example.org\n  tags: [agents]\n" for n in names))
            for index, name in enumerate(names):
                if name.lower() in first:
                    expected_errors.append(
                        f"{path}:{2 * index + 1}:1: email: {name}@example.org is already "
                        f"subscribed in {first[name.lower()]}; keep one of the two"
                    )
                else:
                    first[name.lower()] = str(path)
        entries, errors = load_subscribers(Path(folder))
        assert [e.subscriber.address for e in entries] == [f"{n}@example.org" for n in first]
        assert [str(e) for e in errors] == expected_errors


def test_a_list_can_be_read_on_by_another_thread(tmp_path: Path) -> None:
    """The flow and the plain run read the list as their batches need it; a reader started
    in one thread and resumed (or dropped) in another still reads and checks every entry."""
    from concurrent.futures import ThreadPoolExecutor

    from paperpost.subscribers import iter_subscribers

    (tmp_path / "a.yaml").write_text(
        "".join(f"- email: r{i % 3}@example.org\n  tags: [agents]\n" for i in range(4))
    )
    errors: list = []
    reader = iter_subscribers(tmp_path, errors)
    first = next(reader)
    with ThreadPoolExecutor(1) as other:
        rest = other.submit(list, reader).result()
        dropped = iter_subscribers(tmp_path, [])
        next(dropped)
        other.submit(dropped.close).result()
    assert [e.subscriber.email for e in [first, *rest]] == [f"r{i}@example.org" for i in range(3)]
    assert [e.line for e in errors] == [7]
