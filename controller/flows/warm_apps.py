"""Data-warm canonical apps: per-app locks, what their volumes hold, their snapshots (also by hand)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller import snapshots
from controller.flows.context import Context, open_context
from controller.registry.documents import SnapshotIndex, snapshot_index_document
from controller.registry.settings_schema import defaults
from controller.registry.store import updated_text
from controller.runtime import stack
from controller.util import names
from controller.util.errors import BadInput, CcciError, CheckFailed
from controller.util.files import atomic_write_json, read_json, write_whole
from controller.util.locks import exclusive
from controller.util.paths import StateDir
from controller.util.timeutil import now_iso

log = logging.getLogger(__name__)


@contextlib.contextmanager
def app_lock_state(state: StateDir, app: str) -> Iterator[None]:
    """Serialise warm work on one app across threads and processes; the kernel releases the
    lock when its holder dies, so a killed run never blocks the next."""
    with exclusive(state.app_lock(app), what=f"warm app {app}"):
        yield


def app_lock(ctx: Context, app: str) -> contextlib.AbstractContextManager[None]:
    return app_lock_state(ctx.state, app)


@contextlib.contextmanager
def app_lock_if_free(state: StateDir, app: str) -> Iterator[bool]:
    """The app's lock if nobody holds it (True); False at once when a live run has the app."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive(state.app_lock(app), timeout=0, what=f"warm app {app}"))
            free = True
        except CcciError:
            free = False
        yield free


def read_warm_state(state: StateDir, app: str) -> dict[str, Any]:
    doc = read_json(state.warm_state(app))
    return dict(doc) if isinstance(doc, dict) else {}


def write_warm_state(state: StateDir, app: str, **fields: Any) -> None:
    """What commit's data the live volumes hold (for `ccci snapshot take` without --commit)."""
    doc = {**read_warm_state(state, app), **fields, "updated_at": now_iso()}
    atomic_write_json(state.warm_state(app), doc)


def refuse_if_live(app: str, action: str) -> None:
    live = stack.live_tasks(app)
    if live:
        raise CheckFailed(f"cannot {action} {app} while it is deployed: live tasks {', '.join(live)}")
    writers = stack.volume_writers(app)
    if writers:
        raise CheckFailed(f"cannot {action} {app} while a container uses its volumes: {', '.join(writers)}; "
                          "stop it first")


def min_free_bytes(gigabytes: float) -> int:
    return int(gigabytes * 1024**3)


def take_app_snapshot(state: StateDir, app: str, commit: str, run_id: str | None, *,
                      min_free_gb: float, paranoid: bool = False) -> snapshots.SnapshotInfo:
    """Snapshot the undeployed app's volumes; the old last-known-good stays until the new one
    verifies (the library swaps atomically)."""
    refuse_if_live(app, "snapshot")
    volumes = stack.volume_paths(app)  # none (a stateless recipe): an empty, valid snapshot
    info = snapshots.take_snapshot(state.snapshots, app, volumes, commit=commit, run_id=run_id,
                                   min_free_bytes=min_free_bytes(min_free_gb),
                                   allowed_root=stack.volumes_root(), paranoid=paranoid)
    write_warm_state(state, app, data_commit=commit)
    return info


def restore_app(state: StateDir, app: str, *, paranoid: bool = False) -> snapshots.RestoreReport:
    """Make the undeployed app's volumes equal to its last-known-good (creating missing ones)."""
    refuse_if_live(app, "restore")
    info = snapshots.current_snapshot(state.snapshots, app)
    if info is None:
        raise CheckFailed(f"{app} has no last-known-good snapshot to restore")
    # A volume a later commit added holds that commit's data, not the last-known-good's: it goes
    # first (the volumes are still marked dirty, so a crash here is redone by the next restore).
    extra = stack.remove_volumes_except(app, set(info.volumes))
    if extra:
        log.warning("%s: removed volumes the last-known-good does not have: %s", app, ", ".join(extra))
    labels = {"ccci.managed": "true", "ccci.app": app, "ccci.mode": "warm", "ccci.owner": state.owner_id}
    volumes = stack.ensure_volumes(app, sorted(info.volumes), labels)
    volumes = {name: path for name, path in volumes.items() if name in info.volumes}
    report = snapshots.restore_snapshot(state.snapshots, app, volumes, paranoid=paranoid,
                                        allowed_root=stack.volumes_root())
    write_warm_state(state, app, data_commit=info.commit)
    return dataclasses.replace(report, removed_volumes=tuple(extra))


