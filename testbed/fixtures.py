"""Build the fixture recipes (testbed/recipes/<name>/<n>/) into real git repositories.

Each numbered directory is one version: commit n on `main`, tagged `<n>.0.0` (or as the caller
names its tags, e.g. Co-op Cloud's `1.2.0+5.3.1`). Tests and the demo use the same builder, so
what the demo shows is what the tests prove.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"
IDENTITY = {
    "GIT_AUTHOR_NAME": "Recipe Author",
    "GIT_AUTHOR_EMAIL": "author@example.org",
    "GIT_COMMITTER_NAME": "Recipe Author",
    "GIT_COMMITTER_EMAIL": "author@example.org",
}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **IDENTITY, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class RecipeRepo:
    name: str
    path: Path
    versions: dict[int, str]  # version number -> commit on main

    def head(self) -> str:
        return _git(self.path, "rev-parse", "main")

    def branch_commit(self, branch: str, version: int, *, base: str | None = None,
                      message: str | None = None) -> str:
        """Commit version `version`'s tree on `branch` (from `base`, default main) — a PR
        head that is not on main unless merged."""
        start = base or "main"
        _git(self.path, "checkout", "-q", "-B", branch, start)
        _replace_tree(self.path, RECIPES / self.name / str(version))
        _stage_all(self.path)
        _git(self.path, "commit", "-q", "--allow-empty", "-m", message or f"{branch}: version {version}")
        sha = _git(self.path, "rev-parse", "HEAD")
        _git(self.path, "checkout", "-q", "main")
        return sha

    def commit_files(self, branch: str, files: dict[str, str], *, base: str | None = None,
                     message: str = "edit") -> str:
        """Commit edited files on `branch` (from `base`, default main); returns the commit."""
        _git(self.path, "checkout", "-q", "-B", branch, base or "main")
        for rel, text in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        _stage_all(self.path)
        _git(self.path, "commit", "-q", "-m", message)
        sha = _git(self.path, "rev-parse", "HEAD")
        _git(self.path, "checkout", "-q", "main")
        return sha

    def read(self, commit: str, rel: str) -> str:
        return _git(self.path, "show", f"{commit}:{rel}") + "\n"

    def commit_version(self, version: int, *, message: str | None = None, tag: bool | str = True) -> str:
        """Commit version `version`'s tree on main (a merge or a direct push), tagged `<n>.0.0`
        or the tag named by `tag`."""
        if self.versions:
            _git(self.path, "checkout", "-q", "main")
        _replace_tree(self.path, RECIPES / self.name / str(version))
        _stage_all(self.path)
        _git(self.path, "commit", "-q", "--allow-empty", "-m", message or f"version {version}")
        sha = _git(self.path, "rev-parse", "HEAD")
        if tag:
            _git(self.path, "tag", "-f", tag if isinstance(tag, str) else f"{version}.0.0")
        self.versions[version] = sha
        return sha


def _stage_all(repo: Path) -> None:
    """Stage the work tree exactly. Versions of a file often have equal sizes, and copies keep
    mtimes (a fresh clone gives every file the same one), so git's stat cache would take a
    changed file for unchanged: empty the index and hash everything."""
    _git(repo, "read-tree", "--empty")
    _git(repo, "add", "-A")


def _replace_tree(repo: Path, source: Path) -> None:
    for entry in repo.iterdir():
        if entry.name == ".git":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    shutil.copytree(source, repo, dirs_exist_ok=True, symlinks=True)


def available_versions(name: str) -> list[int]:
    return sorted(int(p.name) for p in (RECIPES / name).iterdir() if p.name.isdigit())


def build_recipe(name: str, dest: Path, *, versions: list[int] | None = None,
                 tags: dict[int, str] | None = None) -> RecipeRepo:
    """A git repository at `dest` with one commit per version on main (default: all), each
    tagged `<n>.0.0`; with `tags`, only the versions it names, by the names it gives."""
    dest.mkdir(parents=True, exist_ok=True)
    _git(dest, "init", "-q", "--initial-branch=main")
    repo = RecipeRepo(name, dest, {})
    for version in versions or available_versions(name):
        repo.commit_version(version, tag=True if tags is None else tags.get(version, False))
    return repo
