"""The nightly sweep: when it is due, what it files, in which order."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from controller.flows.sweep import last_scheduled, plan, sweep_due
from controller.registry.settings import settings_from_document
from testbed.fixtures import build_recipe
from tests import helpers
from tests.helpers import SETTINGS_HEAD, RemoteRegistry, recipe_entry

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_sweep_is_due_after_its_slot_and_after_a_day() -> None:
    now = at("2026-11-29T03:00:00")
    assert sweep_due(now, None, "02:00", "UTC")
    assert not sweep_due(now, at("2026-11-29T02:00:05"), "02:00", "UTC")
    assert sweep_due(now, at("2026-11-28T02:00:05"), "02:00", "UTC")
    assert not sweep_due(at("2026-11-29T01:00:00"), at("2026-11-28T02:00:05"), "02:00", "UTC")


def test_sweep_slot_follows_the_time_zone() -> None:
    slot = last_scheduled(at("2026-07-01T12:00:00"), "02:00", "Europe/Berlin")
    assert slot == at("2026-07-01T00:00:00")  # 02:00 CEST


def test_plan_is_stalest_first_and_capped() -> None:
    settings = settings_from_document({"base_domain": "x", "recipes": {n: {"source": "/src"} for n in "abcd"},
                                       "sweep": {"max_tests": 3}})
    last = {"a": "2026-11-28T00:00:00Z", "b": "2026-11-20T00:00:00Z", "d": "2026-11-29T00:00:00Z"}
    assert plan(settings, last) == ["c", "b", "a"]


def test_sweep_now_files_cold_requests_for_each_tracked_head(git_remote: RemoteRegistry, tmp_path: Path,
                                                             state_dir: Path) -> None:
    static = build_recipe("static", tmp_path / "recipes" / "static")
    notes = build_recipe("notes", tmp_path / "recipes" / "notes", versions=[1, 2])
    static.branch_commit("unmerged", 1)
    git_remote.edit({"ccci.yaml": SETTINGS_HEAD.replace("sweep: {max_tests: 0}", "sweep: {max_tests: 5}")
                     + "recipes:\n" + recipe_entry("static", static.path)
                     + recipe_entry("notes", notes.path, track="tags")})
    clone = git_remote.clone("controller")
    proc = helpers.ccci("--state-dir", str(state_dir), "sweep", "--registry", str(clone), "--now")
    assert proc.returncode == 0, proc.stderr
    filed = sorted((clone / "requests").glob("*.yaml"))
    docs = {helpers.read_yaml(p)["recipe"]: helpers.read_yaml(p) for p in filed}
    assert docs["static"]["ref"] == static.head() and docs["static"]["requested_by"] == "sweep"
    assert docs["notes"]["ref"] == notes.versions[2]  # newest tag
    assert all(d["mode"] == "cold" for d in docs.values())
    # One commit: both requests and the fleet's record of the sweep.
    assert sum(1 for s in helpers.log_subjects(clone) if s.startswith("[sweep] ")) == 1
    record = helpers.read_yaml(clone / "sweep" / "last.yaml")
    assert record["host"] == helpers.HOST and sorted(record["filed"]) == sorted(p.stem for p in filed)
    assert helpers.git(clone, "show", "--name-only", "--format=", "HEAD").split() == sorted(
        [f"requests/{p.name}" for p in filed] + ["sweep/last.yaml"])
    again = helpers.ccci("--state-dir", str(state_dir), "sweep", "--registry", str(clone))
    assert "sweep not due" in again.stdout
