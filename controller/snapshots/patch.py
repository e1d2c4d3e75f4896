"""A replacing take that changes only what changed: the last generation's tree, patched in place.

A take replacing the last-known-good after a small change (an upgrade rewrote 1 % of the
files) would otherwise make one journal transaction per unchanged file: a hard link to it
in the new generation, and the old name's removal after. A patch instead moves the changed
entries in and out of the last generation's `volumes` tree by rename, moves that tree into
the new generation and swaps the link: its cost follows the changes, not the file count.

The last generation is the last-known-good until the swap, so every step is undoable:

1. every new file and symlink is staged in `<new>/stage/<slot>` (cloned or copied, hashed,
   its metadata set) and made durable; nothing of the last generation has changed yet;
2. `<new>/patch.json` (the plan) is written durably: each step (`remove`: the old entry to
   `<new>/stash/<slot>`; `mkdir`; `put`: the staged entry into place) and the directories
   whose metadata it sets, with their old metadata;
3. the steps run in order, the directories get their new metadata, one syncfs;
4. the touched entries are verified by lstat against the new manifest;
5. `<old>/volumes` moves to `<new>/volumes`, the new manifest and meta.json are written,
   and the caller swaps the link (the commit), then removes the old generation (by then
   its two metadata files) and the plan, stash and stage (`finish`).

Every step is one rename or mkdir, so whether it ran can be read off the disk: a `remove`
ran when its stash slot exists, a `put` when its stage slot is gone (staged entries are
durable before the plan exists, and nothing else moves them), a `mkdir` when the
directory exists. `settle`, called with the store locked before anything else touches it,
undoes a plan whose generation is not the last-known-good (in reverse order, then the old
directory metadata) and finishes one that is.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from controller.snapshots import fsio
from controller.snapshots.copy import hash_entries, remove_tree
from controller.snapshots.index import VolumeIndex
from controller.snapshots.jobs import thread_copier
from controller.snapshots.manifest import (
    ROOT,
    ManifestEntry,
    Observed,
    entry_from,
    metadata_differences,
    observe,
    parent_of,
    sort_key,
)
from controller.util import files
from controller.util.errors import CheckFailed

log = logging.getLogger(__name__)

PLAN_FILE = "patch.json"
STAGE_DIR = "stage"
STASH_DIR = "stash"
PLAN_FORMAT = 1
# Above this share of changed entries (and this many) a patch, which stages one file after
# another, saves little over a whole new generation, which copies in parallel.
MAX_CHANGED_FRACTION = 0.5
MIN_CHANGES_TO_REFUSE = 64

Kind = Literal["remove", "mkdir", "put"]


@dataclass(frozen=True)
class Step:
    kind: Kind
    volume: str
    path: str
    slot: str  # name in stash/ (remove) or stage/ (put); "" for mkdir


@dataclass(frozen=True)
class DirMeta:
    """A directory whose metadata the patch sets; `old` is (mode, uid, gid, mtime_ns) or None."""

    volume: str
    path: str
    old: tuple[int, int, int, int] | None


@dataclass
class VolumePatch:
    """One volume: its new manifest (digests of staged files still None) and what changes."""

    entries: list[ManifestEntry]
    seen: dict[str, Observed]  # the source scan
    scanned_ns: int
    removes: list[str]
    adds: list[str]  # new dirs, files and symlinks, pre-order
    dirs: list[str]  # directories whose metadata is set afterwards
    kept: int


def plan_volume(old: list[ManifestEntry], seen: dict[str, Observed], scanned_ns: int,
                index: VolumeIndex) -> VolumePatch | None:
    """Pure: what turns `old` into the scanned source; None when a patch does not apply.

    An unchanged file is one the live index vouches for whose manifest entry equals the old
    one (digest, size, mode, owner, mtime). Hard links (either side) and entries a snapshot
    cannot hold leave it to a whole new generation, which handles or refuses them.
    """
    if any(e.hardlink is not None for e in old):
        return None
    before = {e.path: e for e in old}
    entries: list[ManifestEntry] = []
    removes: list[str] = []
    adds: list[str] = []
    dirs: set[str] = set()
    kept = 0
    for path in sorted(seen, key=sort_key):
        have = seen[path]
        if have.type is None or (have.type == "f" and have.nlink > 1):
            return None
        was = before.get(path)
        if was is not None and _unchanged_file(was, have, index.vouched(path, have)):
            entries.append(was)  # the common case, spared building an equal entry
            kept += 1
            continue
        entry = entry_from(path, have, index.vouched(path, have))
        entries.append(entry)
        if was is not None and was.type == entry.type:
            if entry.type == "d":
                if was != entry:
                    dirs.add(path)
                continue
            if entry == was and (entry.type == "l" or entry.sha256 is not None):
                kept += 1
                continue
            removes.append(path)  # replaced: the old one goes to the stash first
        elif was is not None:
            removes.append(path)  # another type now
        adds.append(path)
        if entry.type == "d":
            dirs.add(path)
        dirs.add(parent_of(path))
    removes.extend(p for p in before if p not in seen)
    dirs.update(parent_of(p) for p in removes)
    if ROOT not in seen or seen[ROOT].type != "d":
        return None
    changes = len(removes) + len(adds)
    if changes > MIN_CHANGES_TO_REFUSE and changes > MAX_CHANGED_FRACTION * len(entries):
        return None
    touched = sorted((d for d in dirs if d in seen and seen[d].type == "d"), key=sort_key)
    return VolumePatch(entries, seen, scanned_ns, _outermost(removes), adds, touched, kept)


def _unchanged_file(was: ManifestEntry, have: Observed, vouched: str | None) -> bool:
    """Pure: entry_from(have, vouched) == was for a file, without building the entry."""
    return (
        vouched is not None
        and was.type == "f" == have.type
        and vouched == was.sha256
        and was.size == have.size
        and was.mtime_ns == have.mtime_ns
        and was.mode == have.mode
        and was.uid == have.uid
        and was.gid == have.gid
        and was.hardlink is None
    )


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths not below another of them (moving a directory moves its contents), deepest first."""
    chosen: list[str] = []
    for path in sorted(set(paths), key=sort_key):
        if chosen and path.startswith(chosen[-1] + "/"):
            continue
        chosen.append(path)
    return sorted(chosen, key=sort_key, reverse=True)


