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
