"""Making live volumes equal the last-known-good: rewrite only what differs, then verify."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from controller.snapshots import fsio
from controller.snapshots.check import HashPolicy, check_tree, hash_all
from controller.snapshots.index import (
    EMPTY,
    RACY_NS,
    VolumeIndex,
    read_index,
    volume_index,
    write_index,
)
from controller.snapshots.jobs import Jobs, dup_all, thread_copier
from controller.snapshots.layout import (
    Snapshot,
    locked,
    open_snapshot,
    os_errors_fail,
    resolve_volumes,
)
from controller.snapshots.leftovers import remove_leftovers
from controller.snapshots.manifest import (
    ROOT,
    ManifestEntry,
    Observed,
    metadata_differences,
    observe,
    parent_of,
    sort_key,
)
from controller.snapshots.state import write_state
from controller.util.errors import BadInput, CheckFailed

log = logging.getLogger(__name__)

# keep: equal; fix: metadata only; hash: size matches, nothing vouches for the content;
# write: (re)create from the snapshot; link: hard-link to the group's first member.
Action = Literal["keep", "fix", "hash", "write", "link"]


@dataclass(frozen=True)
class RestoreReport:
    rewritten: int  # entries that existed but were replaced from the snapshot
    created: int  # entries that were missing
    removed: int  # entries the snapshot does not have
    metadata_fixed: int  # entries whose content was right but mode/owner/mtime were not
    bytes_written: int
    verified: bool
    removed_volumes: tuple[str, ...] = ()  # whole volumes the snapshot does not have (set by the caller)


def decide(
    want: ManifestEntry,
    have: Observed | None,
    *,
    paranoid: bool = False,
    vouched: str | None = None,
    leader_inode: tuple[int, int] | None = None,
    inode_owner: str | None = None,
) -> Action:
    """Pure: what one entry needs, from lstat alone (plus the state of its hard-link group).

    `vouched`: the digest the live index vouches for (the file is unchanged since it was
    last taken or restored), or None; a file of the right size that nothing vouches for is
    hashed. `leader_inode`: for a hard-link member, the inode its group's first member has
    now. `inode_owner`: the group (leader path or own path) that already claimed `have`'s
    inode.
    """
    if want.type == "f" and want.hardlink not in (None, want.path):
        return "keep" if have is not None and have.inode == leader_inode else "link"
    if have is None or have.type != want.type:
        return "write"
    if want.type == "l" and have.target != want.target:
        return "write"
    if want.type == "f":
        if inode_owner not in (None, want.hardlink or want.path):
            return "write"  # hard-linked to an entry the snapshot keeps apart
        if have.size != want.size:
            return "write"
        if paranoid or vouched is None:
            return "hash"
        if vouched != want.sha256:
            return "write"
    return "fix" if metadata_differences(want, have) else "keep"


@dataclass(frozen=True)
class VolumeScan:
    """One lstat pass over a live volume, and the clock just before it began."""

    scanned_ns: int
    seen: dict[str, Observed]


def scan_volume(volume: Path) -> VolumeScan:
    scanned_ns = time.time_ns()
    fd = fsio.open_root(volume)
    try:
        return VolumeScan(scanned_ns, fsio.scan(fd))
    finally:
        os.close(fd)


def _split(path: str) -> tuple[str, str]:
    return parent_of(path), path.rpartition("/")[2]


@dataclass
class _Counts:
    rewritten: int = 0
    created: int = 0
    removed: int = 0
    metadata_fixed: int = 0
    bytes_written: int = 0
    written_files: set[str] = field(default_factory=set)

    def add(self, outcome: _Outcome) -> None:
        if outcome.result == "fixed":
            self.metadata_fixed += 1
        elif outcome.result in ("created", "rewritten"):
            if outcome.result == "created":
                self.created += 1
            else:
                self.rewritten += 1
            self.bytes_written += outcome.bytes_written
            if outcome.content_written:
                self.written_files.add(outcome.path)


@dataclass(frozen=True)
class _Outcome:
    path: str
    result: Literal["kept", "fixed", "created", "rewritten"]
    bytes_written: int = 0
    content_written: bool = False


def _done(entry: ManifestEntry, have: Observed | None, written: int = 0,
          content: bool = False) -> _Outcome:
    return _Outcome(entry.path, "created" if have is None else "rewritten", written, content)


class VolumeRestore:
    """Restore one volume directory from one volume of a snapshot.

    The main thread walks the manifest in pre-order and settles directories, symlinks and
    metadata itself; file contents (hash and rewrite) go to workers. Hard-link members
    follow once their leaders are final, directory mtimes last of all.
    """

    def __init__(self, source: Path, volume: Path, entries: list[ManifestEntry], *,
                 paranoid: bool, index: VolumeIndex = EMPTY, scan: VolumeScan | None = None) -> None:
        self.source = source
        self.volume = volume
        self.index = index
        self.entries = sorted(entries, key=lambda e: sort_key(e.path))
        self.wanted = {e.path: e for e in self.entries}
        self.paranoid = paranoid
        self.counts = _Counts()
        self._inode_owner: dict[tuple[int, int], str] = {}
        self._scan = scan
        self.seen: dict[str, Observed] = {}  # the volume as the decisions saw it
        self.scanned_ns = 0  # the clock before that scan
        self.touched: set[str] = set()  # entries this restore may have changed

    def run(self) -> _Counts:
        vol_fd = fsio.open_root(self.volume)
        try:
            snap_fd = fsio.open_root(self.source)
            try:
                # One lstat pass serves both the removal of extras and every decision: only
                # this restore (holding the app's lock, the app undeployed) changes the volume,
                # and what it removes as extra is never an entry it decides on.
                scan = self._scan
                if scan is None or scan.seen[ROOT].inode != observe(os.fstat(vol_fd)).inode:
                    scan = scan_volume(self.volume)
                self.scanned_ns, self.seen = scan.scanned_ns, scan.seen
                self._remove_extras(vol_fd, self.seen)
                members = self._restore_all_but_members(vol_fd, snap_fd)
                with fsio.DirCursor(vol_fd) as vol:
                    for entry in members:
                        self._restore_member(entry, vol_fd, vol)
                self._set_dir_times(vol_fd)
            finally:
                os.close(snap_fd)
        finally:
            os.close(vol_fd)
        return self.counts

    def needs_restat(self, path: str, earlier: Observed) -> bool:
        """Whether the verify must lstat `path` again rather than trust the decisions' scan.

        Only this restore changes the volume (the app is undeployed, the app's lock is
        held): what it did not touch is as that scan saw it. Directories (their mtimes
        are set last), hard-linked inodes (a change through one name shows in all) and
        files changed just before that scan (the live index must not stamp them within
        their racy window, index.RACY_NS) are looked at again all the same.
        """
        return (
            path in self.touched
            or earlier.type != "f"
            or earlier.nlink > 1
            or earlier.ctime_ns >= self.scanned_ns - RACY_NS
        )

    def _remove_extras(self, vol_fd: int, seen: dict[str, Observed]) -> None:
        extras = {path for path in seen if path not in self.wanted}
        for path in sorted(extras, key=sort_key):
            parent, name = _split(path)
            if parent in extras:
                continue  # went with its directory
            pfd = fsio.open_dir_chain(vol_fd, parent)
            try:
                fsio.remove_at(pfd, name)
            finally:
                os.close(pfd)
        self.counts.removed += len(extras)

    def _restore_all_but_members(self, vol_fd: int, snap_fd: int) -> list[ManifestEntry]:
        members: list[ManifestEntry] = []
        jobs: Jobs[_Outcome] = Jobs("snapshot-restore")
        try:
            with fsio.DirCursor(vol_fd) as vol, fsio.DirCursor(snap_fd) as snap:
                for entry in self.entries:
                    if entry.type == "f" and entry.hardlink not in (None, entry.path):
                        members.append(entry)
                    else:
                        self._restore_entry(entry, vol_fd, vol, snap, jobs)
        finally:
            for outcome in jobs.results():
                self.counts.add(outcome)
        return members

    def _restore_entry(self, entry: ManifestEntry, vol_fd: int, vol: fsio.DirCursor,
                       snap: fsio.DirCursor, jobs: Jobs[_Outcome]) -> None:
        have = self.seen.get(entry.path)
        action = decide(
            entry,
            have,
            paranoid=self.paranoid,
            vouched=self.index.vouched(entry.path, have) if entry.type == "f" else None,
            inode_owner=self._inode_owner.get(have.inode) if have is not None else None,
        )
        if entry.type == "f" and have is not None and have.type == "f":
            # First come, first served: a later entry sharing this inode outside the
            # group gets its own copy.
            self._inode_owner.setdefault(have.inode, entry.hardlink or entry.path)
        if action == "keep":
            return  # most entries: no directory to open
        self.touched.add(entry.path)
        if entry.path == ROOT:
            pfd, name = vol_fd, ""
        else:
            parent, name = _split(entry.path)
            pfd = vol.fd_for(parent)
        if entry.type == "f" and action in ("hash", "write"):
            self._submit_file(entry, have, action, pfd, name, snap, jobs)
        elif action == "fix":
            self._fix(entry, pfd, name, vol_fd)
            self.counts.metadata_fixed += 1
        elif action == "write":
            self._write_dir_or_symlink(entry, pfd, name, have)
            self.counts.add(_done(entry, have))

    def _submit_file(self, entry: ManifestEntry, have: Observed | None, action: Action,
                     pfd: int, name: str, snap: fsio.DirCursor, jobs: Jobs[_Outcome]) -> None:
        parent, _ = _split(entry.path)
        vol_dup, snap_dup = dup_all(pfd, snap.fd_for(parent))

        def job() -> list[_Outcome]:
            return [self._file_job(entry, have, action, vol_dup, name, snap_dup)]

        jobs.submit(job, (vol_dup, snap_dup))

    def _file_job(self, entry: ManifestEntry, have: Observed | None, action: Action,
                  pfd: int, name: str, snap_pfd: int) -> _Outcome:
        if action == "hash":
            assert have is not None
            fd = fsio.open_file_at(pfd, name, entry.path, have.inode)
            try:
                same = fsio.hash_fd(fd, thread_copier().buf) == entry.sha256
            finally:
                os.close(fd)
            if same and not metadata_differences(entry, have):
                return _Outcome(entry.path, "kept")
            if same:
                self._fix(entry, pfd, name, -1)
                return _Outcome(entry.path, "fixed")
        temp = fsio.temp_name()
        try:
            written = self._copy_from_snapshot(entry, snap_pfd, pfd, temp)
            if have is not None and have.type == "d":
                fsio.remove_at(pfd, name)
            os.replace(temp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=pfd)
            raise
        return _done(entry, have, written, content=True)

    def _restore_member(self, entry: ManifestEntry, vol_fd: int, vol: fsio.DirCursor) -> None:
        assert entry.hardlink is not None
        leader_parent, leader_name = _split(entry.hardlink)
        lfd = fsio.open_dir_chain(vol_fd, leader_parent)
        try:
            st = os.stat(leader_name, dir_fd=lfd, follow_symlinks=False)
        finally:
            os.close(lfd)
        parent, name = _split(entry.path)
        pfd = vol.fd_for(parent)
        have = fsio.observe_at(pfd, name)
        self.touched.add(entry.path)
        if decide(entry, have, leader_inode=(st.st_dev, st.st_ino)) == "link":
            self._link(entry, pfd, name, have, vol_fd)
            self.counts.add(_done(entry, have))

    def _fix(self, entry: ManifestEntry, pfd: int, name: str, vol_fd: int) -> None:
        if entry.path == ROOT:
            os.fchown(vol_fd, entry.uid, entry.gid)
            os.fchmod(vol_fd, entry.mode)
        elif entry.type == "d":
            fd = fsio.open_dir_at(pfd, name, entry.path)
            try:
                # Its mtime is set at the end, after its contents stop changing.
                os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode)
            finally:
                os.close(fd)
        elif entry.type == "f":
            fd = fsio.open_file_at(pfd, name, entry.path)
            try:
                fsio.set_fd_metadata(fd, entry, entry.mtime_ns)
            finally:
                os.close(fd)
        else:
            fsio.set_symlink_metadata(pfd, name, entry, entry.mtime_ns)

    def _write_dir_or_symlink(self, entry: ManifestEntry, pfd: int, name: str,
                              have: Observed | None) -> None:
        if entry.type == "d":
            if have is not None:
                fsio.remove_at(pfd, name)
            os.mkdir(name, 0o700, dir_fd=pfd)
            self._fix(entry, pfd, name, -1)
            return
        assert entry.target is not None
        temp = fsio.temp_name()
        try:
            os.symlink(entry.target, temp, dir_fd=pfd)
            fsio.set_symlink_metadata(pfd, temp, entry, entry.mtime_ns)
            if have is not None and have.type == "d":
                fsio.remove_at(pfd, name)
            os.replace(temp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=pfd)
            raise

    @staticmethod
    def _copy_from_snapshot(entry: ManifestEntry, snap_pfd: int, pfd: int, temp: str) -> int:
        name = entry.path.rpartition("/")[2]
        try:
            sfd = fsio.open_file_at(snap_pfd, name, entry.path)
        except FileNotFoundError as exc:
            raise CheckFailed(f"snapshot file {entry.path} is missing; the snapshot is damaged") from exc
        try:
            dfd = os.open(temp, fsio.READ_WRITE_CREATE, 0o600, dir_fd=pfd)
            try:
                st = os.fstat(sfd)
                if fsio.CLONES.clone(sfd, dfd, st.st_dev, os.fstat(dfd).st_dev):
                    # The clone shares the snapshot file's extents: hashing it checks them, and
                    # leaves its pages cached for the verify that hashes it again.
                    sha, written = fsio.hash_fd(dfd, thread_copier().buf), st.st_size
                else:
                    sha, written = thread_copier().copy(sfd, dfd, st)
                if sha != entry.sha256:
                    raise CheckFailed(
                        f"snapshot file {entry.path} does not match its manifest; "
                        "the snapshot is damaged"
                    )
                fsio.set_fd_metadata(dfd, entry, entry.mtime_ns)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        return written

    def _link(self, entry: ManifestEntry, pfd: int, name: str, have: Observed | None,
              vol_fd: int) -> None:
        assert entry.hardlink is not None
        leader_parent, leader_name = _split(entry.hardlink)
        lfd = fsio.open_dir_chain(vol_fd, leader_parent)
        temp = fsio.temp_name()
        try:
            os.link(leader_name, temp, src_dir_fd=lfd, dst_dir_fd=pfd, follow_symlinks=False)
            if have is not None and have.type == "d":
                fsio.remove_at(pfd, name)
            os.replace(temp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=pfd)
            raise
        finally:
            os.close(lfd)

    def _set_dir_times(self, vol_fd: int) -> None:
        """Deepest first: setting a directory's mtime must come after its last change."""
        for entry in reversed(self.entries):
            if entry.type != "d":
                continue
            if entry.path == ROOT:
                if os.fstat(vol_fd).st_mtime_ns != entry.mtime_ns:
                    os.utime(vol_fd, ns=(entry.mtime_ns, entry.mtime_ns))
                continue
            parent, name = _split(entry.path)
            pfd = fsio.open_dir_chain(vol_fd, parent)
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if st.st_mtime_ns != entry.mtime_ns:
                    os.utime(name, ns=(st.st_atime_ns, entry.mtime_ns), dir_fd=pfd,
                             follow_symlinks=False)
            finally:
                os.close(pfd)


