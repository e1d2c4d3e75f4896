"""The run lifecycle, the mode table, the canonical rule, leak classification and serve's job
table: fast tests on real git remotes, no Docker."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from controller.flows import jobs, modes, runs
from controller.flows.audit import audit
from controller.flows.canonical import should_advance
from controller.flows.context import Context, Publication
from controller.flows.leaks import classify
from controller.registry.documents import Canonical, Request
from controller.registry.results import RunResult
from controller.registry.schemas import REQUEST_MODES, RESULT_MODES
from controller.registry.store import Registry
from controller.runtime.stack import LabelledObject
from controller.util.alerts import list_alerts
from controller.util.errors import BadInput, CcciError
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


def test_the_verdict_is_committed_and_reported_before_housekeeping_then_finished_at_by_a_second_commit(
        ctx: Context) -> None:
    sink = RecordingSink("after")
    ctx.sinks = [sink]
    run = runs.claim(ctx, request("cold"), runs.Decision("cold"))
    assert run is not None
    seen_during_housekeeping: list[tuple[str, str | None, list[str]]] = []

    def teardown() -> None:  # what a cold run's teardown sees: the verdict is already out
        doc = helpers.results_in(helpers_remote_clone(ctx))[RUN]
        seen_during_housekeeping.append((doc["outcome"], doc["finished_at"], list(sink.seen)))

    run.housekeeping.then(teardown)
    run.result.outcome = "fail"
    run.result.cause = "recipe"
    runs.finish(ctx, run)
    assert seen_during_housekeeping == [("fail", None, [f"claimed {RUN}", f"published {RUN} fail"])]
    doc = helpers.results_in(ctx.registry.root)[RUN]
    assert doc["outcome"] == "fail" and doc["housekeeping"] == {"status": "done"}
    assert doc["verdict_at"] <= doc["finished_at"]
    subjects = helpers.log_subjects(ctx.registry.root)
    assert subjects[0] == f"[cold] static@aaaaaaa fail (run {RUN}); housekeeping done"
    assert subjects[1] == f"[cold] static@aaaaaaa fail (run {RUN})"
    assert sink.seen == [f"claimed {RUN}", f"published {RUN} fail"]  # the second commit tells no sink
    assert not ctx.state.run_marker(RUN).exists()
    assert audit(ctx.registry.root).violations == []


def helpers_remote_clone(ctx: Context) -> Path:
    """A fresh look at the remote, as a reader of the registry (or the forge) would have."""
    clone = ctx.state.root.parent / "reader"
    if clone.exists():
        helpers.git(clone, "pull", "-q")
    else:
        remote = helpers.git(ctx.registry.root, "remote", "get-url", "origin")
        helpers.git(clone.parent, "clone", "-q", remote, clone.name)
    return clone


def test_a_housekeeping_failure_after_a_pass_keeps_the_verdict_and_raises_an_alert(ctx: Context) -> None:
    run = runs.claim(ctx, request("cold"), runs.Decision("cold"))
    assert run is not None
    run.result.app = "static-0000a1"
    done: list[str] = []

    def undeploy() -> None:
        raise CcciError("docker stack rm static-0000a1: the engine did not answer", cause="infra")

    run.housekeeping.then(done.append, "remove work dir")  # runs although a later step failed
    run.housekeeping.then(undeploy)
    run.result.outcome = "pass"
    runs.finish(ctx, run)
    doc = helpers.results_in(ctx.registry.root)[RUN]
    assert doc["outcome"] == "pass" and doc["error"] is None
    assert doc["housekeeping"] == {"status": "failed",
                                   "error": "docker stack rm static-0000a1: the engine did not answer"}
    assert done == ["remove work dir"]
    alerts = {a["key"]: a["message"] for a in list_alerts(ctx.state)}
    assert "after the pass verdict of run" in alerts["housekeeping-static-0000a1"]
    assert helpers.log_subjects(ctx.registry.root)[0].endswith("pass (run " + RUN + "); housekeeping failed")
    assert audit(ctx.registry.root).violations == []


def set_follow_up_cold(ctx: Context, enabled: bool) -> None:
    def write(root: Path) -> list[str]:
        path = root / "ccci.yaml"
        path.write_text(path.read_text().replace(
            "static: {source: ", f"static: {{follow_up_cold: {str(enabled).lower()}, source: "))
        return ["ccci.yaml"]

    ctx.registry.transact(write, "recipes.static.follow_up_cold")
    ctx.refresh_settings()
    assert ctx.settings.recipe("static").follow_up_cold is enabled


@pytest.mark.parametrize("enabled", [True, False])
def test_a_failed_quick_run_files_a_follow_up_cold_only_when_the_recipe_opts_in(
        ctx: Context, enabled: bool) -> None:
    set_follow_up_cold(ctx, enabled)
    passed_run = "20261129T115900-static-0000a0"
    for run_id, outcome in ((passed_run, "pass"), (RUN, "fail")):
        asked = Request(run_id=run_id, recipe="static", ref=HEX_A, mode="quick", requested_by="alice", pr=7)
        run = runs.claim(ctx, asked, runs.Decision("quick"))
        assert run is not None
        run.result.outcome = outcome
        runs.finish(ctx, run)
    results = helpers.results_in(ctx.registry.root)
    assert "follow_up" not in results[passed_run]  # a pass needs no follow-up
    filed = sorted(p.stem for p in (ctx.registry.root / "requests").glob("*.yaml"))
    if not enabled:
        assert "follow_up" not in results[RUN] and filed == []
        return
    follow_up = results[RUN]["follow_up"]
    assert filed == [follow_up]
    cold = ctx.registry.read_request(f"{follow_up}.yaml")
    assert (cold.mode, cold.ref, cold.requested_by, cold.pr, cold.follow_up_of) == ("cold", HEX_A, "alice", 7, RUN)
    assert helpers.log_subjects(ctx.registry.root)[0] == (
        f"[quick] static@aaaaaaa fail (run {RUN}); follow-up cold {follow_up} filed")
    # It runs as any cold request does, and its result names the quick run it follows up.
    claimed = runs.claim(ctx, cold, runs.decide(ctx, cold))
    assert claimed is not None and claimed.result.mode == "cold"
    assert helpers.results_in(ctx.registry.root)[follow_up]["follow_up_of"] == RUN


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
                            "controller/flows/forge/reporter.py", "controller/registry/index.py"}
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
