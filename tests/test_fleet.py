"""A fleet of CI hosts on one registry: host names in claims and results, the snapshot index per
host (and the move of a single-host one), quick placement, keepers, the sweep once per fleet,
deadlines and abandoned runs, the fleet in `ccci status`.

Two controllers here are two contexts with their own `--host`, clone and state dir on one real
bare remote; nothing in this file needs an engine (the snapshots are of plain directories)."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller import snapshots
from controller.flows import jobs, recover, runs, status, sweep
from controller.flows.context import Context
from controller.flows.fleet import abandoned, keepers, migrate, placement
from controller.flows.serve import open_for_serve
from controller.flows.warm_apps import commit_index, index_from_info
from controller.registry.documents import Request, SnapshotIndex, snapshot_index_document
from controller.registry.index import ResultsIndex
from controller.registry.store import Registry
from controller.util import inflight, names
from controller.util.errors import BadInput
from controller.util.paths import StateDir
from controller.util.timeutil import parse_iso, utcnow
from controller.util.yamlio import dump_document
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import SETTINGS_HEAD, RemoteRegistry, recipe_entry

RECIPE = "static"
APP = names.warm_app(RECIPE)
OLD_RUN = "20200101T000000-static-abcdef"  # filed long ago: past any quick.host_wait_s


@dataclass
class Fleet:
    remote: RemoteRegistry
    repo: RecipeRepo
    tmp: Path

    def host(self, name: str) -> Context:
        """A controller of host `name`: its own clone and state dir, on the one remote."""
        clone = self.tmp / f"clone-{name}"
        if not clone.exists():
            helpers.git(self.remote.base, "clone", "-q", str(self.remote.bare), str(clone))
        return Context.open(Registry(clone), StateDir(self.tmp / f"state-{name}"), host=name)

    def settings(self, extra: str = "", **recipe: object) -> None:
        self.remote.set_recipes(recipe_entry(RECIPE, self.repo.path, timeout_s=60, **recipe), extra=extra)

    def canonical(self, commit: str, promoted_by_run: str = "20261201T000000-static-000001") -> None:
        self.remote.edit({names.canonical_rel(RECIPE): dump_document({
            "recipe": RECIPE, "known_good": commit, "promoted_by_run": promoted_by_run,
            "promoted_at": "2026-12-01T00:00:00Z"})}, "canonical")

    def snapshot(self, ctx: Context, commit: str, content: str = "data") -> snapshots.SnapshotInfo:
        """A last-known-good of the warm app on `ctx`'s disk (a plain directory as its volume)."""
        volume = self.tmp / f"volume-{ctx.host}"
        volume.mkdir(exist_ok=True)
        (volume / "file").write_text(content)
        return snapshots.take_snapshot(ctx.state.snapshots, APP, {"data": volume}, commit=commit,
                                       allowed_root=self.tmp)


@pytest.fixture
def fleet(git_remote: RemoteRegistry, tmp_path: Path) -> Fleet:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1, 2])
    made = Fleet(git_remote, repo, tmp_path)
    made.settings()
    return made


def quick(run_id: str, ref: str) -> Request:
    return Request(run_id=run_id, recipe=RECIPE, ref=ref, mode="quick", requested_by="alice")


def fresh_run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%S}-{RECIPE}-{utcnow().microsecond % 0xFFFFFF:06x}"


# -- 1: the host name --------------------------------------------------------------------------------