def _hash_if_in(paths: set[str]) -> HashPolicy:
    def should_hash(entry: ManifestEntry, have: Observed) -> bool:
        return entry.path in paths

    return should_hash


def _match_volumes(snapshot: Snapshot, targets: dict[str, Path]) -> None:
    missing = sorted(set(snapshot.manifests) - set(targets))
    unknown = sorted(set(targets) - set(snapshot.manifests))
    if missing or unknown:
        raise BadInput(
            f"the snapshot of {snapshot.info.app} holds volumes {sorted(snapshot.manifests)}; "
            f"missing: {missing or 'none'}, not in the snapshot: {unknown or 'none'}"
        )


def restore_snapshot(
    store_root: Path,
    app: str,
    volumes: dict[str, Path],
    *,
    paranoid: bool = False,
    allowed_root: Path | None = None,
) -> RestoreReport:
    """Make each volume equal the last-known-good, rewriting only what differs; then verify."""
    targets = resolve_volumes(store_root, volumes, allowed_root)
    failed = f"restore of {app} failed; its volumes stay marked dirty"
    with (
        locked(store_root, app) as where,
        os_errors_fail(failed),
        ThreadPoolExecutor(1, thread_name_prefix="snapshot-scan") as pool,
    ):
        # The volumes' (cold) lstat pass waits on the disk while this thread reads and
        # parses the manifest and the index; it only reads, so it may come before both.
        scans = {name: pool.submit(scan_volume, volume) for name, volume in sorted(targets.items())}
        remove_leftovers(where)
        snapshot = open_snapshot(where, app)
        _match_volumes(snapshot, targets)
        index = read_index(where)
        # Dirty first: a restore killed halfway must not leave the volumes marked clean.
        write_state(where, clean=False, manifest_sha256=None)
        total = _Counts()
        written: dict[str, set[str]] = {}
        restores: dict[str, VolumeRestore] = {}
        for name, volume in sorted(targets.items()):
            restores[name] = VolumeRestore(snapshot.volume_dir(name), volume,
                                           snapshot.manifests[name], paranoid=paranoid,
                                           index=index.get(name, EMPTY),
                                           scan=scans[name].result())
            counts = restores[name].run()
            total.rewritten += counts.rewritten
            total.created += counts.created
            total.removed += counts.removed
            total.metadata_fixed += counts.metadata_fixed
            total.bytes_written += counts.bytes_written
            written[name] = counts.written_files
        for device_path in {os.stat(v).st_dev: v for v in targets.values()}.values():
            fsio.sync_filesystem(device_path)
        problems: list[str] = []
        live: dict[str, VolumeIndex] = {}
        for name, volume in sorted(targets.items()):
            done = restores[name]
            checked = check_tree(
                volume,
                snapshot.manifests[name],
                should_hash=hash_all if paranoid else _hash_if_in(written[name]),
                label=f"{name}: ",
                # Paranoid: every entry is looked at again, not only what this restore touched.
                before=None if paranoid else done.seen,
                restat=done.needs_restat,
            )
            problems += checked.problems
            # Every file is now known to hold its digest: written and hashed just now, or
            # kept because the index vouched for it or because it hashed equal.
            live[name] = volume_index(checked.scanned_ns, snapshot.manifests[name], checked.seen)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckFailed(
                f"restore of {app} did not make the volumes equal the snapshot: {problems[0]}{more}"
            )
        write_index(where, live)
        write_state(where, clean=True, manifest_sha256=snapshot.info.manifest_sha256)
        report = RestoreReport(
            rewritten=total.rewritten,
            created=total.created,
            removed=total.removed,
            metadata_fixed=total.metadata_fixed,
            bytes_written=total.bytes_written,
            verified=True,
        )
        log.info("restored %s to snapshot %s: %s", app, snapshot.info.manifest_sha256[:12], report)
        return report


def verify_volumes(
    store_root: Path, app: str, volumes: dict[str, Path], *, paranoid: bool = False
) -> list[str]:
    """Differences between the live volumes and the last-known-good (empty: equal).

    Without `paranoid`, a file the live index vouches for (unchanged since it was last
    taken or restored) is not read; every other file is hashed. With it every file is.
    """
    targets = resolve_volumes(store_root, volumes, None)
    with locked(store_root, app) as where, os_errors_fail(f"comparing the volumes of {app} failed"):
        snapshot = open_snapshot(where, app)
        _match_volumes(snapshot, targets)
        index = {} if paranoid else read_index(where)
        problems: list[str] = []
        for name, volume in sorted(targets.items()):
            problems += _compare_live(volume, snapshot.manifests[name], index.get(name, EMPTY),
                                      label=f"{name}: ")
        return problems


def _compare_live(volume: Path, want: list[ManifestEntry], index: VolumeIndex,
                  label: str) -> list[str]:
    def unless_vouched(entry: ManifestEntry, have: Observed) -> bool:
        return index.vouched(entry.path, have) != entry.sha256

    return check_tree(volume, want, should_hash=unless_vouched, label=label).problems
