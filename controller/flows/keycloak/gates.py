"""The safety gate of a Keycloak upgrade, pure: versions from tags, release notes, hold or go."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")
MIGRATION_FLAG_RE = re.compile(r"manual[ -]migration|breaking", re.IGNORECASE)
NOTES_DIR = "release"
MAX_NOTES_BYTES = 64 * 1024

Version = tuple[int, int, int]


def parse_version(tag: str) -> Version | None:
    match = VERSION_RE.match(tag)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def release_version(tags: list[str]) -> Version | None:
    """The highest version among a commit's tags (Co-op Cloud tags `1.2.0+26.0.5`)."""
    versions = [v for v in (parse_version(t) for t in tags) if v is not None]
    return max(versions) if versions else None


def show_version(version: Version | None) -> str:
    return ".".join(map(str, version)) if version else "an untagged commit"


def notes_in_range(names: list[str], current: Version | None, target: Version | None) -> list[str]:
    """Release-note files that speak for the step current → target: `next`, and each
    version past the current one up to the target (only the target's when current is unknown)."""
    chosen = []
    for name in names:
        version = parse_version(name)
        in_step = version is not None and target is not None and version <= target and (
            version > current if current is not None else version == target)
        if name == "next" or in_step:
            chosen.append(name)
    return sorted(chosen)


@dataclass(frozen=True)
class GateVerdict:
    hold: bool
    reason: str


def safety_gate(current: Version | None, target: Version | None, notes: dict[str, str]) -> GateVerdict:
    """Hold a major version bump, or release notes that flag a manual migration."""
    if current is not None and target is not None and target[0] > current[0]:
        return GateVerdict(True, f"a major version bump ({show_version(current)} → {show_version(target)})")
    for name, text in sorted(notes.items()):
        for line in text.splitlines():
            if MIGRATION_FLAG_RE.search(line):
                return GateVerdict(True, f"release notes {NOTES_DIR}/{name} flag a manual migration: "
                                         f"{line.strip()[:200]!r}")
    return GateVerdict(False, f"{show_version(current)} → {show_version(target)}")


def read_release_notes(checkout: Path, current: Version | None, target: Version | None) -> dict[str, str]:
    where = checkout / NOTES_DIR
    if not where.is_dir():
        return {}
    names = [p.name for p in where.iterdir() if p.is_file() and not p.is_symlink()]
    out = {}
    for name in notes_in_range(names, current, target):
        # Capped: a recipe's notes are someone else's bytes.
        with (where / name).open("rb") as handle:
            out[name] = handle.read(MAX_NOTES_BYTES).decode(errors="replace")
    return out
