"""The results index: derived from git, brought up to date from what changed, rebuilt when it
cannot be; what it says equals what a full read of every result says."""

from __future__ import annotations

import json
from pathlib import Path

from controller.registry.index import ResultsIndex, brief_of
from controller.registry.results import RunResult
from controller.registry.store import Registry
from controller.util.yamlio import dump_document, load_untrusted
from tests import helpers
from tests.helpers import HEX_A, RemoteRegistry


def result(run: str, recipe: str, mode: str, outcome: str, started: str) -> str:
    doc = RunResult(run=run, recipe=recipe, ref=HEX_A, mode=mode, requested_mode=mode, outcome=outcome,
                    started_at=started, finished_at=None if outcome == "running" else started, requested_by="alice")
    return dump_document(doc.to_document())


def commit(clone: Path, files: dict[str, str], message: str = "results") -> None:
    for rel, text in files.items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text(text)
    helpers.git(clone, "add", "-A")
    helpers.git(clone, "commit", "-qm", message)


def rel(run: str) -> str:
    return f"results/{run[:4]}-{run[4:6]}/{run}.yaml"


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
    built_at = json.loads(path.read_text())["commit"]
    # The verdict of b and a new run c: read from what changed, not from the history.
    commit(clone, {rel(b): result(b, "notes", "quick", "pass", "2026-12-01T11:00:00Z"),
                   rel(c): result(c, "static", "cold", "running", "2026-12-01T12:00:00Z")})
    moved = ResultsIndex(registry, path).refresh()
    assert moved.count == 3 and moved.running == [c]
    assert moved.recipes["notes"]["last_quick"]["outcome"] == "pass"
    assert json.loads(path.read_text())["commit"] != built_at
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
    doc = json.loads(cache.read_text())
    doc["recipes"]["notes"]["last_cold"]["outcome"] = "fail"
    doc["running"] = []
    cache.write_text(json.dumps(doc))
    assert status() == first
    assert json.loads(cache.read_text())["running"] == [runs[2]]
    # Gone: built again, the same answer.
    cache.unlink()
    assert status() == first and cache.exists()
    assert first["results"] == 3 and first["running"] == [runs[2]]