def restore_summary(report: snapshots.RestoreReport) -> dict[str, Any]:
    """A result's `snapshot` field after a restore."""
    summary: dict[str, Any] = {"restored": True, "verified": report.verified}
    if report.removed_volumes:
        summary["volumes_removed"] = list(report.removed_volumes)
    return summary


def index_from_info(info: snapshots.SnapshotInfo) -> SnapshotIndex:
    return SnapshotIndex(app=info.app, commit=info.commit, path=str(info.path), volumes=info.volumes,
                         manifest_sha256=info.manifest_sha256, taken_at=info.taken_at,
                         taken_by_run=info.taken_by_run)


def commit_index(ctx: Context, info: snapshots.SnapshotInfo, label: str = "snapshot") -> str | None:
    """Commit `snapshots-index/<host>/<app>.yaml` for a snapshot taken outside a run."""
    rel = names.snapshot_index_rel(ctx.host, info.app)

    def write(root: Path) -> list[str] | None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, updated_text(root, rel, snapshot_index_document(index_from_info(info))))
        return [rel]

    message = f"[{label}] {info.app}@{info.commit[:7]} taken on {ctx.host} (run {info.taken_by_run or '-'})"
    return ctx.registry.transact(write, message)


@dataclasses.dataclass(frozen=True)
class Verification:
    info: snapshots.SnapshotInfo
    differences: list[str] | None  # None: the live volumes were not compared (missing ones)


def verify_by_hand(state: StateDir, app: str, *, paranoid: bool) -> Verification:
    """`ccci snapshot verify`: the snapshot against its manifest, and the live volumes against
    the snapshot when they are all there."""
    info = snapshots.verify_snapshot(state.snapshots, app)
    volumes = stack.volume_paths(app)
    if not volumes or not set(volumes) >= set(info.volumes):
        return Verification(info, None)
    differences = snapshots.verify_volumes(state.snapshots, app, {
        k: v for k, v in volumes.items() if k in info.volumes}, paranoid=paranoid)
    return Verification(info, differences)


def restore_by_hand(state: StateDir, app: str, *, paranoid: bool) -> snapshots.RestoreReport:
    """`ccci snapshot restore`, under the app's lock like any warm run."""
    with app_lock_state(state, app):
        return restore_app(state, app, paranoid=paranoid)


def take_by_hand(state: StateDir, app: str, *, commit: str | None, registry_path: Path | None,
                 host: str | None = None, paranoid: bool = False) -> tuple[snapshots.SnapshotInfo, bool]:
    """`ccci snapshot take`, under the app's lock; with a registry, also commit its index entry
    (and keep its limits.disk_min_free_gb; without one, $CCCI_DISK_MIN_FREE_GB or the default).
    Returns the snapshot and whether an index commit was made."""
    ctx = open_context(registry_path, state.root, host=host) if registry_path else None
    with app_lock_state(state, app):
        commit = commit or read_warm_state(state, app).get("data_commit")
        if not commit:
            raise BadInput(f"--commit: which commit's data does {app} hold? (no record in the state dir)")
        min_free = ctx.settings.limits.disk_min_free_gb if ctx else float(
            os.environ.get("CCCI_DISK_MIN_FREE_GB", defaults()["limits"]["disk_min_free_gb"]))
        info = take_app_snapshot(state, app, commit, None, min_free_gb=min_free, paranoid=paranoid)
        if ctx is None:
            return info, False
        if commit_index(ctx, info) is None:
            raise CheckFailed(f"{names.snapshot_index_rel(ctx.host, app)}: nothing to commit")
        return info, True
