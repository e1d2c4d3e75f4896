"""The run lifecycle, the mode table, the canonical rule, leak classification and serve's job
table: fast tests on real git remotes, no Docker."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from controller.flows import jobs, modes, runs
from controller.flows.canonical import should_advance
from controller.flows.context import Context, Publication
from controller.flows.leaks import classify
from controller.registry.documents import Canonical, Request
from controller.registry.results import RunResult
from controller.registry.schemas import REQUEST_MODES, RESULT_MODES
from controller.registry.store import Registry
from controller.runtime.stack import LabelledObject
from controller.util.errors import BadInput
from controller.util.paths import StateDir
from tests import helpers
from tests.helpers import HEX_A, SETTINGS_HEAD, RemoteRegistry

REPO = Path(__file__).resolve().parent.parent
RUN = "20261129T120000-static-0000a1"


def canonical(known_good: str) -> Canonical:
    return Canonical("notes", known_good, "20261128T000000-notes-000001", "2026-11-28T00:00:00Z")


def test_should_advance_seeds_then_needs_a_descendant_never_the_same_commit() -> None:
    assert should_advance(None, HEX_A, descends=False)  # the first green cold seeds
    assert not should_advance(canonical(HEX_A), HEX_A, descends=True)  # already the known-good
    assert should_advance(canonical(HEX_A), "b" * 40, descends=True)
    assert not should_advance(canonical(HEX_A), "b" * 40, descends=False)  # an unmerged PR head


def labelled(mode: str, **labels: str) -> LabelledObject:
    return LabelledObject("service", "x", {"ccci.managed": "true", "ccci.mode": mode, "ccci.owner": "me",
                                           **labels})


def test_leaks_classify_judges_cold_by_run_warm_by_lock_and_spares_data_and_infra() -> None:
    assert classify(labelled("cold", **{"ccci.run": "r1"}), {"r1"}, set(), "me") is None
    assert "r2 is not in flight" in str(classify(labelled("cold", **{"ccci.run": "r2"}), {"r1"}, set(), "me"))
    warm = labelled("warm", **{"ccci.app": "warm-notes"})
    assert classify(warm, set(), {"warm-notes"}, "me") is None
    assert "no run holds its lock" in str(classify(warm, set(), set(), "me"))
    volume = LabelledObject("volume", "warm-notes_data", dict(warm.labels))
    assert classify(volume, set(), set(), "me") is None  # warm data is kept on purpose
    assert classify(labelled("infra"), set(), set(), "me") is None
    assert classify(labelled("cold", **{"ccci.run": "r2"}), set(), set(), "someone-else") is None
    assert "unknown ccci.mode" in str(classify(labelled("odd"), set(), set(), "me"))


def test_mode_table_matches_the_registry_format() -> None:
    assert set(modes.REQUESTABLE) == set(REQUEST_MODES)
    assert {name for name, m in modes.MODES.items() if m.runner is not None} == set(RESULT_MODES)
    assert [name for name, m in modes.MODES.items() if m.gates] == ["cold"]


@pytest.fixture
def ctx(git_remote: RemoteRegistry, tmp_path: Path) -> Context:
    recipe = tmp_path / "static-src"
    recipe.mkdir()
    git_remote.edit({"ccci.yaml": SETTINGS_HEAD.replace("quick: ['*']", "quick: [alice]")
                     + f"recipes:\n  static: {{source: {recipe}}}\n"})
    return Context.open(Registry(git_remote.clone("controller")), StateDir(tmp_path / "state"))


def request(mode: str, by: str = "alice") -> Request:
    return Request(run_id=RUN, recipe="static", ref=HEX_A, mode=mode, requested_by=by)


def test_an_unknown_mode_has_no_authority_even_when_everyone_may_request(ctx: Context) -> None:
    for mode in ("rewarm", "sweep", "warm"):
        with pytest.raises(BadInput, match=r"at 'mode': '\w+' is not one of cold, quick"):
            runs.decide(ctx, request(mode))


def test_quick_without_canonical_falls_back_by_the_mode_table(ctx: Context) -> None:
    assert runs.decide(ctx, request("quick")) == runs.Decision("cold", fallback="no-canonical")
    with pytest.raises(BadInput, match=r"not allowed by authority\.quick"):
        runs.decide(ctx, request("quick", by="bob"))


class RecordingSink:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.seen: list[str] = []

    def claimed(self, ctx: Context, run: runs.Run) -> None:
        self.seen.append(f"claimed {run.result.run}")
        if self.fail:
            raise RuntimeError("sink down")

    def published(self, ctx: Context, result: RunResult, request: Request | None,
                  publication: Publication) -> None:
        self.seen.append(f"published {result.run} {result.outcome}")
        if self.fail:
            raise RuntimeError("sink down")


def test_claim_and_verdict_reach_every_sink_after_the_registry_and_a_failing_sink_costs_nothing(
        ctx: Context) -> None:
    broken, after = RecordingSink("broken", fail=True), RecordingSink("after")
    ctx.sinks = [broken, after]
    run = runs.claim(ctx, request("cold"), runs.Decision("cold"))
    assert run is not None
    assert helpers.results_in(ctx.registry.root)[RUN]["outcome"] == "running"
    run.result.outcome = "fail"
    run.result.error = "asserts failed: http"
    publication = runs.finish(ctx, run)
    assert publication.commit == ctx.registry.head() and not publication.advanced
    assert helpers.results_in(ctx.registry.root)[RUN]["outcome"] == "fail"
    assert helpers.log_subjects(ctx.registry.root)[0].startswith(f"[cold] static@aaaaaaa fail (run {RUN})")
    assert after.seen == [f"claimed {RUN}", f"published {RUN} fail"]  # the broken sink did not stop it
    assert not ctx.state.run_marker(RUN).exists()  # published: no longer in flight


def test_a_second_claim_of_one_request_loses_without_waiting(ctx: Context) -> None:
    first = runs.claim(ctx, request("cold"), runs.Decision("cold"))
    assert first is not None and first.marker is not None
    assert runs.claim(ctx, request("cold"), runs.Decision("cold")) is None  # in flight here: at once
    first.marker.end()
    assert runs.claim(ctx, request("cold"), runs.Decision("cold")) is None  # its claim is committed
    assert not ctx.state.run_marker(RUN).exists()


def test_results_are_committed_only_by_the_lifecycle() -> None:
    """Every writer of a result file lives in flows/runs.py (the forge reporter and the rewarm
    queue hear of verdicts as sinks)."""
    committers, result_paths = set(), set()
    for path in sorted((REPO / "controller").rglob("*.py")):
        text, rel = path.read_text(), path.relative_to(REPO).as_posix()
        if re.search(r"commit_message\(|\.transact\(", text):
            committers.add(rel)
        if "result_rel(" in text:
            result_paths.add(rel)
    # store: defines transact (and commits requests); warm_apps: the snapshot index by hand;
    # sweep: its requests with sweep/last.yaml; fleet/migrate: the single-host index moved.
    assert committers == {"controller/flows/runs.py", "controller/registry/store.py",
                          "controller/registry/results.py", "controller/flows/warm_apps.py",
                          "controller/flows/sweep.py", "controller/flows/fleet/migrate.py"}
    for rel in ("controller/flows/sweep.py", "controller/flows/fleet/migrate.py"):
        assert "result_rel(" not in (REPO / rel).read_text()
    # Who names a result's path: the lifecycle writes it; the rest read it or link to it.
    assert result_paths == {"controller/flows/runs.py", "controller/registry/store.py",
                            "controller/util/names.py", "controller/flows/audit.py",
                            "controller/flows/forge/reporter.py", "controller/flows/fleet/keepers.py",
                            "controller/registry/index.py"}
    assert "result_rel(" not in (REPO / "controller/flows/warm_apps.py").read_text()


def test_prune_is_due_by_interval_or_low_disk_at_most_once_a_minute() -> None:
    def low() -> bool:
        return True

    def fine() -> bool:
        return False

    assert jobs.prune_due(None, 3600, once=False, disk_is_low=fine)  # never pruned: at start
    assert not jobs.prune_due(None, 3600, once=True, disk_is_low=fine)  # --once: only when low
    assert jobs.prune_due(None, 3600, once=True, disk_is_low=low)
    assert not jobs.prune_due(30, 3600, once=False, disk_is_low=low)  # a minute between checks
    assert jobs.prune_due(3600, 3600, once=False, disk_is_low=fine)
    assert not jobs.prune_due(600, 3600, once=False, disk_is_low=fine)
    assert jobs.prune_due(600, 3600, once=False, disk_is_low=low)


def test_job_ledger_survives_a_restart_and_reads_the_sweep_file_of_older_versions(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").ensure()
    state.legacy_sweep_file.write_text(json.dumps({"last_sweep_at": "2026-11-28T02:00:01Z"}))
    ledger = jobs.Ledger(state)
    assert ledger.last_run("sweep") == dt.datetime(2026, 11, 28, 2, 0, 1, tzinfo=dt.UTC)
    ledger.record("sweep", dt.datetime(2026, 11, 29, 2, 0, 0, tzinfo=dt.UTC), {"filed": ["x"]})
    again = jobs.Ledger(state)  # a new process
    assert again.last_run("sweep") == dt.datetime(2026, 11, 29, 2, 0, 0, tzinfo=dt.UTC)
    assert again.entry("sweep") == {"at": "2026-11-29T02:00:00Z", "summary": {"filed": ["x"]}}
    assert again.last_run("prune") is None
