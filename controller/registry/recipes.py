"""Recipe repositories: a cached mirror per recipe, exact-commit exports, line-of-history facts."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from controller.registry.git import git, git_plain
from controller.registry.git import is_ancestor as git_is_ancestor
from controller.registry.settings import RecipeSettings
from controller.util.errors import BadInput, ExternalError
from controller.util.locks import exclusive
from controller.util.paths import StateDir

log = logging.getLogger(__name__)

MAX_EXPORT_BYTES = 512 * 1024 * 1024


def _mirror(state: StateDir, recipe: RecipeSettings) -> Path:
    return state.recipe_mirror(recipe.name)


def source_problem(recipe: RecipeSettings) -> str | None:
    """Why the recipe's source cannot be fetched, when that can be told without a fetch (a local
    path that does not exist, or is no git repository); None otherwise."""
    source = recipe.source
    if "://" in source or source.startswith("git@"):
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return f"ccci.yaml: at 'recipes.{recipe.name}.source': {source} does not exist"
    if not ((path / ".git").exists() or (path / "HEAD").is_file()):
        return f"ccci.yaml: at 'recipes.{recipe.name}.source': {source} is not a git repository"
    return None


def _source_url(recipe: RecipeSettings) -> str:
    source = recipe.source
    if "://" not in source and not source.startswith("git@"):
        path = Path(source).expanduser()
        if not path.exists():
            raise BadInput(f"ccci.yaml: at 'recipes.{recipe.name}.source': {source} does not exist")
        return str(path.absolute())
    return source


def fetch_recipe(state: StateDir, recipe: RecipeSettings) -> Path:
    """Bring the recipe's mirror up to date with its source; returns the mirror path."""
    mirror = _mirror(state, recipe)
    with exclusive(state.recipe_lock(recipe.name)):
        if not (mirror / "HEAD").exists():
            if mirror.exists():
                shutil.rmtree(mirror)
            mirror.parent.mkdir(parents=True, exist_ok=True)
            git_plain("init", "--quiet", "--bare", str(mirror))
        git(mirror, "fetch", "--quiet", "--prune", "--force", "--tags", _source_url(recipe),
            "+refs/heads/*:refs/heads/*")
    return mirror


def has_commit(state: StateDir, recipe: RecipeSettings, ref: str) -> bool:
    try:
        git(_mirror(state, recipe), "cat-file", "-e", f"{ref}^{{commit}}")
    except (ExternalError, BadInput):
        return False
    return True


def resolve_commit(state: StateDir, recipe: RecipeSettings, ref: str) -> str:
    """The full commit `ref` names in the mirror; BadInput when the recipe has no such commit."""
    if not has_commit(state, recipe, ref):
        raise BadInput(f"request: at 'ref': recipe {recipe.name!r} has no commit {ref}")
    return git(_mirror(state, recipe), "rev-parse", f"{ref}^{{commit}}")


def export_commit(state: StateDir, recipe: RecipeSettings, ref: str, dest: Path) -> Path:
    """Write the tree of commit `ref` into `dest` (fresh), like a checkout without a .git."""
    commit = resolve_commit(state, recipe, ref)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # git archive streams the tree; extracting with the 'data' filter refuses links or
    # paths that would leave dest, whatever the recipe's author committed.
    proc = subprocess.run(
        ["git", "--git-dir", str(_mirror(state, recipe)), "archive", "--format=tar", commit],
        capture_output=True, check=False,
    )
    if proc.returncode != 0:
        raise ExternalError(f"git archive of {recipe.name}@{commit[:12]} failed: "
                            f"{proc.stderr.decode(errors='replace')[-500:]}")
    if len(proc.stdout) > MAX_EXPORT_BYTES:
        raise BadInput(f"recipe {recipe.name}@{commit[:12]} is over {MAX_EXPORT_BYTES} bytes")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def is_ancestor(state: StateDir, recipe: RecipeSettings, older: str, newer: str) -> bool:
    return git_is_ancestor(_mirror(state, recipe), older, newer)


