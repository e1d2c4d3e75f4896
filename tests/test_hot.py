"""A hot canonical (`recipes.<r>.hot`): the warm app runs at its known-good between quick runs,
so a quick run starts with the upgrade; after its verdict the app is restored and deployed hot
again. When the engine does not show it running hot (here: undeployed by hand, as a reboot or a
crash would leave it), the quick run takes the data-warm path and the app is hot again after."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.runtime import stack
from testbed.fixtures import build_recipe
from tests.helpers import STATIC_OPTIONS, RemoteRegistry, recipe_entry
from tests.test_loops import Bed, phases

pytestmark = pytest.mark.docker


@pytest.fixture
def hot_bed(git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> Iterator[Bed]:
    repo = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    recipe = f"hot-{secrets.token_hex(3)}"
    git_remote.set_recipes(recipe_entry(recipe, repo.path, hot="true", **STATIC_OPTIONS))
    made = Bed(git_remote, git_remote.clone("controller"), state_dir, recipe, repo)
    try:
        yield made
    finally:
        stack.undeploy(made.app, remove_volumes=True)


def running_commits(app: str) -> set[str | None]:
    """The commits the app's services run at, when all of them have converged."""
    shown = stack.inspect_app(app)
    fatal, waiting = stack.convergence_problem(shown, expected_commit=None, known_failures={})
    assert shown.services and not fatal and not waiting, (fatal, waiting)
    return {svc.commit for svc in shown.services}


def quick(bed: Bed, ref: str) -> dict[str, Any]:
    result = bed.run(bed.request(ref, "quick"))
    assert result["outcome"] == "pass" and result["finished_at"], result
    return result


def test_a_hot_canonical_runs_between_quick_runs_and_a_quick_run_starts_with_the_upgrade(hot_bed: Bed) -> None:
    bed = hot_bed
    known_good = bed.repo.head()
    pr = bed.repo.branch_commit("pr", 2)
    rewarm = bed.seed()
    assert rewarm["snapshot"]["hot"] is True, rewarm["snapshot"]
    assert running_commits(bed.app) == {known_good}
    assert bed.leaks().returncode == 0, bed.leaks().stdout  # hot: deployed on purpose, not a leak

    # Hot: no restore, no reattach before the upgrade; restored and hot again after the verdict.
    first = quick(bed, pr)
    assert first["upgrade"] == {"from": known_good, "to": pr, "hot": True}, first["upgrade"]
    steps = phases(first)
    assert "restore" not in steps and "reattach" not in steps and "converge (reattach)" not in steps, steps
    assert steps["restore (hot)"] == steps["deploy (hot)"] == steps["converge (hot)"] == "ok", steps
    assert first["snapshot"]["restored"] and first["snapshot"]["verified"] and first["snapshot"]["hot"], first
    assert running_commits(bed.app) == {known_good}
    assert quick(bed, pr)["upgrade"].get("hot") is True

    # Gone from the engine (a reboot, a crash): the data-warm path, then hot again.
    stack.undeploy(bed.app, remove_volumes=False)
    cold_start = quick(bed, pr)
    assert "hot" not in cold_start["upgrade"], cold_start["upgrade"]
    assert phases(cold_start)["converge (reattach)"] == "ok", phases(cold_start)
    assert running_commits(bed.app) == {known_good}
    assert bed.leaks().returncode == 0, bed.leaks().stdout
