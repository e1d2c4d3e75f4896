"""Taking, finding and verifying an app's last-known-good snapshot."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from controller.snapshots import fsio, patch
from controller.snapshots.check import check_tree, compare_tree
from controller.snapshots.copy import CopyResult, PreviousCopy, copy_tree, remove_tree
from controller.snapshots.index import EMPTY, VolumeIndex, read_index, volume_index, write_index
from controller.snapshots.layout import (
    LAST_KNOWN_GOOD,
    LOCK_FILE,
    MANIFEST_FILE,
    META_FILE,
    VOLUMES_DIR,
    Snapshot,
    SnapshotInfo,
    app_dir,
    link_target,
    locked,
    meta_document,
    new_generation_name,
    open_snapshot,
    os_errors_fail,
    read_info,
    remember_manifest,
    resolve_volumes,
    swap_link,
)
from controller.snapshots.leftovers import remove_leftovers
from controller.snapshots.manifest import (
    ManifestEntry,
    Observed,
    check_commit,
    digest,
    render_manifest,
    summarise,
)
from controller.snapshots.space import check_free_space
from controller.snapshots.state import write_state
from controller.util import files
from controller.util.errors import CcciError, CheckFailed
from controller.util.locks import exclusive
from controller.util.timeutil import now_iso

log = logging.getLogger(__name__)


def take_snapshot(
    store_root: Path,
    app: str,
    volumes: dict[str, Path],
    *,
    commit: str,
    run_id: str | None = None,
    min_free_bytes: int = 0,
    allowed_root: Path | None = None,
    paranoid: bool = False,
) -> SnapshotInfo:
    """Copy the (undeployed) app's volumes into a new generation and make it last-known-good.

    A file the live index vouches for (unchanged since the last take or restore) that the
    last-known-good holds exactly stays that generation's inode: where nothing is
    hard-linked, the last generation's tree is patched with what changed and moved into the
    new one (patch.py); else the file becomes a hard link to it. Other files are cloned
    (share extents) where the store's filesystem can, else copied; each is read once, for
    its digest. `paranoid` trusts no index, links nothing, and re-reads every stored file
    from the disk after the sync.
    """
    check_commit(commit)
    sources = resolve_volumes(store_root, volumes, allowed_root)
    with locked(store_root, app) as where:
        remove_leftovers(where)
        previous = link_target(where)
        check_free_space(where, app, sources, min_free_bytes)
        index = {} if paranoid else read_index(where)
        last = None if paranoid or previous is None else _open_last(where, app)
        name = new_generation_name()
        generation = where / name
        plans = None
        try:
            plans = None if last is None else _plan_patch(last, sources, index)
            if plans is not None and last is not None:
                info, live = _patch_generation(where, generation, last, sources, plans, commit,
                                               run_id)
            else:
                info, live = _write_generation(where, generation, app, sources, commit, run_id,
                                               index, _previous_copies(last), paranoid)
            swap_link(where, name)
        except BaseException as exc:
            _discard(where, generation, previous if plans is not None else None)
            if isinstance(exc, OSError) and not isinstance(exc, CcciError):
                raise CheckFailed(f"snapshot of {app} failed and was discarded: {exc}") from exc
            raise
        # The new link is durable before the old generation goes: a crash leaves one of them.
        files.fsync_path(where)
        # From here on the take has succeeded; what fails now is tidying up, which the
        # next call redoes (an unlinked generation is a leftover).
        try:
            if previous is not None and previous != name:
                clock = _Stopwatch()
                remove_tree(where / previous)
                files.fsync_path(where)
                log.info("snapshot of %s: old generation removed in %.2fs", app, clock.lap())
            if plans is not None:
                patch.finish(generation)
            write_index(where, live)
            # The volumes were just copied whole, so they equal this snapshot.
            write_state(where, clean=True, manifest_sha256=info.manifest_sha256)
        except OSError as exc:
            log.warning("snapshot of %s taken, but tidying up failed (retried next time): %s",
                        app, exc)
        log.info("snapshot of %s taken at %s (commit %s, %s)", app, name, commit[:12],
                 info.volumes)
        return info


def _open_last(where: Path, app: str) -> Snapshot | None:
    """The last-known-good, to patch or link unchanged files to; None when it is damaged."""
    try:
        return open_snapshot(where, app)
    except (CheckFailed, OSError) as exc:
        log.warning("snapshot of %s: the last-known-good is unreadable (%s); copying every file",
                    app, exc)
        return None


def _previous_copies(last: Snapshot | None) -> dict[str, PreviousCopy]:
    if last is None:
        return {}
    return {name: PreviousCopy(last.volume_dir(name), {e.path: e for e in entries})
            for name, entries in last.manifests.items()}


def _plan_patch(last: Snapshot, sources: dict[str, Path],
                index: dict[str, VolumeIndex]) -> dict[str, patch.VolumePatch] | None:
    """What patching the last-known-good takes, per volume; None when a new generation is due."""
    if set(last.manifests) != set(sources) or any(
        e.hardlink is not None for entries in last.manifests.values() for e in entries
    ):
        return None
    plans: dict[str, patch.VolumePatch] = {}
    for name, src in sorted(sources.items()):
        scanned_ns = time.time_ns()
        root_fd = fsio.open_root(src)
        try:
            seen = fsio.scan(root_fd)
        finally:
            os.close(root_fd)
        planned = patch.plan_volume(last.manifests[name], seen, scanned_ns,
                                    index.get(name, EMPTY))
        if planned is None:
            return None
        plans[name] = planned
    return plans


def _patch_generation(where: Path, generation: Path, last: Snapshot, sources: dict[str, Path],
                      plans: dict[str, patch.VolumePatch], commit: str, run_id: str | None,
                      ) -> tuple[SnapshotInfo, dict[str, VolumeIndex]]:
    """Patch the last generation's tree and move it into `generation` (patch.py has the steps)."""
    clock = _Stopwatch()
    os.mkdir(generation, 0o700)
    patcher = patch.Patch(last.generation, generation, VOLUMES_DIR, plans)
    manifests = patcher.stage(sources)
    staged = clock.lap()
    patcher.apply()
    applied = clock.lap()
    patcher.verify(manifests)
    patcher.move_volumes()
    kept = sum(p.kept for p in plans.values())
    log.info("snapshot of %s: patched the last in place: staged in %.2fs, applied in %.2fs, "
             "verified in %.2fs (files and symlinks kept: %d, new: %s)", last.info.app, staged,
             applied, clock.lap(), kept, dict(patcher.how))
    scanned = {name: (plan.scanned_ns, plan.seen) for name, plan in plans.items()}
    return _commit_generation(where, generation, last.info.app, commit, run_id, manifests,
                              scanned)


