"""Registry documents: safe loading, schema errors that name file and field, round-trip writes."""

from __future__ import annotations

import pytest

from controller.flows.requests import trigger_mode
from controller.registry import documents
from controller.util import names
from controller.util.errors import BadInput
from controller.util.names import RUN_ID_RE
from controller.util.timeutil import new_run_id
from controller.util.yamlio import dump_document, load_untrusted, update_document

GOOD = b"recipe: notes\nref: " + b"a" * 40 + b"\nmode: cold\nrequested_by: alice\n"
NAME = "20261129T120000-notes-abc123.yaml"


def test_good_request_parses() -> None:
    request = documents.parse_request(GOOD, NAME)
    assert (request.recipe, request.mode, request.requested_by) == ("notes", "cold", "alice")
    assert request.run_id == NAME[:-5]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GOOD.replace(b"mode: cold", b"mode: warm"), "at 'mode': 'warm' is not one of cold, quick"),
        (GOOD.replace(b"ref: " + b"a" * 40, b"ref: zzz"), "at 'ref'"),
        (GOOD.replace(b"requested_by: alice\n", b""), "at 'requested_by': is missing"),
        (GOOD + b"pr: seven\n", "at 'pr'"),
        (GOOD + b"colour: red\n", "unknown key 'colour'"),
        (GOOD + b"mode: quick\n", "duplicate key"),
        (b"a: &x [1]\nb: *x\n", "anchors and aliases are not allowed"),
        (b"recipe: [unclosed\n", "malformed YAML"),
        (b"- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_request_names_file_and_field(raw: bytes, expected: str) -> None:
    with pytest.raises(BadInput) as caught:
        documents.parse_request(raw, NAME)
    assert caught.value.message.startswith(f"requests/{NAME}: ")
    assert expected in caught.value.message


def test_oversized_file_is_refused_before_parsing() -> None:
    with pytest.raises(BadInput, match="over the 16384-byte limit"):
        documents.parse_request(b"x: " + b"y" * 20000, NAME)


def test_recipe_must_match_run_id() -> None:
    with pytest.raises(BadInput, match="does not match the run id's recipe"):
        documents.parse_request(GOOD.replace(b"recipe: notes", b"recipe: other"), NAME)


@pytest.mark.parametrize("name", ["../evil.yaml", "notes.yaml", "20261129T120000-../x-abc123.yaml"])
def test_bad_file_names_get_a_safe_result_id(name: str) -> None:
    run_id = names.result_id_for(name)
    assert run_id.startswith("invalid-")
    assert "/" not in names.result_rel(run_id)[len("results/invalid/"):]


def test_run_ids_are_sortable_and_valid() -> None:
    run_id = new_run_id("notes")
    assert RUN_ID_RE.match(run_id)
    assert names.result_rel(run_id).startswith(f"results/{run_id[:4]}-{run_id[4:6]}/")


def test_alias_bomb_is_refused_quickly() -> None:
    bomb = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((ord("b") + i,) * 2 + (ord("a") + i,) * 9)
        for i in range(8)
    )
    with pytest.raises(BadInput, match="anchors and aliases"):
        load_untrusted(bomb, "requests/bomb.yaml")


def test_update_keeps_untouched_lines_byte_identical() -> None:
    original = (
        "# reviewed by humans\n"
        "recipe: notes   # the recipe\n"
        "source: https://git.example.org/notes.git\n"
        "known_good: " + "a" * 40 + "\n"
        "domain: warm-notes.ci.test\n"
        "promoted_by_run: 20261129T120000-notes-abc123\n"
        "promoted_at: '2026-11-29T12:00:00Z'\n"
    )
    updated = update_document(original, {"known_good": "b" * 40, "recipe": "notes"})
    before, after = original.splitlines(), updated.splitlines()
    assert len(before) == len(after)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [3]
    assert after[3] == "known_good: " + "b" * 40


def test_new_documents_load_back() -> None:
    doc = {"app": "warm-notes", "volumes": {"db": {"files": 3, "bytes": 10}}, "taken_at": "2026-11-29T12:00:00Z"}
    assert load_untrusted(dump_document(doc).encode(), "x") == doc


@pytest.mark.parametrize(
    ("comment", "mode"), [("!testme", "cold"), ("!testme --quick", "quick"), ("  !testme\n", "cold")]
)
def test_trigger_comments(comment: str, mode: str) -> None:
    assert trigger_mode(comment) == mode


@pytest.mark.parametrize("comment", ["!testme --fast", "!TESTME", "!testme  --quick", "!testme please"])
def test_look_alike_triggers_are_rejected_with_a_reason(comment: str) -> None:
    with pytest.raises(BadInput, match="write exactly `!testme`"):
        trigger_mode(comment)


@pytest.mark.parametrize("comment", ["please !testme", "", "LGTM", "see the docs"])
def test_ordinary_comments_are_no_trigger(comment: str) -> None:
    assert trigger_mode(comment) is None


def test_project_examples_are_valid_documents() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    canonical = documents.parse_canonical((root / "canonicals" / "example.yaml").read_bytes(), "example")
    assert canonical.recipe == "notes"
    index = documents.parse_snapshot_index((root / "snapshots-index" / "example.yaml").read_bytes(), "example")
    assert index.app == "warm-notes"

