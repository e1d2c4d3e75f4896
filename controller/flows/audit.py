"""`ccci audit`: the rules every result and canonical change in the registry's git history must keep.

Every commit that adds or changes a result is the controller's; every change to canonicals/ is
the controller's, in the commit that writes the result of a green cold run of exactly that commit;
a run's verdict, once committed, stays what it was (a run writes its result up to three times:
the claim, the verdict, and the finish after its housekeeping — each commit's subject names the
outcome, so the rule is read from subjects, without a file read per result).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.registry import documents
from controller.registry.git import object_reader
from controller.registry.history import MAX_HISTORY_BYTES, Change, Commit, changes, changes_of, first_parent_line
from controller.registry.settings import SETTINGS_FILE, default_identity, parse_settings
from controller.registry.store import Registry
from controller.util import names
from controller.util.errors import CcciError

# The bytes of a path at a commit (None when absent or too large).
FileAt = Callable[[str, str], "bytes | None"]

SUBJECT = re.compile(r"^\[cold\] (?P<recipe>[a-z0-9-]+)@(?P<short>[0-9a-f]{7}) pass \(run (?P<run>[^)]+)\)")
# Any result commit: `[<label>] <recipe>@<short> <outcome> (run <id>)[; …]`.
RESULT_SUBJECT = re.compile(r"^\[[a-z-]+\] \S+@\S+ (?P<outcome>[a-z]+) \(run (?P<run>[^)]+)\)")


@dataclass(frozen=True)
class Violation:
    commit: str
    path: str
    reason: str

    def sentence(self) -> str:
        return f"commit {self.commit[:12]}: {self.path}: {self.reason}"


@dataclass
class AuditReport:
    canonical_changes: int = 0
    commits: int = 0  # on the first-parent line, all read
    others: int = 0  # of them not the controller's: each checked for what it did to results/
    violations: list[Violation] = field(default_factory=list)


def _is_document(path: str, folder: str) -> bool:
    """A document the controller reads: a .yaml under `folder` (a .gitkeep or README is not)."""
    return path.startswith(f"{folder}/") and path.endswith(".yaml")


def controller_email(read: FileAt, commit: str, previous: str) -> str:
    """The email the controller commits as, by ccci.yaml at `commit` (CCCI_GIT_EMAIL overrides
    it, as it does for the controller). A ccci.yaml that does not load leaves it as it was: the
    controller keeps its last good settings while the file is broken."""
    raw = read(commit, SETTINGS_FILE)
    if raw is None:
        return default_identity().email
    try:
        return parse_settings(raw).identity.email
    except CcciError:
        return previous


def _not_the_controller(commit: Commit, expected_email: str) -> str:
    return f"authored by {commit.author_name} <{commit.author_email}>, not the controller <{expected_email}>"


def check_result_commit(commit: Commit, written: list[str], expected_email: str) -> list[Violation]:
    """Pure rule: results are written only by the controller (claims, verdicts, rejections, aborts)."""
    if commit.author_email == expected_email:
        return []
    reason = "a result " + _not_the_controller(commit, expected_email)
    return [Violation(commit.sha, path, reason) for path in written]


def check_verdict_kept(commit: Commit, verdicts: dict[str, str]) -> Violation | None:
    """Pure rule: after a run's first verdict (any outcome but `running`), every later commit of
    its result names that same outcome. Records the verdict in `verdicts` (run id -> outcome)."""
    match = RESULT_SUBJECT.match(commit.subject)
    if not match:
        return None
    run, outcome = match.group("run"), match.group("outcome")
    before = verdicts.get(run)
    if before is None:
        if outcome != "running":
            verdicts[run] = outcome
        return None
    if outcome == before:
        return None
    return Violation(commit.sha, names.result_rel(run),
                     f"changes the committed verdict of run {run} from {before} to {outcome}")


def check_canonical_change(read: FileAt, commit: Commit, change: Change, expected_email: str,
                           written_results: set[str]) -> str | None:
    """Why one change of a canonical file is not allowed, or None."""
    path = change.path
    if change.deleted:
        return "the canonical was deleted (only the controller writes canonicals, and it never deletes)"
    if commit.author_email != expected_email:
        return _not_the_controller(commit, expected_email)
    raw = read(commit.sha, path)
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
    result_raw = read(commit.sha, result_rel)
    if result_raw is None:
        return f"no result {result_rel} at this commit"
    try:
        result = documents.parse_result(result_raw, result_rel)
    except CcciError as exc:
        return f"its result is unreadable: {exc.message}"
    if result.get("outcome") != "pass" or result.get("mode") != "cold":
        return f"its result is {result.get('mode')} {result.get('outcome')}, not a green cold run"
    if result.get("ref") != canonical.known_good or result.get("recipe") != recipe:
        return f"its result tested {result.get('recipe')}@{str(result.get('ref'))[:12]}, not " \
               f"{recipe}@{canonical.known_good[:12]}"
    if result_rel not in written_results:
        return f"the commit does not write {result_rel}, the result of the run that promoted it"
    moved = result.get("canonical")
    if not isinstance(moved, dict) or moved.get("advanced") is not True or moved.get("after") != canonical.known_good:
        return f"its result does not record advancing the canonical to {canonical.known_good[:12]}"
    return None


def audit(registry_path: Path) -> AuditReport:
    """Every commit on the first-parent line, oldest first. A result may be written by the
    controller only, so what a commit did to results/ matters only when someone else made it:
    those commits (and the few that change canonicals/) are diffed there, the controller's own
    hundred thousand are not — the cost follows the history's length, not its trees' size.
    Git calls: the line, the changes of ccci.yaml and canonicals/, one `diff-tree --stdin`, and
    one `cat-file --batch` for the files read."""
    registry = Registry(registry_path)
    with object_reader(registry.root) as reader:
        return _audit(registry, lambda commit, rel: reader(f"{commit}:{rel}", MAX_HISTORY_BYTES))


def _audit(registry: Registry, read: FileAt) -> AuditReport:
    report = AuditReport()
    line = first_parent_line(registry)
    watched = dict((commit.sha, changed) for commit, changed in
                   changes(registry, SETTINGS_FILE, f"{names.CANONICALS_DIR}/"))
    expected_email = default_identity().email
    verdicts: dict[str, str] = {}
    expected: dict[str, str] = {}
    for commit in line:
        if any(c.path == SETTINGS_FILE for c in watched.get(commit.sha, ())):
            expected_email = controller_email(read, commit.sha, expected_email)
        expected[commit.sha] = expected_email
    report.commits = len(line)
    suspects = {c.sha for c in line if c.author_email != expected[c.sha] or c.sha in watched}
    report.others = sum(1 for c in line if c.author_email != expected[c.sha])
    results = changes_of(registry, [c for c in line if c.sha in suspects], f"{names.RESULTS_DIR}/")
    for commit in line:
        # Subjects only: a verdict, once committed, is never changed (no diff needed for that).
        changed_verdict = check_verdict_kept(commit, verdicts)
        if commit.sha not in suspects:
            report.violations += [changed_verdict] if changed_verdict else []
            continue
        written = [c.path for c in results.get(commit.sha, ())
                   if _is_document(c.path, names.RESULTS_DIR) and not c.deleted]
        foreign = check_result_commit(commit, written, expected[commit.sha])
        # A commit someone else wrote is named once, for that.
        report.violations += foreign or ([changed_verdict] if changed_verdict and written else [])
        for change in watched.get(commit.sha, ()):
            if not _is_document(change.path, names.CANONICALS_DIR):
                continue
            report.canonical_changes += 1
            reason = check_canonical_change(read, commit, change, expected[commit.sha], set(written))
            if reason:
                report.violations.append(Violation(commit.sha, change.path, reason))
    return report