def _set_dir_metadata(fd: int, mode: int, uid: int, gid: int, mtime_ns: int) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    os.utime(fd, ns=(st.st_atime_ns, mtime_ns))


class Patch:
    """Patch `old`'s volumes tree into the new generation `new` (a fresh, unlinked directory)."""

    def __init__(self, old: Path, new: Path, volumes_dir: str,
                 volumes: Mapping[str, VolumePatch]) -> None:
        self.old, self.new, self.volumes_dir = old, new, volumes_dir
        self.volumes = dict(sorted(volumes.items()))
        self.steps: list[Step] = []
        self.staged: dict[tuple[str, str], int] = {}  # (volume, path) -> inode number
        self.how: dict[str, int] = defaultdict(int)

    def stage(self, sources: Mapping[str, Path]) -> dict[str, list[ManifestEntry]]:
        """Stage every new file and symlink and make them durable; the new manifests, digests filled."""
        os.mkdir(self.new / STAGE_DIR, 0o700)
        os.mkdir(self.new / STASH_DIR, 0o700)
        stage_fd = fsio.open_root(self.new / STAGE_DIR)
        manifests: dict[str, list[ManifestEntry]] = {}
        try:
            dst_dev = os.fstat(stage_fd).st_dev
            clones: list[tuple[str, tuple[int, int]]] = []
            shas: dict[str, str] = {}
            for volume, vp in self.volumes.items():
                wanted = {e.path: e for e in vp.entries}
                for path in vp.removes:
                    self.steps.append(Step("remove", volume, path, self._slot()))
                src_fd = fsio.open_root(sources[volume])
                try:
                    with fsio.DirCursor(src_fd) as cursor:
                        for path in vp.adds:
                            entry = wanted[path]
                            if entry.type == "d":
                                self.steps.append(Step("mkdir", volume, path, ""))
                                continue
                            slot = self._slot()
                            self.steps.append(Step("put", volume, path, slot))
                            pfd = cursor.fd_for(parent_of(path))
                            sha = self._stage_one(pfd, path, entry, vp.seen[path], stage_fd,
                                                  slot, dst_dev)
                            inode = os.stat(slot, dir_fd=stage_fd, follow_symlinks=False).st_ino
                            self.staged[(volume, path)] = inode
                            if sha is not None:
                                shas[slot] = sha
                            elif entry.type == "f":
                                clones.append((slot, (dst_dev, inode)))
                finally:
                    os.close(src_fd)
            shas.update(hash_entries(stage_fd, clones))
            slots = {(s.volume, s.path): s.slot for s in self.steps if s.kind == "put"}
            for volume, vp in self.volumes.items():
                # A staged file's digest is what was read from its own new inode (a replaced
                # file the index vouched for too: only its metadata may have changed).
                manifests[volume] = [
                    _with_sha(e, shas[slots[(volume, e.path)]])
                    if e.type == "f" and (volume, e.path) in slots else e
                    for e in vp.entries
                ]
        finally:
            os.close(stage_fd)
        fsio.sync_filesystem(self.new)
        return manifests

    def _slot(self) -> str:
        """A name in the stage or stash no other step uses: the step's number."""
        return str(len(self.steps))

    def _stage_one(self, src_pfd: int, path: str, entry: ManifestEntry, have: Observed,
                   stage_fd: int, slot: str, dst_dev: int) -> str | None:
        """Clone or copy one entry into the stage; a copied file's digest (a clone's: None)."""
        name = path.rpartition("/")[2]
        if entry.type == "l":
            assert entry.target is not None
            os.symlink(entry.target, slot, dir_fd=stage_fd)
            fsio.set_symlink_metadata(stage_fd, slot, entry, time.time_ns())
            self.how["symlink"] += 1
            return None
        sfd = fsio.open_file_at(src_pfd, name, path, have.inode)
        try:
            st = os.fstat(sfd)
            if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (have.size, have.mtime_ns,
                                                                 have.ctime_ns):
                raise CheckFailed(f"{path}: changed while being read")
            dfd = os.open(slot, fsio.READ_WRITE_CREATE, st.st_mode & 0o777,
                          dir_fd=stage_fd)
            try:
                sha: str | None
                if fsio.CLONES.clone(sfd, dfd, st.st_dev, dst_dev):
                    sha, how = None, "cloned"
                else:
                    sha, _ = thread_copier().copy(sfd, dfd, st)
                    how = "copied"
                fsio.set_fd_metadata(dfd, entry, st.st_atime_ns)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        self.how[how] += 1
        return sha

    def apply(self) -> None:
        """Write the plan, then change the old generation's tree step by step (undoable)."""
        dirs = [DirMeta(volume, path, _old_dir(self.old, self.volumes_dir, volume, path))
                for volume, vp in self.volumes.items() for path in vp.dirs]
        plan = {
            "format": PLAN_FORMAT,
            "from": self.old.name,
            "steps": [[s.kind, s.volume, s.path, s.slot] for s in self.steps],
            "dirs": [[d.volume, d.path, list(d.old) if d.old else None] for d in dirs],
        }
        files.write_durably(self.new / PLAN_FILE, json.dumps(plan).encode(), mode=0o600)
        with _Trees(self.old / self.volumes_dir, self.new) as trees:
            for step in self.steps:
                trees.do(step)
            for volume, vp in self.volumes.items():
                wanted = {e.path: e for e in vp.entries}
                for path in reversed(vp.dirs):  # deepest first: a child's change moves its mtime
                    e = wanted[path]
                    fd = fsio.open_dir_chain(trees.volume(volume), path)
                    try:
                        _set_dir_metadata(fd, e.mode, e.uid, e.gid, e.mtime_ns)
                    finally:
                        os.close(fd)
        fsio.sync_filesystem(self.new)

    def verify(self, manifests: Mapping[str, list[ManifestEntry]]) -> None:
        """lstat what the patch touched against the new manifest; list every touched directory."""
        problems: list[str] = []
        for volume, vp in self.volumes.items():
            root_fd = fsio.open_root(self.old / self.volumes_dir / volume)
            try:
                problems.extend(_verify_volume(root_fd, volume, vp, manifests[volume],
                                               self.staged))
            finally:
                os.close(root_fd)
        if problems:
            raise CheckFailed(f"the patched snapshot does not verify: {problems[0]}")

    def move_volumes(self) -> None:
        """The patched tree becomes the new generation's (the old one keeps only its metadata)."""
        os.rename(self.old / self.volumes_dir, self.new / self.volumes_dir)
        files.fsync_path(self.old)
        files.fsync_path(self.new)