def off_tracked_line(state: StateDir, recipe: RecipeSettings, commit: str) -> str | None:
    """None when `commit` is on the recipe's tracked line (in the history of the tracked
    branch, or a tagged release when the line is `tags`), else why not. A PR head that was
    never merged is neither."""
    mirror = _mirror(state, recipe)
    if recipe.track == "tags":
        if git(mirror, "tag", "--points-at", commit).strip():
            return None
        return f"it is not a tagged release (recipes.{recipe.name}.track is tags)"
    try:
        git(mirror, "rev-parse", "--verify", "--quiet", f"refs/heads/{recipe.track}")
    except ExternalError:
        return (f"the recipe has no branch {recipe.track!r}: set recipes.{recipe.name}.track in "
                "ccci.yaml to its main line")
    if is_ancestor(state, recipe, commit, f"refs/heads/{recipe.track}"):
        return None
    return f"it is not on {recipe.track} (a PR head that was not merged)"



def head_of_line(state: StateDir, recipe: RecipeSettings) -> str | None:
    """The newest commit of the tracked line (branch head, or newest tag by version)."""
    mirror = _mirror(state, recipe)
    if recipe.track == "tags":
        tags = git(mirror, "tag", "--sort=-v:refname").split()
        if not tags:
            return None
        return git(mirror, "rev-parse", f"refs/tags/{tags[0]}^{{commit}}")
    try:
        return git(mirror, "rev-parse", "--verify", "--quiet", f"refs/heads/{recipe.track}")
    except ExternalError:
        return None


def tags_at(state: StateDir, recipe: RecipeSettings, commit: str) -> list[str]:
    return git(_mirror(state, recipe), "tag", "--points-at", commit).split()


# Co-op Cloud's release tags: the recipe's own semver, then `+` and the upstream version it
# packages (`1.2.0+5.3.1`). A bare `X.Y.Z` counts too; pre-releases (`1.2.0-rc1+5.3.1`) and
# anything else (`v1`, `nightly`) are not releases.
RELEASE_TAG = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(\+[0-9A-Za-z._-]+)?$")


@dataclass(frozen=True)
class ReleaseTag:
    name: str
    commit: str

    @property
    def version(self) -> tuple[int, int, int]:
        match = RELEASE_TAG.match(self.name)
        assert match is not None, self.name
        return int(match.group(1)), int(match.group(2)), int(match.group(3))


def newest_releases(tags: list[tuple[str, str]], head: str, count: int) -> list[ReleaseTag]:
    """Of (tag, commit) pairs, the `count` newest release tags by their X.Y.Z, newest first:
    not the head's own commit (no upgrade to test), one tag per commit (the newest)."""
    releases = [ReleaseTag(name, commit) for name, commit in tags
                if RELEASE_TAG.match(name) and commit != head]
    releases.sort(key=lambda tag: (tag.version, tag.name), reverse=True)
    chosen: list[ReleaseTag] = []
    seen: set[str] = set()
    for tag in releases:
        if tag.commit not in seen:
            seen.add(tag.commit)
            chosen.append(tag)
    return chosen[:count]


def releases_before(state: StateDir, recipe: RecipeSettings, head: str, count: int) -> list[ReleaseTag]:
    """The `count` newest release tags in the history of `head` (a tag the head does not descend
    from would make the upgrade a downgrade or a side-step), newest first."""
    listing = git(_mirror(state, recipe), "for-each-ref", "--merged", head,
                  "--format=%(refname:strip=2) %(*objectname) %(objectname)", "refs/tags")
    pairs = []
    for line in listing.splitlines():
        name, *objects = line.split()
        pairs.append((name, objects[0]))  # the peeled commit of an annotated tag comes first
    return newest_releases(pairs, head, count)
