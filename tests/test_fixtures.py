"""The test bed's fixture recipes become exactly the git history the tests expect."""

from __future__ import annotations


def test_fixture_versions_are_committed_exactly_even_with_equal_sizes_and_mtimes(tmp_path: object) -> None:
    """A fresh clone gives every file one mtime; v2 and v3 of a file often have equal sizes.
    Each committed version must still be byte-identical to its folder."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from testbed import fixtures

    base = Path(str(tmp_path))
    recipes = base / "recipes"
    shutil.copytree(fixtures.RECIPES / "notes", recipes / "notes")
    for path in (recipes / "notes").rglob("*"):
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000), follow_symlinks=False)
    original = fixtures.RECIPES
    fixtures.RECIPES = recipes
    try:
        repo = fixtures.build_recipe("notes", base / "repo")
    finally:
        fixtures.RECIPES = original
    for version, commit in repo.versions.items():
        for path in (recipes / "notes" / str(version)).rglob("*"):
            if path.is_file():
                rel = str(path.relative_to(recipes / "notes" / str(version)))
                shown = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=repo.path, capture_output=True,
                                       check=True).stdout
                assert shown == path.read_bytes(), (version, rel)


def test_heavy_init_seeds_once_and_its_upgrade_keeps_the_rows(tmp_path: object, monkeypatch: object) -> None:
    """The heavy-init app's start-up logic, run in this interpreter on a tmp dir: the first boot
    seeds (and says how long it took, which the benchmark reads), a start on its own data seeds
    nothing, and v2 migrates those rows in place."""
    import runpy
    from pathlib import Path

    import pytest

    from testbed import fixtures

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    data = Path(str(tmp_path))
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("SEED_ROWS", "40")
    prepare = {v: runpy.run_path(str(fixtures.RECIPES / "heavy-init" / str(v) / "app.py"),
                                 run_name="fixture")["prepare"] for v in (1, 2)}
    prepare[1]().close()
    assert prepare[1].__globals__["STATE"] == {"ready": True, "rows": 40, "schema": 1}
    seeded = data / "app.sqlite"
    before = seeded.stat().st_size
    prepare[1]().close()  # a restart on its own data: nothing is seeded again
    assert seeded.stat().st_size == before
    prepare[2]().close()
    assert prepare[2].__globals__["STATE"] == {"ready": True, "rows": 40, "schema": 2}