def _with_sha(entry: ManifestEntry, sha: str) -> ManifestEntry:
    return replace(entry, sha256=sha)


def _old_dir(old: Path, volumes_dir: str, volume: str, path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(old / volumes_dir / volume / path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns


def _verify_volume(root_fd: int, volume: str, vp: VolumePatch, entries: list[ManifestEntry],
                   staged: Mapping[tuple[str, str], int]) -> list[str]:
    wanted = {e.path: e for e in entries}
    touched = set(vp.dirs)
    children: dict[str, set[str]] = {d: set() for d in touched}
    for e in entries:
        if e.path != ROOT and parent_of(e.path) in touched:
            children[parent_of(e.path)].add(e.path.rpartition("/")[2])
    problems: list[str] = []
    with fsio.DirCursor(root_fd) as cursor:
        for path in sorted(touched.union(vp.adds), key=sort_key):
            if path == ROOT:
                have: Observed | None = observe(os.fstat(root_fd))
            else:
                have = fsio.observe_at(cursor.fd_for(parent_of(path)), path.rpartition("/")[2])
            if have is None:
                problems.append(f"{volume}: {path}: missing")
                continue
            problems.extend(f"{volume}: {path}: {d}" for d in metadata_differences(wanted[path], have))
            inode = staged.get((volume, path))
            if inode is not None and have.inode[1] != inode:
                problems.append(f"{volume}: {path}: not the file staged for it")
            if path in touched and have.type == "d":
                fd = cursor.fd_for(path)
                listed = set(os.listdir(fd))
                if listed != children[path]:
                    extra = sorted(listed - children[path])
                    missing = sorted(children[path] - listed)
                    problems.append(f"{volume}: {path}: lists {extra} beyond and lacks {missing}")
    return problems


class _Trees:
    """Descriptors of the old generation's volume roots and the new one's stage and stash."""

    def __init__(self, volumes: Path, new: Path) -> None:
        self.volumes_path = volumes
        self.roots: dict[str, int] = {}
        self.stage = fsio.open_root(new / STAGE_DIR)
        try:
            self.stash = fsio.open_root(new / STASH_DIR)
        except BaseException:
            os.close(self.stage)
            raise

    def __enter__(self) -> _Trees:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.stage, self.stash, *self.roots.values()):
            os.close(fd)

    def volume(self, name: str) -> int:
        if name not in self.roots:
            self.roots[name] = fsio.open_root(self.volumes_path / name)
        return self.roots[name]

    def parent(self, step: Step) -> tuple[int, str]:
        """The open parent directory of the step's path (the caller closes it) and the name."""
        return fsio.open_dir_chain(self.volume(step.volume), parent_of(step.path)), \
            step.path.rpartition("/")[2]

    def do(self, step: Step) -> None:
        pfd, name = self.parent(step)
        try:
            if step.kind == "remove":
                os.rename(name, step.slot, src_dir_fd=pfd, dst_dir_fd=self.stash)
            elif step.kind == "mkdir":
                os.mkdir(name, 0o700, dir_fd=pfd)
            else:
                os.rename(step.slot, name, src_dir_fd=self.stage, dst_dir_fd=pfd)
        finally:
            os.close(pfd)

    def undo(self, step: Step) -> None:
        """Undo `step` when it ran; what did not run is left alone."""
        if step.kind == "remove":
            if fsio.lstat_at(self.stash, step.slot) is None:
                return
            pfd, name = self.parent(step)
            try:
                os.rename(step.slot, name, src_dir_fd=self.stash, dst_dir_fd=pfd)
            finally:
                os.close(pfd)
        elif step.kind == "put":
            if fsio.lstat_at(self.stage, step.slot) is not None:
                return
            pfd, name = self.parent(step)
            try:
                os.rename(name, step.slot, src_dir_fd=pfd, dst_dir_fd=self.stage)
            finally:
                os.close(pfd)
        else:
            try:
                pfd, name = self.parent(step)
            except FileNotFoundError:
                return  # its parent was never made
            try:
                st = fsio.lstat_at(pfd, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=pfd)
            finally:
                os.close(pfd)


def _read_plan(generation: Path) -> dict[str, Any] | None:
    try:
        data = fsio.read_capped(generation / PLAN_FILE, 64 << 20)
    except FileNotFoundError:
        return None
    try:
        plan: dict[str, Any] = json.loads(data)
        if plan["format"] != PLAN_FORMAT or not isinstance(plan["from"], str):
            raise ValueError("format")
        plan["steps"] = [Step(k, v, p, s) for k, v, p, s in plan["steps"]]
        if any(step.kind not in ("remove", "mkdir", "put") for step in plan["steps"]):
            raise ValueError("a step of an unknown kind")
        plan["dirs"] = [DirMeta(v, p, tuple(old) if old else None) for v, p, old in plan["dirs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckFailed(f"{generation / PLAN_FILE}: unreadable ({exc}); an interrupted take "
                          "left its last-known-good half patched and needs an operator") from exc
    return plan


def undo(old: Path, new: Path, volumes_dir: str) -> None:
    """Put the old generation back exactly as it was before `new`'s patch began."""
    plan = _read_plan(new)
    if plan is None:
        return
    if not (old / volumes_dir).exists() and (new / volumes_dir).exists():
        os.rename(new / volumes_dir, old / volumes_dir)
    with _Trees(old / volumes_dir, new) as trees:
        for step in reversed(plan["steps"]):
            trees.undo(step)
        for meta in reversed(plan["dirs"]):
            if meta.old is None:
                continue
            fd = fsio.open_dir_chain(trees.volume(meta.volume), meta.path)
            try:
                _set_dir_metadata(fd, *meta.old)
            finally:
                os.close(fd)
    fsio.sync_filesystem(old)
    os.unlink(new / PLAN_FILE)  # the rest of `new` is an unlinked generation: a leftover
    files.fsync_path(new)
    log.info("snapshot store %s: undid the interrupted patch of %s", old.parent, old.name)


def finish(new: Path) -> None:
    """After the swap: drop the stash (the old entries) and the empty stage, then the plan."""
    for name in (STASH_DIR, STAGE_DIR):
        if (new / name).exists():
            remove_tree(new / name)
    (new / PLAN_FILE).unlink(missing_ok=True)
    files.fsync_path(new)


def settle(where: Path, current: str | None, volumes_dir: str) -> None:
    """Undo or finish what an interrupted patch left (the store locked, nothing else run yet)."""
    for name in sorted(fsio.iter_dir_names(where)):
        generation = where / name
        if not (generation / PLAN_FILE).is_file():
            continue
        if name == current:
            finish(generation)
            continue
        plan = _read_plan(generation)
        assert plan is not None
        if plan["from"] == current:
            undo(where / plan["from"], generation, volumes_dir)
