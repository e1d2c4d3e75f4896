"""Reading the registry's git history (for audit and status)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from controller.registry.documents import DOC_MAX_BYTES, RESULT_MAX_BYTES
from controller.registry.git import git
from controller.registry.store import Registry
from controller.util.errors import ExternalError

_SEP = "\x1f"


@dataclass(frozen=True)
class Commit:
    sha: str
    author_name: str
    author_email: str
    subject: str


def canonical_changes(registry: Registry) -> Iterator[tuple[Commit, str, str]]:
    """(commit, status letter, path) for every change under canonicals/, oldest first,
    merges included (a hand edit can hide in a merge)."""
    out = git(registry.root, "log", "--reverse", "--full-history", "-m", "--first-parent",
              f"--format=@@{_SEP}%H{_SEP}%an{_SEP}%ae{_SEP}%s", "--name-status", "--", "canonicals/")
    commit: Commit | None = None
    for line in out.splitlines():
        if line.startswith("@@" + _SEP):
            _, sha, name, email, subject = line.split(_SEP, 4)
            commit = Commit(sha, name, email, subject)
        elif line.strip() and commit is not None:
            status, _, path = line.partition("\t")
            yield commit, status, path.split("\t")[-1]


MAX_HISTORY_BYTES = max(DOC_MAX_BYTES, RESULT_MAX_BYTES)


def file_at(registry: Registry, commit: str, rel: str, *, max_bytes: int = MAX_HISTORY_BYTES) -> bytes | None:
    """The bytes of `rel` at `commit` (None when absent or over the cap)."""
    try:
        size = int(git(registry.root, "cat-file", "-s", f"{commit}:{rel}"))
    except (ExternalError, ValueError):
        return None
    if size > max_bytes:
        return None
    return git(registry.root, "show", f"{commit}:{rel}", strip=False).encode()
