"""Raw, verified, crash-safe snapshots of an app's volumes, and incremental restores."""

from controller.snapshots.copy import volume_manifest
from controller.snapshots.layout import SnapshotInfo, snapshot_manifest
from controller.snapshots.manifest import ManifestEntry
from controller.snapshots.restore import RestoreReport, restore_snapshot, verify_volumes
from controller.snapshots.state import mark_volumes_clean, mark_volumes_dirty, volumes_clean
from controller.snapshots.store import current_snapshot, take_snapshot, verify_snapshot

__all__ = [
    "ManifestEntry",
    "RestoreReport",
    "SnapshotInfo",
    "current_snapshot",
    "mark_volumes_clean",
    "mark_volumes_dirty",
    "restore_snapshot",
    "snapshot_manifest",
    "take_snapshot",
    "verify_snapshot",
    "verify_volumes",
    "volume_manifest",
    "volumes_clean",
]
