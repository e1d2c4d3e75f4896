"""`ccci audit`: every change to canonicals/ in git history was made by the controller after a
green cold run of exactly that commit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from controller.registry import documents
from controller.registry.history import Commit, canonical_changes, file_at
from controller.registry.settings import SETTINGS_FILE, parse_settings
from controller.registry.settings_schema import defaults
from controller.registry.store import Registry
from controller.util import names
from controller.util.errors import CcciError

SUBJECT = re.compile(r"^\[cold\] (?P<recipe>[a-z0-9-]+)@(?P<short>[0-9a-f]{7}) pass \(run (?P<run>[^)]+)\)")


@dataclass(frozen=True)
class Violation:
    commit: str
    path: str
    reason: str

    def sentence(self) -> str:
        return f"commit {self.commit[:12]}: {self.path}: {self.reason}"


def _controller_email(registry: Registry, commit: str) -> str:
    raw = file_at(registry, commit, SETTINGS_FILE)
    default: str = defaults()["identity"]["email"]
    if raw is None:
        return default
    try:
        return parse_settings(raw).identity.email
    except CcciError:
        return default


def check_change(registry: Registry, commit: Commit, status: str, path: str) -> str | None:
    """Pure-ish rule for one changed canonical file; returns why it is not allowed, or None."""
    if status.startswith("D"):
        return "the canonical was deleted (only the controller writes canonicals, and it never deletes)"
    expected_email = _controller_email(registry, commit.sha)
    if commit.author_email != expected_email:
        return (f"authored by {commit.author_name} <{commit.author_email}>, not the controller "
                f"<{expected_email}>")
    raw = file_at(registry, commit.sha, path)
    if raw is None:
        return "the file cannot be read at this commit"
    try:
        canonical = documents.parse_canonical(raw, path)
    except CcciError as exc:
        return f"not a valid canonical: {exc.message}"
    recipe = path.rsplit("/", 1)[-1].removesuffix(".yaml")
    if canonical.recipe != recipe:
        return f"names recipe {canonical.recipe!r} in the file of {recipe!r}"
    match = SUBJECT.match(commit.subject)
    if not match or match.group("run") != canonical.promoted_by_run or match.group("recipe") != recipe:
        return f"the commit message {commit.subject!r} is not the controller's green cold result of run " \
               f"{canonical.promoted_by_run}"
    if not canonical.known_good.startswith(match.group("short")):
        return f"known_good {canonical.known_good[:12]} is not the commit the message names"
    result_rel = names.result_rel(canonical.promoted_by_run)
    result_raw = file_at(registry, commit.sha, result_rel)
    if result_raw is None:
        return f"no result {result_rel} in the same commit"
    try:
        result = documents.parse_result(result_raw, result_rel)
    except CcciError as exc:
        return f"its result is unreadable: {exc.message}"
    if result.get("outcome") != "pass" or result.get("mode") != "cold":
        return f"its result is {result.get('mode')} {result.get('outcome')}, not a green cold run"
    if result.get("ref") != canonical.known_good or result.get("recipe") != recipe:
        return f"its result tested {result.get('recipe')}@{str(result.get('ref'))[:12]}, not " \
               f"{recipe}@{canonical.known_good[:12]}"
    return None


def audit(registry_path: Path) -> tuple[int, list[Violation]]:
    """(changes checked, violations) over the whole history of canonicals/."""
    registry = Registry(registry_path)
    checked = 0
    violations = []
    for commit, status, path in canonical_changes(registry):
        if not path.endswith(".yaml"):
            continue
        checked += 1
        reason = check_change(registry, commit, status, path)
        if reason:
            violations.append(Violation(commit.sha, path, reason))
    return checked, violations
