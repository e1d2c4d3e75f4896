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


def _commit(header: str) -> Commit:
    fields = header.removeprefix(_HEADER).split(_SEP)
    if len(fields) != 4:
        # A separator inside a name or subject: never take an email from the wrong field.
        return Commit(fields[0], _SEP.join(fields[1:]), "(unreadable author)", "")
    sha, name, email, subject = fields
    return Commit(sha, name, email, subject)


MAX_HISTORY_BYTES = max(DOC_MAX_BYTES, RESULT_MAX_BYTES)
