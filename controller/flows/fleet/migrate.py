"""Moving a single-host registry's snapshot index (`snapshots-index/<app>.yaml`) under the name
of the host whose disk holds those snapshots (`snapshots-index/<host>/<app>.yaml`).

Done at start by the owner — the host whose last-known-good on disk has the entry's manifest —
in one commit; a crash before it leaves uncommitted files the next sync discards, and the next
start does it again. An entry whose bytes no host has stays where it is (`ccci status` shows it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from controller.flows.context import Context
from controller.flows.fleet.placement import local_manifest
from controller.registry.documents import DOC_MAX_BYTES, parse_snapshot_index
from controller.util import names
from controller.util.errors import CcciError
from controller.util.files import write_whole

log = logging.getLogger(__name__)


def migrate_legacy_index(ctx: Context) -> list[str]:
    """Move the single-host entries whose snapshots are on this host's disk under its name, in
    one commit; the apps moved (none when there is nothing of ours to move)."""
    mine: dict[str, str] = {}
    for app in ctx.registry.legacy_index_apps():
        try:
            entry = ctx.registry.legacy_snapshot_index(app)
        except CcciError as exc:
            log.warning("not migrating %s: %s", names.legacy_snapshot_index_rel(app), exc.message)
            continue
        if entry is not None and entry.manifest_sha256 == local_manifest(ctx, app):
            mine[app] = entry.manifest_sha256
    if not mine:
        return []
    moved: list[str] = []

    def write(root: Path) -> list[str] | None:
        moved.clear()
        touched: list[str] = []
        for app, manifest in sorted(mine.items()):
            old_rel = names.legacy_snapshot_index_rel(app)
            old = root / old_rel
            if old.is_symlink() or not old.is_file():
                continue  # moved already (by us before a crash, or by a host with the same bytes)
            raw = old.read_bytes()[: DOC_MAX_BYTES + 1]
            try:
                if parse_snapshot_index(raw, old_rel).manifest_sha256 != manifest:
                    continue  # rewritten since we looked: look again at the next start
            except CcciError:
                continue
            new_rel = names.snapshot_index_rel(ctx.host, app)
            new = root / new_rel
            if not new.exists():  # an entry of ours already there is newer: keep it
                new.parent.mkdir(parents=True, exist_ok=True)
                write_whole(new, raw.decode())
                touched.append(new_rel)
            old.unlink()
            touched.append(old_rel)
            moved.append(app)
        return touched or None

    def message() -> str:
        return (f"[migrate] snapshots-index: {', '.join(moved)} moved under {ctx.host}/, the host "
                "whose disk holds them")

    if ctx.registry.transact(write, message) is None:
        return []
    log.info("snapshot index of %s moved under %s/", ", ".join(moved), ctx.host)
    return list(moved)
