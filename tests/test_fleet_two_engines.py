"""Two controllers on two engines, one registry: forty requests (cold and quick over three
recipes, warm on different hosts) each run exactly once, every quick run on a host holding its
recipe's snapshot, and neither host touches the other's engine.

Alpha is a `ccci serve` on the test bed's engine; beta is one on the second engine, run inside
that host's network namespace (where its apps publish their ports). What each engine did is
read back from its own event log: every container it created carries the `ccci.*` labels."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import docker
import pytest

from controller.util import names
from controller.util.paths import StateDir
from testbed.fixtures import build_recipe
from tests import helpers
from tests.conftest import SecondHost
from tests.helpers import REPO_ROOT, STATIC_OPTIONS, RemoteRegistry, recipe_entry, wait_for
from tests.test_fleet_engine import remote_files, remote_results

pytestmark = pytest.mark.docker

# Three recipes (one source), kept warm by alpha, by beta, and by both.
WARM_HOSTS = {"duo-a": ["alpha"], "duo-b": ["beta"], "duo-c": ["alpha", "beta"]}
# Besides the cold run of main's head that seeds each canonical: 37 more, round the recipes.
QUICKS, COLDS = 24, 13


class CreatedContainers:
    """The labels of every container of this test's apps that an engine creates while this
    watches (whoever's: the engine also serves the other tests). Read live: an engine keeps
    only its last 256 events."""

    def __init__(self, docker_host: str) -> None:
        self.client = docker.DockerClient(base_url=docker_host, timeout=None)
        self.stream = self.client.events(decode=True, filters={
            "type": "container", "event": "create", "label": "ccci.managed=true"})
        self.labels: list[dict[str, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.labels.append(dict(event["Actor"]["Attributes"]))
        except Exception:  # the stream's socket is closed under it by stop()
            return

    def stop(self) -> list[dict[str, str]]:
        self.stream.close()
        self.thread.join(30)
        self.client.close()
        apps = {names.warm_app(recipe) for recipe in WARM_HOSTS}
        return [lab for lab in self.labels if lab.get("ccci.app") in apps
                or lab.get("ccci.app", "").startswith(tuple(f"{recipe}-" for recipe in WARM_HOSTS))]


def undeploy_on(docker_host: str, apps: list[str]) -> None:
    """Tear `apps` down on the engine at `docker_host` (the controller's own undeploy)."""
    code = ("import sys; from controller.runtime import stack\n"
            "for app in sys.argv[1:]: stack.undeploy(app, remove_volumes=True)")
    subprocess.run([sys.executable, "-c", code, *apps], cwd=REPO_ROOT, check=True, timeout=300,
                   env={**os.environ, "DOCKER_HOST": docker_host})


def test_forty_requests_on_two_engines_run_once_each_quick_where_its_snapshot_is_and_no_engine_is_shared(
        git_remote: RemoteRegistry, tmp_path: Path, docker_host: str, second_docker_host: SecondHost) -> None:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1, 2])
    head = repo.versions[2]
    pr_heads = [repo.branch_commit("pr-1", 1), repo.branch_commit("pr-2", 2)]
    git_remote.set_recipes(
        "".join(recipe_entry(recipe, repo.path, warm_hosts=f"[{', '.join(hosts)}]", **STATIC_OPTIONS)
                for recipe, hosts in WARM_HOSTS.items()),
        extra="quick: {no_canonical: reject}\n")
    filer = git_remote.clone("maintainer")
    state = {host: tmp_path / f"state-{host}" for host in ("alpha", "beta")}
    owner = {host: StateDir(path).owner_id for host, path in state.items()}
    engine_of = {"alpha": docker_host, "beta": second_docker_host.docker_host}
    warm_apps = [names.warm_app(recipe) for recipe in WARM_HOSTS]

    def request(recipe: str, ref: str, mode: str) -> str:
        proc = helpers.ccci("--host", "alpha", "--state-dir", str(tmp_path / "state-maintainer"), "request",
                            "--registry", str(filer), "--recipe", recipe, "--ref", ref, "--mode", mode,
                            "--by", "alice")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def finished(run_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        results = remote_results(git_remote)
        done = {run: results[run] for run in run_ids if run in results}
        if len(done) < len(run_ids) or any(r["outcome"] == "running" for r in done.values()):
            return None
        return done

    watches = {host: CreatedContainers(engine) for host, engine in engine_of.items()}
    serves = {
        "alpha": helpers.ServeProcess(git_remote.clone("alpha"), state["alpha"], "--poll-interval", "0.5",
                                      env={"CCCI_HOST": "alpha"}, log_path=tmp_path / "alpha.log"),
        "beta": helpers.ServeProcess(git_remote.clone("beta"), state["beta"], "--poll-interval", "0.5",
                                     env={"CCCI_HOST": "beta", "DOCKER_HOST": second_docker_host.docker_host},
                                     prefix=second_docker_host.command(), log_path=tmp_path / "beta.log"),
    }
    try:
        # 1. A cold run of main's head per recipe promotes it; each recipe's warm hosts then
        # rewarm it and take the snapshot its quick runs restore.
        seeds = [request(recipe, head, "cold") for recipe in WARM_HOSTS]
        wanted = {names.snapshot_index_rel(host, names.warm_app(recipe))
                  for recipe, hosts in WARM_HOSTS.items() for host in hosts}
        wait_for(lambda: wanted <= set(remote_files(git_remote, "snapshots-index/")), 600,
                 "every warm host to index its snapshot of the known-good")
        # 2. Thirty-seven more, filed at once: quick and cold runs of two PR heads.
        filed = list(seeds)
        for i in range(QUICKS + COLDS):
            recipe = list(WARM_HOSTS)[i % len(WARM_HOSTS)]
            filed.append(request(recipe, pr_heads[i % 2], "quick" if i < QUICKS else "cold"))
        assert len(filed) == 40
        results = wait_for(lambda: finished(filed), 1500, "all forty runs to finish")
    finally:
        codes = {host: serve.stop() for host, serve in serves.items()}
        created = {host: watch.stop() for host, watch in watches.items()}
    assert codes == {"alpha": 0, "beta": 0}, {h: s.log()[-3000:] for h, s in serves.items()}
    try:
        # Every run passed, on one host, claimed once and judged once.
        assert {run: (r["outcome"], r.get("cause"), r.get("error")) for run, r in results.items()
                if r["outcome"] != "pass"} == {}
        subjects = helpers.git(git_remote.bare, "log", "--format=%s", "main").splitlines()
        for run in filed:
            claims = [s for s in subjects if s.endswith(f" running (run {run})")]
            verdicts = [s for s in subjects if f" pass (run {run})" in s and "; housekeeping" not in s]
            assert (len(claims), len(verdicts)) == (1, 1), (run, claims, verdicts)
        modes = collections.Counter(r["mode"] for r in results.values())
        assert modes == {"cold": len(seeds) + COLDS, "quick": QUICKS}, modes
        # Every quick run ran on a host that holds its recipe's snapshot, and only there.
        indexed = set(remote_files(git_remote, "snapshots-index/"))
        for run, result in results.items():
            if result["mode"] == "quick":
                assert result["host"] in WARM_HOSTS[result["recipe"]], (run, result["host"])
                assert names.snapshot_index_rel(result["host"], names.warm_app(result["recipe"])) in indexed
        hosts = collections.Counter(r["host"] for r in results.values())
        assert set(hosts) == {"alpha", "beta"}, hosts
        # Each engine created containers for its own host's runs only, all labelled its owner.
        for host, labels in created.items():
            assert {lab.get("ccci.owner") for lab in labels} == {owner[host]}, (host, labels[:3])
            runs_here = {lab["ccci.run"] for lab in labels if "ccci.run" in lab}
            mine = {run for run, r in results.items() if r["host"] == host and r["mode"] == "cold"}
            assert mine <= runs_here, (host, sorted(mine - runs_here))
            assert {results[run]["host"] for run in runs_here if run in results} <= {host}, host
            warm_here = {lab["ccci.app"] for lab in labels if lab.get("ccci.mode") == "warm"}
            assert warm_here == {names.warm_app(r) for r, hs in WARM_HOSTS.items() if host in hs}, warm_here
    finally:
        for engine in engine_of.values():
            undeploy_on(engine, warm_apps)
