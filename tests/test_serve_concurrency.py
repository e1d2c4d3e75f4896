"""Two controllers on one registry: 50 requests at once, each runs exactly once."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from testbed.fixtures import build_recipe
from tests import helpers
from tests.helpers import STATIC_OPTIONS, RemoteRegistry, recipe_entry, request_doc, results_in, wait_for

pytestmark = pytest.mark.docker


def test_two_serve_processes_run_each_of_50_requests_exactly_once(
        git_remote: RemoteRegistry, tmp_path: Path, state_dir: Path, docker_host: str) -> None:
    static = build_recipe("static", tmp_path / "recipes" / "static", versions=[1])
    git_remote.set_recipes(recipe_entry("static", static.path, **STATIC_OPTIONS))
    clone_a, clone_b = git_remote.clone("controller-a"), git_remote.clone("controller-b")
    # One engine, one state dir (in-flight markers and locks are per engine).
    serves = [helpers.ServeProcess(c, state_dir, "--poll-interval", "0.5",
                                   log_path=tmp_path / f"{c.name}.log") for c in (clone_a, clone_b)]
    try:
        bot = git_remote.clone("bot")
        run_ids = []
        for n in range(50):
            # 10 real cold runs; 40 for commits the recipe lacks (claimed, then rejected).
            ref = static.versions[1] if n % 5 == 0 else f"{n + 1:040x}"
            run_id = f"20261129T130000-static-{n:06x}"
            (bot / "requests" / f"{run_id}.yaml").write_text(request_doc("static", ref=ref))
            run_ids.append(run_id)
        helpers.git(bot, "add", "-A")
        helpers.git(bot, "commit", "-qm", "50 requests at once")
        helpers.git(bot, "push", "-q", "origin", "main")

        def all_final() -> bool:
            helpers.git(bot, "pull", "-q", "--rebase")
            docs = results_in(bot)
            return all(docs.get(r, {}).get("outcome") not in (None, "running") for r in run_ids)

        wait_for(all_final, 900, "a final result for all 50 requests", interval=1.0)
    finally:
        codes = [s.stop() for s in serves]
    assert codes == [0, 0], [s.log()[-3000:] for s in serves]
    subjects = helpers.log_subjects(bot)
    claims = collections.Counter(m.group(1) for s in subjects
                                 if (m := re.search(r" running \(run ([^)]+)\)", s)))
    verdict = re.compile(r" (?:pass|fail|error|rejected|aborted) \(run ([^)]+)\)(?!; housekeeping)")
    finals = collections.Counter(m.group(1) for s in subjects if (m := verdict.search(s)))  # not the finish
    assert all(claims[r] == 1 for r in run_ids), {r: claims[r] for r in run_ids if claims[r] != 1}
    assert all(finals[r] == 1 for r in run_ids), {r: finals[r] for r in run_ids if finals[r] != 1}
    docs = results_in(bot)
    outcomes = collections.Counter(docs[r]["outcome"] for r in run_ids)
    assert outcomes == {"pass": 10, "rejected": 40}, outcomes
    controllers = collections.Counter(docs[r]["controller"] for r in run_ids)
    print("claims per controller:", dict(controllers))
    assert helpers.ccci("--state-dir", str(state_dir), "leaks").returncode == 0