def _discard(where: Path, generation: Path, patched: str | None) -> None:
    """Remove a generation that failed before its swap; undo its patch of `patched` first."""
    with contextlib.suppress(OSError, CheckFailed):
        if link_target(where) == generation.name:
            return  # interrupted after the swap itself: it is the last-known-good now
    if patched is not None:
        try:
            patch.undo(where / patched, generation, VOLUMES_DIR)
        except (OSError, CheckFailed) as exc:
            # Its plan and stash stay: the next operation on the store undoes it (settle).
            log.error("snapshot store %s: undoing the patch failed (%s); the next operation "
                      "retries", where, exc)
            return
    with contextlib.suppress(OSError):
        shutil.rmtree(generation)


class _Stopwatch:
    def __init__(self) -> None:
        self._last = time.monotonic()

    def lap(self) -> float:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        return elapsed


def _write_generation(
    where: Path,
    generation: Path,
    app: str,
    sources: dict[str, Path],
    commit: str,
    run_id: str | None,
    index: dict[str, VolumeIndex],
    previous: dict[str, PreviousCopy],
    paranoid: bool,
) -> tuple[SnapshotInfo, dict[str, VolumeIndex]]:
    clock = _Stopwatch()
    os.mkdir(generation, 0o700)
    os.mkdir(generation / VOLUMES_DIR, 0o700)
    copies = {
        name: copy_tree(src, generation / VOLUMES_DIR / name, index.get(name, EMPTY),
                        previous.get(name), read_back=paranoid)
        for name, src in sorted(sources.items())
    }
    copied = clock.lap()
    # One syncfs makes every copied file and directory durable before it is verified.
    fsio.sync_filesystem(generation)
    synced = clock.lap()
    manifests = {name: _verify_copy(app, generation / VOLUMES_DIR / name, name, copy, paranoid)
                 for name, copy in copies.items()}
    counts = collections.Counter(how for copy in copies.values() for how in copy.how.values())
    log.info("snapshot of %s: copied in %.2fs, synced in %.2fs, verified in %.2fs (files: %s)",
             app, copied, synced, clock.lap(), dict(counts))
    scanned = {name: (copy.scanned_ns, copy.source) for name, copy in copies.items()}
    return _commit_generation(where, generation, app, commit, run_id, manifests, scanned)


