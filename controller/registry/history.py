"""Reading the registry's git history (for audit and status)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from controller.registry.documents import DOC_MAX_BYTES, RESULT_MAX_BYTES
from controller.registry.git import git
from controller.registry.store import Registry

_SEP = "\x1f"
_HEADER = "@@" + _SEP


@dataclass(frozen=True)
class Commit:
    sha: str
    author_name: str
    author_email: str
    subject: str
    parent: str | None = None  # the first parent (None for a root commit)


@dataclass(frozen=True)
class Change:
    status: str  # git's letter: A added, M modified, D deleted, T type changed
    path: str

    @property
    def deleted(self) -> bool:
        return self.status.startswith("D")


def changes(registry: Registry, *paths: str) -> Iterator[tuple[Commit, list[Change]]]:
    """Every commit of the branch's first-parent line that touches `paths`, oldest first, with
    what it changed there. A merge counts with what it changed against its first parent (a hand
    edit can hide in a merge); a rename is a deletion and an addition. One git call however long
    the history, NUL-separated so no path can be misread."""
    out = git(registry.root, "log", "-z", "--reverse", "--full-history", "-m", "--first-parent", "--no-renames",
              f"--format={_HEADER}%H{_SEP}%an{_SEP}%ae{_SEP}%s", "--name-status", "--", *paths, strip=False)
    commit: Commit | None = None
    changed: list[Change] = []
    tokens = iter(out.split("\0"))
    for raw in tokens:
        token = raw.lstrip("\n")
        if token.startswith(_HEADER):
            if commit is not None:
                yield commit, changed
            commit, changed = _commit(token), []
        elif token and commit is not None:
            changed.append(Change(token, next(tokens, "")))
    if commit is not None:
        yield commit, changed


def first_parent_line(registry: Registry) -> list[Commit]:
    """Every commit of the branch's first-parent line, oldest first, with its first parent —
    no diffs, so one pass costs little per commit however large its trees."""
    out = git(registry.root, "log", "-z", "--reverse", "--first-parent",
              f"--format={_HEADER}%H{_SEP}%an{_SEP}%ae{_SEP}%s{_SEP}%P", strip=False)
    line = []
    for token in out.split("\0"):
        token = token.lstrip("\n")
        if not token.startswith(_HEADER):
            continue
        head, _, parents = token.rpartition(_SEP)
        commit = _commit(head)
        line.append(Commit(commit.sha, commit.author_name, commit.author_email, commit.subject,
                           parents.split()[0] if parents.split() else None))
    return line


def changes_of(registry: Registry, commits: list[Commit], *paths: str) -> dict[str, list[Change]]:
    """What each of `commits` changed under `paths` against its first parent (a root commit: all
    it has), through one `git diff-tree --stdin`: a commit whose trees there are the same costs
    one comparison of tree ids. Commits that changed nothing there are absent."""
    if not commits:
        return {}
    lines = "".join(f"{c.sha} {c.parent}\n" if c.parent else f"{c.sha}\n" for c in commits)
    out = git(registry.root, "diff-tree", "--stdin", "-z", "-r", "--root", "--no-renames", "--name-status",
              f"--format={_HEADER}%H", "--", *paths, strip=False, stdin=lines.encode())
    found: dict[str, list[Change]] = {}
    sha: str | None = None
    tokens = iter(out.split("\0"))
    for raw in tokens:
        token = raw.lstrip("\n")
        if token.startswith(_HEADER):
            sha = token.removeprefix(_HEADER).strip()
            found.setdefault(sha, [])
        elif token and sha is not None:
            found[sha].append(Change(token, next(tokens, "")))
    return found


def _commit(header: str) -> Commit:
    fields = header.removeprefix(_HEADER).split(_SEP)
    if len(fields) != 4:
        # A separator inside a name or subject: never take an email from the wrong field.
        return Commit(fields[0], _SEP.join(fields[1:]), "(unreadable author)", "")
    sha, name, email, subject = fields
    return Commit(sha, name, email, subject)


MAX_HISTORY_BYTES = max(DOC_MAX_BYTES, RESULT_MAX_BYTES)