def test_host_name_comes_from_the_option_then_the_environment_then_the_hostname(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCCI_HOST", "from-env")
    assert names.host_name("ci-2") == "ci-2"
    assert names.host_name() == "from-env"
    monkeypatch.delenv("CCCI_HOST")
    monkeypatch.setattr("socket.gethostname", lambda: "CI-Box.example.org")
    assert names.host_name() == "ci-box"
    monkeypatch.setattr("socket.gethostname", lambda: "under_score")
    with pytest.raises(BadInput, match=r"the hostname .set --host or CCCI_HOST.: 'under_score' is not a valid"):
        names.host_name()


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--host", "Not_A_Host"], {}, "--host: 'Not_A_Host'"),
    (["--host=-edge"], {}, "--host: '-edge'"),
    ([], {"CCCI_HOST": "x" * 64}, "CCCI_HOST: "),
])
def test_a_bad_host_name_is_one_sentence_and_exit_2(tmp_path: Path, args: list[str], env: dict[str, str],
                                                    named: str) -> None:
    proc = helpers.ccci(*args, "status", "--registry", str(tmp_path), env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ccci: {named}") and proc.stderr.count("\n") == 1, proc.stderr


def test_claims_and_results_carry_the_host_and_the_claim_its_deadline(fleet: Fleet) -> None:
    fleet.settings(extra="serve: {deadline_grace_s: 100}\n")
    alpha = fleet.host("alpha")
    request = Request(run_id=fresh_run_id(), recipe=RECIPE, ref=fleet.repo.head(), mode="cold",
                      requested_by="alice")
    alpha.registry.file_request(request)
    run = runs.claim(alpha, request, runs.Decision("cold"))
    assert run is not None
    try:
        claimed = alpha.registry.result(request.run_id)
        assert claimed is not None and claimed["outcome"] == "running"
        assert claimed["host"] == "alpha" and claimed["controller"].startswith("alpha:")
        started, deadline = parse_iso(claimed["started_at"]), parse_iso(claimed["deadline"])
        assert deadline - started == dt.timedelta(seconds=60 + 100)  # timeout_s + deadline_grace_s
    finally:
        run.marker.end() if run.marker else None
    rejected = runs.rejection(alpha, "x.yaml", BadInput("no"), None)
    assert rejected.host == "alpha"


# -- 2: the snapshot index per host, and the move of a single-host one ----------------------------

def test_a_rewarm_index_commit_goes_under_the_host_name(fleet: Fleet) -> None:
    alpha = fleet.host("alpha")
    info = fleet.snapshot(alpha, fleet.repo.head())
    assert commit_index(alpha, info) is not None
    assert alpha.registry.snapshot_index(APP, "alpha") == index_from_info(info)
    assert alpha.registry.snapshot_indexes(APP) == {"alpha": index_from_info(info)}
    assert not (alpha.registry.root / names.legacy_snapshot_index_rel(APP)).exists()


def _legacy_entry(fleet: Fleet, info: snapshots.SnapshotInfo) -> None:
    """`snapshots-index/<app>.yaml` as a single-host ccci wrote it."""
    fleet.remote.edit({names.legacy_snapshot_index_rel(APP): dump_document(
        snapshot_index_document(index_from_info(info)))}, f"[rewarm] {APP} (single-host)")


def test_the_host_whose_disk_holds_a_single_host_entry_moves_it_under_its_name_in_one_commit(
        fleet: Fleet) -> None:
    alpha, beta = fleet.host("alpha"), fleet.host("beta")
    info = fleet.snapshot(alpha, fleet.repo.head())
    fleet.snapshot(beta, fleet.repo.head(), content="other bytes")
    _legacy_entry(fleet, info)
    legacy_text = dump_document(snapshot_index_document(index_from_info(info)))
    for ctx in (alpha, beta):
        ctx.registry.sync()
    assert migrate.migrate_legacy_index(beta) == []  # not beta's bytes
    # Until it moves, the entry counts as alpha's (its disk has the bytes), not beta's.
    assert placement.own_index(alpha, APP) == index_from_info(info)
    assert placement.own_index(beta, APP) is None
    assert migrate.migrate_legacy_index(alpha) == [APP]
    root = alpha.registry.root
    assert (root / names.snapshot_index_rel("alpha", APP)).read_text() == legacy_text
    assert not (root / names.legacy_snapshot_index_rel(APP)).exists()
    changed = helpers.git(root, "show", "--no-renames", "--name-status", "--format=%s", "HEAD").splitlines()
    assert changed[0].startswith("[migrate] snapshots-index: warm-static moved under alpha/")
    assert sorted(changed[2:]) == sorted([f"A\t{names.snapshot_index_rel('alpha', APP)}",
                                          f"D\t{names.legacy_snapshot_index_rel(APP)}"])
    assert migrate.migrate_legacy_index(alpha) == []  # once


def test_a_migration_cut_short_before_its_commit_is_discarded_and_done_again(fleet: Fleet) -> None:
    alpha = fleet.host("alpha")
    info = fleet.snapshot(alpha, fleet.repo.head())
    _legacy_entry(fleet, info)
    alpha.registry.sync()
    root = alpha.registry.root
    # What the migration writes before its commit, as a crash would leave it.
    target = root / names.snapshot_index_rel("alpha", APP)
    target.parent.mkdir(parents=True)
    target.write_text((root / names.legacy_snapshot_index_rel(APP)).read_text())
    (root / names.legacy_snapshot_index_rel(APP)).unlink()
    (root / ".git" / "ccci-writing").write_text("")  # the writer's marker: it died before its commit
    # The next start: serve's open syncs (discarding the leftovers), recovery migrates.
    restarted = open_for_serve(root, alpha.state.root, once=True, poll_interval=None, host="alpha")
    recover.recover_at_start(restarted)
    assert helpers.git(root, "status", "--porcelain") == ""
    assert helpers.log_subjects(root)[0].startswith("[migrate]")
    assert alpha.registry.snapshot_indexes(APP) == {"alpha": index_from_info(info)}


# -- 3: placement --------------------------------------------------------------------------------

def _entry(commit: str, manifest: str) -> SnapshotIndex:
    return SnapshotIndex(app=APP, commit=commit, path="/x", volumes={}, manifest_sha256=manifest,
                         taken_at="2026-12-01T00:00:00Z")


def test_quick_placement_goes_to_the_host_whose_disk_holds_a_current_last_known_good() -> None:
    good, old = "a" * 40, "b" * 40
    entries = {"alpha": _entry(good, "1" * 64), "beta": _entry(old, "2" * 64)}
    assert placement.place_quick("alpha", good, entries, "1" * 64).where == placement.HERE
    # The index says alpha, but alpha's disk has other bytes: not here.
    assert placement.place_quick("alpha", good, entries, "9" * 64).where == placement.NOWHERE
    beta = placement.place_quick("beta", good, entries, "2" * 64)
    assert (beta.where, beta.holders) == (placement.ELSEWHERE, ("alpha",))
    assert placement.place_quick("beta", good, entries, "2" * 64, rewarm_queued=True).where == placement.WAIT
    assert placement.place_quick("gamma", "c" * 40, entries, None).where == placement.NOWHERE


def test_keepers_are_the_warm_hosts_or_else_the_promoting_host(fleet: Fleet) -> None:
    settings = fleet.host("alpha").settings
    assert placement.keeps_warm(settings, RECIPE, "alpha", promoted_on="alpha")
    assert not placement.keeps_warm(settings, RECIPE, "beta", promoted_on="alpha")
    fleet.settings(warm_hosts="[beta, gamma]")
    settings = fleet.host("beta").settings
    assert placement.keeps_warm(settings, RECIPE, "gamma", promoted_on="alpha")
    assert not placement.keeps_warm(settings, RECIPE, "alpha", promoted_on="alpha")


def test_a_quick_request_is_claimed_only_by_the_host_holding_the_current_snapshot(fleet: Fleet) -> None:
    known_good = fleet.repo.versions[1]
    fleet.canonical(known_good)
    alpha, beta = fleet.host("alpha"), fleet.host("beta")
    commit_index(alpha, fleet.snapshot(alpha, known_good))
    beta.registry.sync()
    head = fleet.repo.versions[2]
    now = quick(fresh_run_id(), head)
    assert runs.decide(alpha, now) == runs.Decision("quick")
    with pytest.raises(runs.NotPlacedHere, match="on alpha") as left:
        runs.decide(beta, now)
    assert not left.value.waits_here
    # Nobody took it within quick.host_wait_s: quick.no_canonical decides, on any host.
    assert runs.decide(beta, quick(OLD_RUN, head)) == runs.Decision("cold", fallback="no-warm-host")
    fleet.settings(extra="quick: {no_canonical: reject}\n")
    beta.registry.sync()
    beta.refresh_settings()
    with pytest.raises(BadInput, match=r"no host of the fleet can take it: the last-known-good snapshot of .* is "
                                       r"on alpha, and none claimed it within quick.host_wait_s .* and "
                                       r"quick.no_canonical is reject"):
        runs.decide(beta, quick(OLD_RUN, head))


def test_a_quick_request_waits_on_the_host_whose_rewarm_to_the_known_good_is_queued(fleet: Fleet) -> None:
    fleet.canonical(fleet.repo.versions[1])
    alpha = fleet.host("alpha")
    commit_index(alpha, fleet.snapshot(alpha, fleet.repo.versions[1]))
    fleet.canonical(fleet.repo.versions[2])  # promoted; the snapshot is of the old known-good
    alpha.registry.sync()
    request = quick(fresh_run_id(), fleet.repo.versions[2])
    assert runs.decide(alpha, request) == runs.Decision("cold", fallback="no-warm-host")  # nobody current
    alpha.state.queue.mkdir(parents=True, exist_ok=True)
    alpha.state.rewarm_request(RECIPE).write_text("queued")
    with pytest.raises(runs.NotPlacedHere) as waits:
        runs.decide(alpha, request)
    assert waits.value.waits_here


def test_other_keepers_queue_one_rewarm_per_known_good_and_the_promoting_host_is_the_default(
        fleet: Fleet) -> None:
    alpha, beta = fleet.host("alpha"), fleet.host("beta")
    promoting = Request(run_id="20261201T000000-static-000001", recipe=RECIPE, ref=fleet.repo.versions[1],
                        mode="cold", requested_by="alice")
    alpha.registry.file_request(promoting)
    run = runs.claim(alpha, promoting, runs.Decision("cold"))
    assert run is not None and run.marker is not None
    run.marker.end()
    fleet.canonical(fleet.repo.versions[1], promoted_by_run=promoting.run_id)
    for ctx in (alpha, beta):
        ctx.registry.sync()
    assert keepers.queue_owed_rewarms(beta) == []  # default: only the host that promoted
    assert keepers.queue_owed_rewarms(alpha) == [RECIPE]
    fleet.settings(warm_hosts="[alpha, beta]")
    beta.registry.sync()
    beta.refresh_settings()
    assert keepers.queue_owed_rewarms(beta) == [RECIPE]
    assert keepers.queue_owed_rewarms(beta) == []  # queued already
    beta.state.rewarm_request(RECIPE).unlink()
    beta.state.warm.mkdir(parents=True, exist_ok=True)
    beta.state.warm_state(APP).write_text(f'{{"rewarm_of": "{fleet.repo.versions[1]}"}}')
    assert keepers.queue_owed_rewarms(beta) == []  # tried for this known-good: not again


# -- 4: the sweep, once per fleet ---------------------------------------------------------------

def test_two_hosts_sweeping_the_same_night_file_one_set_of_requests(fleet: Fleet) -> None:
    # The tests' settings sweep nothing (max_tests 0): this one sweeps.
    fleet.remote.edit({"ccci.yaml": SETTINGS_HEAD.replace("sweep: {max_tests: 0}", "sweep: {max_tests: 5}")
                       + "recipes:\n" + recipe_entry(RECIPE, fleet.repo.path)})
    hosts = [fleet.host("alpha"), fleet.host("beta")]
    start = threading.Barrier(2)
    reports: dict[str, sweep.SweepReport] = {}

    def sweep_on(ctx: Context) -> None:
        start.wait()
        reports[ctx.host] = sweep.run_sweep(ctx)

    threads = [threading.Thread(target=sweep_on, args=(ctx,)) for ctx in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    filed = {host: report.filed for host, report in reports.items()}
    winner = next(host for host, runs_filed in filed.items() if runs_filed)
    loser = next(host for host in filed if host != winner)
    assert filed[loser] == [] and reports[loser].swept_by == winner
    check = fleet.remote.clone("check")
    assert sorted(p.stem for p in (check / "requests").glob("*.yaml")) == sorted(filed[winner])
    assert [s for s in helpers.log_subjects(check) if s.startswith("[sweep]")] == [
        f"[sweep] 1 cold requests by {winner} ({RECIPE}@{fleet.repo.head()[:7]})"]
    assert helpers.read_yaml(check / "sweep" / "last.yaml")["host"] == winner
    # The other host's serve sees the fleet's record: not due again tonight.
    other = hosts[0] if hosts[0].host == loser else hosts[1]
    other.registry.sync()
    assert sweep.last_fleet_sweep(other.registry.root) is not None
    assert not jobs.job("sweep").due(other, utcnow(), None, False)


# -- 5: deadlines, abandoned runs ------------------------------------------------------------------

def _claim_and_die(ctx: Context, run_id: str, ref: str, *, filed: bool = False) -> None:
    """A claim whose host dies at once: its marker stays, its lock goes with the process."""
    request = Request(run_id=run_id, recipe=RECIPE, ref=ref, mode="cold", requested_by="alice")
    if not filed:
        ctx.registry.file_request(request)
    run = runs.claim(ctx, request, runs.Decision("cold"))
    assert run is not None and run.marker is not None
    run.marker.end(keep=True)


def test_another_host_marks_a_run_aborted_only_after_its_deadline_and_refiles_it_once(fleet: Fleet) -> None:
    fleet.settings(extra="serve: {deadline_grace_s: 0, refile_abandoned: true}\n")
    alpha, beta = fleet.host("alpha"), fleet.host("beta")
    run_id = fresh_run_id()
    _claim_and_die(alpha, run_id, fleet.repo.head())
    beta.registry.sync()
    index = ResultsIndex(beta.registry, beta.state.results_index(beta.registry.root))
    assert index.refresh().in_flight[run_id]["host"] == "alpha"
    deadline = parse_iso(index.in_flight[run_id]["deadline"])
    assert abandoned.mark_abandoned(beta, index, now=deadline - dt.timedelta(seconds=1)) == []
    assert abandoned.mark_abandoned(alpha, index, now=deadline + dt.timedelta(hours=1)) == []  # its own: recover's
    assert abandoned.mark_abandoned(beta, index, now=deadline) == [run_id]
    final = beta.registry.result(run_id)
    assert final is not None and final["outcome"] == "aborted" and final["host"] == "alpha"
    assert final["controller"].startswith("beta:") and final["deadline"] == index.in_flight.get(
        run_id, {"deadline": final["deadline"]})["deadline"]
    assert f"host alpha did not finish this run by its deadline {final['deadline']}" in final["error"]
    refiled = [r for r in (beta.registry.root / "requests").glob("*.yaml") if r.stem != run_id]
    assert len(refiled) == 1 and f"filed it again as {refiled[0].stem}" in final["error"]
    again = beta.registry.read_request(refiled[0].name)
    assert (again.refiled_from, again.ref, again.mode, again.requested_by) == (run_id, fleet.repo.head(), "cold",
                                                                              "alice")
    subject = helpers.log_subjects(beta.registry.root)[0]
    assert subject.startswith(f"[cold] static@{fleet.repo.head()[:7]} aborted (run {run_id})")
    assert index.refresh().in_flight == {}
    # The re-filed run abandoned too: aborted, never filed a third time.
    alpha.registry.sync()
    _claim_and_die(alpha, again.run_id, again.ref, filed=True)
    beta.registry.sync()
    late = parse_iso(index.refresh().in_flight[again.run_id]["deadline"])
    assert abandoned.mark_abandoned(beta, index, now=late) == [again.run_id]
    assert "not filed again" in (beta.registry.result(again.run_id) or {})["error"]
    assert list((beta.registry.root / "requests").glob("*.yaml")) == []  # both answered; no third
    # Alpha comes back after all: its start-up finds the runs answered and only forgets them.
    alpha.registry.sync()
    before = alpha.registry.head()
    assert recover.abort_orphaned_runs(alpha) == []
    assert alpha.registry.head() == before and inflight.orphaned_markers(alpha.state) == []


def test_a_result_from_before_the_fleet_has_no_deadline_and_is_left_to_its_own_host() -> None:
    in_flight: dict[str, dict[str, object]] = {
        "r1": {"host": "old", "deadline": None},
        "r2": {"host": "alpha", "deadline": "2020-01-01T00:00:00Z"},
        "r3": {"host": "beta", "deadline": "2020-01-01T00:00:00Z"}}
    assert abandoned.overdue(in_flight, "alpha", utcnow()) == ["r3"]


# -- 6: ccci status shows each host ------------------------------------------------------------------

def test_status_shows_each_host_last_seen_runs_in_flight_and_warm_apps(fleet: Fleet) -> None:
    alpha, beta = fleet.host("alpha"), fleet.host("beta")
    commit_index(alpha, fleet.snapshot(alpha, fleet.repo.head()))
    run_id = fresh_run_id()
    beta.registry.sync()
    _claim_and_die(beta, run_id, fleet.repo.head())
    # A result written by a single-host ccci: only `controller: <hostname>:<pid>`.
    fleet.remote.edit({names.result_rel("20261101T000000-static-0000aa"): dump_document({
        "run": "20261101T000000-static-0000aa", "recipe": RECIPE, "ref": "a" * 40, "mode": "cold",
        "requested_mode": "cold", "outcome": "pass", "controller": "Old-Box.lan:42",
        "started_at": "2026-11-01T00:00:00Z", "finished_at": "2026-11-01T00:05:00Z"})})
    clone = fleet.remote.clone("status")
    shown = status.collect_status(clone, fleet.tmp / "state-status")
    hosts = {h["host"]: h for h in shown["hosts"]}
    assert hosts["alpha"]["warm"] == [APP] and hosts["alpha"]["running"] == []
    assert hosts["beta"]["running"] == [run_id] and hosts["beta"]["last_seen"] >= run_id[:4]
    assert hosts["old-box"]["last_seen"] == "2026-11-01T00:05:00Z"
    row = next(r for r in shown["recipes"] if r["recipe"] == RECIPE)
    assert list(row["snapshots"]) == ["alpha"]
    table = helpers.ccci("--state-dir", str(fleet.tmp / "state-status"), "status", "--registry", str(clone))
    assert table.returncode == 0 and "hosts" in table.stdout and "old-box" in table.stdout, table.stderr
