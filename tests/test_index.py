"""The results index: derived from git, brought up to date from what changed, rebuilt when it
cannot be; what it says equals what a full read of every result says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from controller.registry import index as index_module
from controller.registry.index import ResultsIndex, brief_of
from controller.registry.results import RunResult
from controller.registry.store import Registry
from controller.util.yamlio import dump_document, load_untrusted
from tests import helpers
from tests.helpers import HEX_A, RemoteRegistry


def result(run: str, recipe: str, mode: str, outcome: str, started: str, *, host: str | None = None,
           controller: str | None = None) -> str:
    doc = RunResult(run=run, recipe=recipe, ref=HEX_A, mode=mode, requested_mode=mode, outcome=outcome,
                    started_at=started, finished_at=None if outcome == "running" else started, requested_by="alice",
                    host=host, controller=controller)
    return dump_document(doc.to_document())


def commit(clone: Path, files: dict[str, str], message: str = "results") -> None:
    for rel, text in files.items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text(text)
    helpers.git(clone, "add", "-A")
    helpers.git(clone, "commit", "-qm", message)


def rel(run: str) -> str:
    return f"results/{run[:4]}-{run[4:6]}/{run}.yaml"


def canonical(recipe: str, known_good: str, run: str) -> str:
    return dump_document({"recipe": recipe, "known_good": known_good, "promoted_by_run": run,
                          "promoted_at": "2026-12-01T10:00:00Z"})


def saved(path: Path) -> dict[str, object]:
    """What the index file says (its second line; the first is format, commit and digest)."""
    body = path.read_bytes().split(b"\n", 1)[1]
    return dict(json.loads(body))


def edit_by_hand(path: Path, doc: dict[str, object]) -> None:
    """A new body under the old header: what a hand (or a torn tool) leaves."""
    header = path.read_bytes().split(b"\n", 1)[0]
    path.write_bytes(header + b"\n" + json.dumps(doc).encode() + b"\n")


def test_a_brief_read_by_line_equals_the_full_parse() -> None:
    text = result("20261201T100000-notes-aaaaaa", "notes", "quick", "fail", "2026-12-01T10:00:00Z")
    doc = load_untrusted(text.encode(), "x")
    brief = brief_of(text, "x")
    assert brief == {k: doc[k] for k in brief} and brief["outcome"] == "fail" and brief["finished_at"]
    odd = "run: '20261201T100000-notes-aaaaaa'\nrecipe: notes\noutcome: pass\nmode: cold\n"
    assert brief_of(odd, "x")["run"] == "20261201T100000-notes-aaaaaa"  # quoted: the full parser


def test_the_index_follows_new_results_and_rebuilds_after_a_rewrite(git_remote: RemoteRegistry,
                                                                     tmp_path: Path) -> None:
    clone = git_remote.clone("controller")
    registry = Registry(clone)
    path = tmp_path / "cache" / "results.json"
    a, b, c = (f"20261201T1{i}0000-notes-00000{i}" for i in range(3))
    commit(clone, {rel(a): result(a, "notes", "cold", "pass", "2026-12-01T10:00:00Z"),
                   rel(b): result(b, "notes", "quick", "running", "2026-12-01T11:00:00Z")})
    index = ResultsIndex(registry, path).refresh()
    assert index.count == 2 and index.running == [b]
    notes = index.recipes["notes"]
    assert notes["last"]["run"] == b and notes["last_cold"]["run"] == a
    assert notes["last_cold_finished_at"] == "2026-12-01T10:00:00Z"
    built_at = saved(path)["commit"]
    # The verdict of b and a new run c: read from what changed, not from the history.
    commit(clone, {rel(b): result(b, "notes", "quick", "pass", "2026-12-01T11:00:00Z"),
                   rel(c): result(c, "static", "cold", "running", "2026-12-01T12:00:00Z")})
    moved = ResultsIndex(registry, path).refresh()
    assert moved.count == 3 and moved.running == [c]
    assert moved.recipes["notes"]["last_quick"]["outcome"] == "pass"
    assert saved(path)["commit"] != built_at
    # A history rewritten under it (the indexed commit is gone): rebuilt, not trusted.
    helpers.git(clone, "reset", "-q", "--hard", "HEAD~1")
    rebuilt = ResultsIndex(registry, path).refresh()
    assert rebuilt.count == 2 and rebuilt.running == [b]
    # A broken or foreign cache file is rebuilt too.
    path.write_text("{not json")
    assert ResultsIndex(registry, path).refresh().count == 2


def test_status_reads_the_index_and_shows_one_recipes_recent_runs(git_remote: RemoteRegistry,
                                                                  state_dir: Path) -> None:
    git_remote.set_recipes("  notes: {source: /nonexistent}\n")
    clone = git_remote.clone("controller")
    runs = [f"20261201T1{i:01d}0000-notes-0000{i:02x}" for i in range(4)]
    commit(clone, {rel(r): result(r, "notes", "cold" if i % 2 else "quick", "pass", f"2026-12-01T1{i}:00:00Z")
                   for i, r in enumerate(runs)})
    proc = helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), "--json",
                        "--recipe", "notes", check=True)
    status = json.loads(proc.stdout)
    assert [r["run"] for r in status["history"]] == list(reversed(runs))
    row = next(r for r in status["recipes"] if r["recipe"] == "notes")
    assert row["last_run"] == runs[-1] and row["last_cold"]["run"] == runs[3] and row["last_quick"]["run"] == runs[2]
    assert status["results"] == 4
    unknown = helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), "--recipe", "nothere")
    assert unknown.returncode == 2 and "no recipe named 'nothere'" in unknown.stderr


def test_a_cache_edited_by_hand_is_rebuilt_and_deleting_it_changes_nothing_but_time(
        git_remote: RemoteRegistry, state_dir: Path) -> None:
    git_remote.set_recipes("  notes: {source: /nonexistent}\n  static: {source: /nonexistent}\n")
    clone = git_remote.clone("controller")
    runs = [f"20261201T1{i:01d}0000-{r}-0000{i:02x}" for i, r in enumerate(("notes", "static", "notes"))]
    commit(clone, {rel(r): result(r, r.split("-")[1], "cold", "running" if i == 2 else "pass",
                                  f"2026-12-01T1{i}:00:00Z") for i, r in enumerate(runs)})

    def status() -> dict[str, object]:
        proc = helpers.ccci("--state-dir", str(state_dir), "status", "--registry", str(clone), "--json",
                            "--recipe", "notes", check=True)
        doc = json.loads(proc.stdout)
        doc.pop("disk", None)  # free space moves on its own
        return doc

    first = status()
    cache = next((state_dir / "cache").glob("results-*.json"))
    # Edited by hand at the same commit (a lie that parses): the digest gives it away.
    doc = saved(cache)
    doc["recipes"]["notes"]["last_cold"]["outcome"] = "fail"  # type: ignore[index]
    doc["running"] = []
    edit_by_hand(cache, doc)
    assert status() == first
    assert saved(cache)["running"] == [runs[2]]
    # Gone: built again, the same answer.
    cache.unlink()
    assert status() == first and cache.exists()
    assert first["results"] == 3 and first["running"] == [runs[2]]


def test_the_index_keeps_each_canonical_with_its_promoting_host(git_remote: RemoteRegistry,
                                                                 tmp_path: Path) -> None:
    clone = git_remote.clone("controller")
    registry = Registry(clone)
    path = tmp_path / "cache" / "results.json"
    a, b = "20261201T100000-notes-00000a", "20261201T110000-notes-00000b"
    promoting = result(a, "notes", "cold", "pass", "2026-12-01T10:00:00Z", controller="ci07.example.org:4242")
    commit(clone, {rel(a): promoting, "canonicals/notes.yaml": canonical("notes", HEX_A, a)})
    built = ResultsIndex(registry, path).refresh()
    assert built.canonicals == {"notes": {"known_good": HEX_A, "promoted_by_run": a, "host": "ci07"}}
    # Advanced by a run naming its host: read from what changed.
    commit(clone, {rel(b): result(b, "notes", "cold", "pass", "2026-12-01T11:00:00Z", host="beta"),
                   "canonicals/notes.yaml": canonical("notes", "b" * 40, b)})
    moved = ResultsIndex(registry, path).refresh()
    assert moved.canonicals["notes"] == {"known_good": "b" * 40, "promoted_by_run": b, "host": "beta"}
    # A canonical removed by hand leaves the index too; the same answer as a full build.
    helpers.git(clone, "rm", "-q", "canonicals/notes.yaml")
    helpers.git(clone, "commit", "-qm", "no canonical")
    assert ResultsIndex(registry, path).refresh().canonicals == {}
    path.unlink()
    assert ResultsIndex(registry, path).refresh().canonicals == {}
    # A canonical edited by hand in the cache: the digest gives it away.
    helpers.git(clone, "revert", "--no-edit", "HEAD")
    truth = ResultsIndex(registry, path).refresh().canonicals
    doc = saved(path)
    doc["canonicals"] = {"notes": {"known_good": HEX_A, "promoted_by_run": a, "host": "mallory"}}
    edit_by_hand(path, doc)
    assert ResultsIndex(registry, path).refresh().canonicals == truth


def test_an_index_of_the_previous_format_is_rebuilt_with_what_the_new_one_adds(
        git_remote: RemoteRegistry, tmp_path: Path) -> None:
    clone = git_remote.clone("controller")
    registry = Registry(clone)
    path = tmp_path / "cache" / "results.json"
    a = "20261201T100000-notes-00000a"
    commit(clone, {rel(a): result(a, "notes", "cold", "pass", "2026-12-01T10:00:00Z", host="alpha"),
                   "canonicals/notes.yaml": canonical("notes", HEX_A, a)})
    fresh = ResultsIndex(registry, path).refresh()
    # What ccci of format 3 left at this very commit: one indented JSON document, its digest
    # inside, no canonicals — and nothing in it about the running run it claims.
    old = {k: v for k, v in saved(path).items() if k != "canonicals"}
    old.update(format=3, running=["20261201T090000-notes-000009"])
    old["digest"] = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(old, sort_keys=True, indent=1) + "\n")
    upgraded = ResultsIndex(registry, path).refresh()
    assert upgraded.canonicals == fresh.canonicals == {
        "notes": {"known_good": HEX_A, "promoted_by_run": a, "host": "alpha"}}
    assert upgraded.running == [] and upgraded.count == 1
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["format"] == index_module.FORMAT == 4 and header["commit"] == registry.head()
    # A torn file (the body cut short) is rebuilt too.
    path.write_bytes(path.read_bytes()[:-40])
    assert ResultsIndex(registry, path).refresh().canonicals == fresh.canonicals
