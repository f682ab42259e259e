from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
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