def _commit_generation(
    where: Path,
    generation: Path,
    app: str,
    commit: str,
    run_id: str | None,
    manifests: dict[str, list[ManifestEntry]],
    scanned: Mapping[str, tuple[int, Mapping[str, Observed]]],
) -> tuple[SnapshotInfo, dict[str, VolumeIndex]]:
    """Write a verified generation's manifest and metadata durably; ready for the swap."""
    manifest = render_manifest(manifests)
    files.write_durably(generation / MANIFEST_FILE, manifest)
    info = SnapshotInfo(
        app=app,
        path=where / LAST_KNOWN_GOOD,
        commit=commit,
        volumes={name: summarise(entries) for name, entries in manifests.items()},
        manifest_sha256=digest(manifest),
        taken_at=now_iso(),
        taken_by_run=run_id,
    )
    files.write_durably(generation / META_FILE, meta_document(info, generation.name))
    files.fsync_path(generation / VOLUMES_DIR)
    files.fsync_path(generation)
    # The next take replacing this one links against these entries: spare it the parse.
    remember_manifest(info.manifest_sha256, manifests)
    live = {name: volume_index(scanned[name][0], manifests[name], scanned[name][1])
            for name in manifests}
    return info, live


def _verify_copy(app: str, root: Path, name: str, copy: CopyResult,
                 paranoid: bool) -> list[ManifestEntry]:
    """Check the synced copy; return its manifest with every digest filled in.

    Metadata and structure of every entry are compared by lstat. Each file's content was
    read once on the way: a copied file's digest is that of the very bytes written, a
    clone's was read from the clone, a linked or vouched file's comes from the live index
    (and, linked, from the last manifest too). `paranoid` re-reads every file from the
    disk (cached pages dropped): a copy must hash as its source did, and a clone's
    digest is read only then.
    """
    checked = check_tree(root, copy.entries, label=f"{name}: ", drop_cache=True,
                         should_hash=lambda e, _: paranoid or e.sha256 is None)
    if checked.problems:
        raise CheckFailed(f"the new snapshot of {app} does not verify: {checked.problems[0]}")
    return [replace(e, sha256=checked.hashes[e.path]) if e.type == "f" and e.sha256 is None else e
            for e in copy.entries]


def current_snapshot(store_root: Path, app: str) -> SnapshotInfo | None:
    """The last-known-good's metadata; cleans leftovers when no one else holds the lock."""
    where = app_dir(store_root, app)
    if not where.is_dir():
        return None
    with contextlib.suppress(CcciError), exclusive(where / LOCK_FILE, timeout=0):
        remove_leftovers(where)
    found = read_info(where, app)
    return found[0] if found else None


def verify_snapshot(store_root: Path, app: str) -> SnapshotInfo:
    """Re-hash the stored copy against its manifest; CheckFailed names the first difference."""
    if not app_dir(store_root, app).is_dir():
        raise CheckFailed(f"{app} has no last-known-good snapshot")
    with locked(store_root, app) as where, os_errors_fail(f"verify of the snapshot of {app} failed"):
        remove_leftovers(where)
        snapshot = open_snapshot(where, app)
        present = sorted(fsio.iter_dir_names(snapshot.generation / VOLUMES_DIR))
        if present != sorted(snapshot.manifests):
            raise CheckFailed(f"snapshot of {app}: holds volumes {present}, "
                              f"the manifest lists {sorted(snapshot.manifests)}")
        for name, entries in sorted(snapshot.manifests.items()):
            # Dropping each file's cached pages first makes this a check of the disk.
            problems = compare_tree(
                snapshot.volume_dir(name), entries, label=f"{name}: ", drop_cache=True
            )
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise CheckFailed(f"snapshot of {app} does not verify: {problems[0]}{more}")
        return snapshot.info
