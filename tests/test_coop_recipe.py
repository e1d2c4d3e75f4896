"""A recipe written the way Co-op Cloud recipes are (not the way ccci's other fixtures are):
COMPOSE_FILE overlays, traefik labels instead of a ccci.yaml `http`, an external proxy network,
a golang-templated config whose version lives in abra.sh, a generated secret with abra's length
hint, x- anchors and merge keys, CMD-SHELL healthchecks, start-first updates."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.util import names
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers
from tests.helpers import RemoteRegistry, recipe_entry
from tests.test_cold import run_request
from tests.test_warm import remove_warm_app, rewarm

pytestmark = pytest.mark.docker


@pytest.fixture
def coop_html(tmp_path: Path, docker_host: str) -> RecipeRepo:
    return build_recipe("coop-html", tmp_path / "recipes" / "coop-html")


def test_coop_style_recipe_passes_cold_and_upgrades_quick_with_abra_sh_versions(
        git_remote: RemoteRegistry, coop_html: RecipeRepo, state_dir: Path) -> None:
    git_remote.set_recipes(recipe_entry("coop-html", coop_html.path, timeout_s=120, stability_s=1))
    clone = git_remote.clone("controller")
    v1, v2 = coop_html.versions[1], coop_html.versions[2]
    try:
        run_id, cold = run_request(clone, state_dir, "coop-html", v1)
        assert cold["outcome"] == "pass", cold
        asserts = {a["name"]: a for a in cold["asserts"]}
        assert all(a["ok"] for a in asserts.values()), asserts
        assert "page ok: " in asserts["custom:tests/ccci-assert"]["detail"]
        assert helpers.objects_of_app(names.cold_app("coop-html", run_id)) == []

        assert rewarm(clone, state_dir, "coop-html").returncode == 0
        _run, quick = run_request(clone, state_dir, "coop-html", v2, mode="quick")
        assert quick["outcome"] == "pass", quick
        assert quick["upgrade"] == {"from": v1, "to": v2}
        custom = next(a for a in quick["asserts"] if a["name"] == "custom:tests/ccci-assert")
        assert "coop-html v2" in custom["detail"], custom
    finally:
        remove_warm_app("warm-coop-html")
