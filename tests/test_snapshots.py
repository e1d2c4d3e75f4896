"""Snapshots: exact raw copies, incremental restores, escapes refused, disk guard, store state."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.snapshots import (
    ManifestEntry,
    RestoreReport,
    current_snapshot,
    fsio,
    mark_volumes_clean,
    mark_volumes_dirty,
    patch,
    restore_snapshot,
    snapshot_manifest,
    take_snapshot,
    verify_snapshot,
    verify_volumes,
    volume_manifest,
    volumes_clean,
)
from controller.snapshots import copy as snapshot_copy
from controller.snapshots import space as snapshot_space
from controller.snapshots import store as snapshot_store
from controller.snapshots.check import tree_differences
from controller.snapshots.copy import linkable
from controller.snapshots.index import VolumeIndex
from controller.snapshots.jobs import WORKERS, Jobs
from controller.snapshots.layout import LAST_KNOWN_GOOD, MANIFEST_FILE, forget_manifests
from controller.snapshots.manifest import (
    Observed,
    check_entries,
    entry_to_json,
    group_hardlinks,
    parse_manifest,
    render_manifest,
)
from controller.snapshots.restore import VolumeRestore, decide
from controller.util.errors import BadInput, CheckFailed
from tests.snapshot_helpers import (
    APP,
    COMMIT_A,
    COMMIT_B,
    FIXED_NS,
    build_bulk_tree,
    build_rich_tree,
    generation_dirs,
    link_target,
    manifest_lines,
    rewrite_manifest,
    spawn,
    tree_digest,
    wait_past_racy_window,
    write,
)

EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
LATIN1_NAME = os.fsdecode(b"caf\xe9-latin1")


@pytest.fixture
def store(snapshot_place: Path) -> Path:
    return snapshot_place / "store"


@pytest.fixture
def volume(snapshot_place: Path) -> Path:
    root = snapshot_place / "volumes" / "data"
    build_rich_tree(root)
    write(root / LATIN1_NAME, b"non-UTF-8 name")
    os.utime(root / LATIN1_NAME, ns=(FIXED_NS, FIXED_NS))
    os.utime(root, ns=(FIXED_NS, FIXED_NS))
    return root


def by_path(entries: list[ManifestEntry]) -> dict[str, ManifestEntry]:
    return {e.path: e for e in entries}


def inode(path: Path) -> int:
    return os.lstat(path).st_ino


# -- take -------------------------------------------------------------------------------------


@pytest.mark.parametrize("copier", ["threads", "worker processes"])
def test_take_copies_every_kind_of_entry_exactly(
    store: Path, volume: Path, copier: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A first take of a large volume hands its files to worker processes (here from the
    first file on); what they copy is exactly what the controller's own threads copy."""
    if copier == "worker processes":
        monkeypatch.setattr(snapshot_copy, "PROCESS_AFTER", 0)
    with caplog.at_level(logging.INFO, logger="controller.snapshots"):
        info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A, run_id="r-1")

    handed = re.search(r"(\d+) of (\d+) files and symlinks went to \d+ worker processes",
                       caplog.text)
    if copier == "threads":
        assert handed is None
    else:  # every file and symlink (hard-linked ones are copied after the walk, here)
        assert handed is not None and handed[1] == handed[2] and int(handed[1]) > 10

    assert info.path == store / APP / "last-known-good"
    assert (info.commit, info.taken_by_run) == (COMMIT_A, "r-1")
    manifest = snapshot_manifest(store, APP)["data"]
    entries = by_path(manifest)
    assert entries["bin/tool"].mode == 0o4755
    assert (entries["tmp"].type, entries["tmp"].mode) == ("d", 0o1777)
    assert (entries["data/db/file"].uid, entries["data/db/file"].gid) == (999, 999)
    assert (entries["data/pg/pgdata"].uid, entries["data/pg"].gid) == (70, 70)
    assert (entries["dangling"].type, entries["dangling"].target, entries["dangling"].uid) == (
        "l", "does/not/exist", 999)
    assert entries["absolute"].target == "/etc/hostname"
    assert entries["data/empty.bin"].sha256 == EMPTY_SHA
    assert entries["empty/nested/deeper"].type == "d"
    assert entries["hl/one"].hardlink == entries["hl/sub/two"].hardlink == "hl/one"
    assert entries["data/big.bin"].size == 3 << 20
    assert entries[LATIN1_NAME].type == "f"
    assert all(e.mtime_ns == FIXED_NS for e in manifest)
    # The manifest is what the volume is, and the stored copy is the same tree.
    copy = info.path / "volumes" / "data"
    assert volume_manifest(volume) == manifest
    assert volume_manifest(copy) == manifest
    assert os.stat(copy / "hl/one").st_ino == os.stat(copy / "hl/sub/two").st_ino
    sparse = os.stat(copy / "data/sparse.img")
    assert sparse.st_size == 32 << 20 and sparse.st_blocks * 512 < 1 << 20
    assert info.volumes == {"data": {"files": 17, "bytes": sum(
        e.size for e in manifest if e.type == "f" and e.path != "hl/sub/two")}}
    assert verify_snapshot(store, APP) == info
    assert current_snapshot(store, APP) == info


def test_a_worker_process_killed_mid_take_fails_it_with_a_sentence_and_keeps_nothing(
    store: Path, snapshot_place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault: SIGKILL to a worker process right after the third batch went to the pool
    (of the ~260 batches of a 3000-file volume)."""
    volume = snapshot_place / "bulk"
    build_bulk_tree(volume, files=3000, large=1, large_bytes=1 << 20)
    monkeypatch.setattr(snapshot_copy, "PROCESS_AFTER", 0)
    real = Jobs.submit_elsewhere
    handed = 0

    def submit(self: Jobs[Any], pool: Any, *args: Any) -> None:
        nonlocal handed
        real(self, pool, *args)
        handed += 1
        if handed == 3:
            os.kill(next(iter(pool._processes.values())).pid, signal.SIGKILL)

    monkeypatch.setattr(Jobs, "submit_elsewhere", submit)
    with pytest.raises(CheckFailed, match="a worker process copying it ended unexpectedly"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)

    assert current_snapshot(store, APP) is None
    assert generation_dirs(store) == []
    monkeypatch.setattr(Jobs, "submit_elsewhere", real)
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)


def test_new_take_replaces_the_old_generation(store: Path, volume: Path) -> None:
    first = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    old_generation = link_target(store)
    write(volume / "added", b"more data")

    second = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)

    assert second.commit == COMMIT_B and second.manifest_sha256 != first.manifest_sha256
    assert generation_dirs(store) == [link_target(store)] != [old_generation]
    assert sorted(os.listdir(store / APP)) == sorted(
        [".lock", "last-known-good", "live-index.json", "volumes-state.json", link_target(store)])
    assert verify_snapshot(store, APP) == second


def _first_take_settled(store: Path, volume: Path) -> Path:
    """Take the first snapshot once every file is past the racy window (so the live index
    vouches for all of them); return its volume's directory in the generation."""
    wait_past_racy_window(volume)
    first = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    return first.path.resolve() / "volumes/data"


def test_a_replacing_take_links_unchanged_files_and_outlives_the_older_generation(
    store: Path, volume: Path
) -> None:
    old = _first_take_settled(store, volume)
    kept, changed = inode(old / "data/keep.bin"), inode(old / "cache/b")
    write(volume / "cache/b", b"changed")

    second = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)

    new = second.path.resolve() / "volumes/data"
    assert not old.exists() and generation_dirs(store) == [link_target(store)]
    # The unchanged file is the older generation's inode, now under the new name only.
    assert inode(new / "data/keep.bin") == kept and os.stat(new / "data/keep.bin").st_nlink == 1
    assert inode(new / "cache/b") != changed
    # Hard-link groups are copied, never linked across generations.
    assert os.stat(new / "hl/one").st_nlink == 2
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)
    assert verify_snapshot(store, APP) == second


def test_the_manifest_a_take_keeps_in_memory_is_what_parsing_its_file_gives(
    store: Path, volume: Path
) -> None:
    forget_manifests()
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    written = parse_manifest((info.path / MANIFEST_FILE).read_bytes())

    # Served from memory (the take remembered it), then parsed from the file again.
    assert snapshot_manifest(store, APP) == written
    forget_manifests()
    assert snapshot_manifest(store, APP) == written


def test_a_manifest_changed_on_disk_is_parsed_again_and_decides_what_is_linked(
    store: Path, volume: Path
) -> None:
    kept = inode(_first_take_settled(store, volume) / "data/keep.bin")
    lines = manifest_lines(store)
    for line in lines:
        if line["path"] == "data/keep.bin":
            line["sha256"] = "0" * 64
    rewrite_manifest(store, APP, lines)

    # The remembered entries of the first take no longer match the file: they are not used.
    assert next(e for e in snapshot_manifest(store, APP)["data"]
                if e.path == "data/keep.bin").sha256 == "0" * 64
    second = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)

    assert inode(second.path.resolve() / "volumes/data/data/keep.bin") != kept
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)
    assert verify_snapshot(store, APP) == second


def test_a_restore_never_shares_an_inode_with_the_snapshot(
    store: Path, volume: Path, snapshot_place: Path
) -> None:
    wait_past_racy_window(volume)
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    write(volume / "data/keep.bin", b"upgraded")
    (volume / "docs/readme.txt").unlink()
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)  # links what is unchanged
    stored = store / APP / LAST_KNOWN_GOOD / "volumes/data"
    snapshot_inodes = {os.lstat(p).st_ino for p in stored.rglob("*") if p.is_file()}
    write(volume / "cache/b", b"changed after the take")
    empty = snapshot_place / "fresh"
    empty.mkdir()

    restore_snapshot(store, APP, {"data": volume})
    restore_snapshot(store, APP, {"data": empty})

    for root in (volume, empty):
        restored = {os.lstat(p).st_ino for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
        assert restored and not restored & snapshot_inodes
        assert volume_manifest(root) == snapshot_manifest(store, APP)["data"]


def test_take_refuses_bad_names_and_paths(store: Path, volume: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="volume name"):
        take_snapshot(store, APP, {"../x": volume}, commit=COMMIT_A)
    with pytest.raises(BadInput, match="40-hex"):
        take_snapshot(store, APP, {"data": volume}, commit="HEAD")
    with pytest.raises(BadInput, match="app name"):
        take_snapshot(store, "../evil", {"data": volume}, commit=COMMIT_A)
    with pytest.raises(BadInput, match="not an existing directory"):
        take_snapshot(store, APP, {"data": tmp_path / "nope"}, commit=COMMIT_A)
    with pytest.raises(BadInput, match="overlaps the snapshot store"):
        take_snapshot(volume / "store", APP, {"data": volume}, commit=COMMIT_A)
    assert not (store / APP).exists()


def test_take_refuses_a_fifo(store: Path, volume: Path) -> None:
    os.mkfifo(volume / "pipe")
    with pytest.raises(CheckFailed, match="pipe: a fifo or device node"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    assert generation_dirs(store) == []
    assert current_snapshot(store, APP) is None


def test_allowed_root_refuses_volumes_outside_it(store: Path, volume: Path, tmp_path: Path) -> None:
    engine_root = tmp_path / "engine"
    inside = engine_root / "volumes" / "x" / "_data"
    inside.mkdir(parents=True)
    (engine_root / "sneaky").symlink_to(volume)
    with pytest.raises(BadInput, match="refuse a volume path outside the engine's data root"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A, allowed_root=engine_root)
    with pytest.raises(BadInput, match="outside the engine's data root"):
        take_snapshot(store, APP, {"data": engine_root / "sneaky"}, commit=COMMIT_A,
                      allowed_root=engine_root)
    take_snapshot(store, APP, {"data": inside}, commit=COMMIT_A, allowed_root=engine_root)
    with pytest.raises(BadInput, match="outside the engine's data root"):
        restore_snapshot(store, APP, {"data": volume}, allowed_root=engine_root)


# -- restore ----------------------------------------------------------------------------------


def test_restore_undoes_an_upgrade_and_rewrites_only_what_differs(store: Path, volume: Path) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    untouched = {p: inode(volume / p) for p in ("data/keep.bin", "data/big.bin", "hl/one")}
    # What a failed upgrade does to a volume:
    write(volume / "added.txt", b"new")                          # removed: 1
    write(volume / "newdir/x", b"new")                           # removed: 2 (newdir, x)
    (volume / "docs/readme.txt").unlink()                        # created: 1, docs mtime fixed
    (volume / "config/app.conf").write_bytes(b"setting = 22\n")  # rewritten (size changed)
    os.chmod(volume / "bin/tool", 0o755)                         # metadata fixed
    os.chown(volume / "data/db/file", 0, 0)                      # metadata fixed
    (volume / "link-me.txt").unlink()                            # rewritten: symlink -> file
    (volume / "link-me.txt").symlink_to("/etc/hostname")
    shutil.rmtree(volume / "cache")                              # created: cache/a, a/1, b
    write(volume / "cache", b"a file where a dir was")           # rewritten, removed: 3
    (volume / "hl/sub/two").unlink()                             # hard link broken: rewritten
    write(volume / "hl/sub/two", b"shared inode\n", 0o640, (999, 70))  # and hl/sub mtime fixed

    report = restore_snapshot(store, APP, {"data": volume})

    assert report == RestoreReport(
        rewritten=4, created=4, removed=3, metadata_fixed=5,
        bytes_written=len(b"read me\n" b"setting = 1\n" b"I will become a symlink\n" b"one" b"two"),
        verified=True,
    )
    assert volume_manifest(volume) == snapshot_manifest(store, APP)["data"]
    assert {p: inode(volume / p) for p in untouched} == untouched
    assert inode(volume / "hl/one") == inode(volume / "hl/sub/two")
    assert verify_volumes(store, APP, {"data": volume}, paranoid=True) == []
    assert volumes_clean(store, APP)
    # Nothing left to do: a second restore touches nothing.
    assert restore_snapshot(store, APP, {"data": volume}) == RestoreReport(0, 0, 0, 0, 0, True)


def test_an_edit_keeping_size_and_mtime_is_caught_by_its_ctime(store: Path, volume: Path) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    stealth = volume / "data/stealth.bin"
    original = stealth.read_bytes()
    stealth.write_bytes(bytes(len(original)))
    os.utime(stealth, ns=(FIXED_NS, FIXED_NS))

    # The write moved its ctime, so the live index no longer vouches for it: it is hashed.
    [difference] = verify_volumes(store, APP, {"data": volume})
    assert difference.startswith("data: data/stealth.bin: content differs")
    report = restore_snapshot(store, APP, {"data": volume})

    assert report == RestoreReport(1, 0, 0, 0, len(original), True)
    assert stealth.read_bytes() == original
    assert verify_volumes(store, APP, {"data": volume}) == []


def forge_index_row(store: Path, volume: str, path: str, live: Path) -> None:
    """Make the live index vouch for `live` as it is now: what an edit that kept its ctime
    too (a clock stepped back, a write below the filesystem) would look like."""
    index_file = store / APP / "live-index.json"
    doc = json.loads(index_file.read_text())
    st = os.lstat(live)
    row = doc["volumes"][volume]["rows"][path]
    row[:5] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    doc["volumes"][volume]["scanned_ns"] = st.st_ctime_ns + 10**9
    index_file.write_text(json.dumps(doc))


def test_only_paranoid_sees_an_edit_the_live_index_vouches_for(store: Path, volume: Path) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    stealth = volume / "data/stealth.bin"
    original = stealth.read_bytes()
    stealth.write_bytes(bytes(len(original)))
    os.utime(stealth, ns=(FIXED_NS, FIXED_NS))
    forge_index_row(store, "data", "data/stealth.bin", stealth)

    assert verify_volumes(store, APP, {"data": volume}) == []
    assert restore_snapshot(store, APP, {"data": volume}) == RestoreReport(0, 0, 0, 0, 0, True)
    assert stealth.read_bytes() != original
    [difference] = verify_volumes(store, APP, {"data": volume}, paranoid=True)
    assert difference.startswith("data: data/stealth.bin: content differs")

    report = restore_snapshot(store, APP, {"data": volume}, paranoid=True)

    assert report == RestoreReport(1, 0, 0, 0, len(original), True)
    assert stealth.read_bytes() == original
    assert volume_manifest(volume) == snapshot_manifest(store, APP)["data"]


@pytest.mark.parametrize("hard_links", [True, False], ids=["linking", "patching"])
def test_a_take_links_what_the_live_index_vouches_for_and_paranoid_reads_everything(
    store: Path, volume: Path, hard_links: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """With a hard-link pair in the tree the take links a new generation to the last one;
    without, it patches the last one in place and keeps the file there. Either way unread."""
    if not hard_links:
        (volume / "hl/sub/two").unlink()
    first = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    old_copy = first.path.resolve() / "volumes/data/data/stealth.bin"
    old_inode, old_bytes = inode(old_copy), old_copy.read_bytes()
    stealth = volume / "data/stealth.bin"
    stealth.write_bytes(bytes(len(stealth.read_bytes())))
    os.utime(stealth, ns=(FIXED_NS, FIXED_NS))
    forge_index_row(store, "data", "data/stealth.bin", stealth)

    with caplog.at_level(logging.INFO, logger="controller.snapshots"):
        second = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)

    assert ("patched the last in place" in caplog.text) is not hard_links
    # The forged row is believed: the file stays the last generation's copy, unread.
    # The snapshot stays honest about what it holds (the old bytes under their own digest,
    # so it verifies), but it is not the volume as it is now.
    new_copy = second.path.resolve() / "volumes/data/data/stealth.bin"
    assert inode(new_copy) == old_inode and new_copy.read_bytes() == old_bytes
    assert snapshot_manifest(store, APP)["data"] != volume_manifest(volume)
    verify_snapshot(store, APP)
    third = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A, paranoid=True)
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)
    paranoid_copy = third.path.resolve() / "volumes/data/data/stealth.bin"
    assert paranoid_copy.read_bytes() == stealth.read_bytes() != old_bytes
    verify_snapshot(store, APP)


def shared_extents(path: Path) -> bool:
    """Whether the file shares any extent with another (FIEMAP's shared flag)."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True)
    return "shared" in out.stdout


def test_on_xfs_take_and_restore_clone_instead_of_copying(xfs_tmp: Path) -> None:
    store, volume = xfs_tmp / "store", xfs_tmp / "volumes" / "data"
    build_rich_tree(volume, big_bytes=32 << 20)
    big = "data/big.bin"
    assert not shared_extents(volume / big)

    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)

    assert shared_extents(volume / big) and shared_extents(info.path / "volumes/data" / big)
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)
    verify_snapshot(store, APP)
    (volume / big).unlink()
    report = restore_snapshot(store, APP, {"data": volume})
    assert report.created == 1 and shared_extents(volume / big)
    assert volume_manifest(volume) == snapshot_manifest(store, APP)["data"]


def test_on_xfs_copy_file_range_clones_where_ficlone_refuses_two_mounts(
    xfs_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels before 5.18 refuse FICLONE between two mounts of one filesystem (EXDEV)."""
    real_ioctl = fcntl.ioctl

    def ioctl(fd: int, request: int, *args: Any) -> Any:
        if request == fsio.FICLONE:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_ioctl(fd, request, *args)

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    monkeypatch.setattr(fsio, "CLONES", fsio.CloneSupport())
    store, volume = xfs_tmp / "store", xfs_tmp / "volumes" / "data"
    build_rich_tree(volume, big_bytes=8 << 20)

    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)

    assert shared_extents(info.path / "volumes/data/data/big.bin")
    verify_snapshot(store, APP)


def test_on_xfs_clones_are_hashed_from_the_disk_in_windows_and_a_failed_read_leaks_nothing(
    xfs_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A take's clones are hashed READ_AHEAD at a time, their reads queued together; an I/O
    error in the middle of a window discards the take and leaves no descriptor open."""
    store, volume = xfs_tmp / "store", xfs_tmp / "volumes" / "data"
    _random_files(volume, 3 * fsio.READ_AHEAD + 5, 4096)
    queued: list[int] = []
    real_read_ahead, real_hash = fsio.read_ahead, fsio.hash_fd
    monkeypatch.setattr(fsio, "read_ahead", lambda fds, **kw: (queued.append(len(fds)), real_read_ahead(fds, **kw)))

    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)

    assert max(queued) == fsio.READ_AHEAD and sum(queued) >= 3 * fsio.READ_AHEAD + 5
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)
    assert shared_extents(info.path / "volumes/data/blob0")
    before = _generation_identity(store)
    _random_files(volume, 3 * fsio.READ_AHEAD + 5, 4096)  # new content: every file is cloned again
    hashed: list[int] = []

    def failing_hash(fd: int, buf: bytearray, **kw: Any) -> str:
        hashed.append(fd)
        if len(hashed) == fsio.READ_AHEAD + 3:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_hash(fd, buf, **kw)

    monkeypatch.setattr(fsio, "hash_fd", failing_hash)
    fds = open_fds()
    with pytest.raises(CheckFailed, match=r"failed and was discarded.*Input/output error"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B, paranoid=False)
    assert open_fds() == fds
    assert _generation_identity(store) == before and generation_dirs(store) == [before[0]]
    monkeypatch.setattr(fsio, "hash_fd", real_hash)
    verify_snapshot(store, APP)


def test_restore_fills_an_empty_volume(store: Path, volume: Path, snapshot_place: Path) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    empty = snapshot_place / "fresh"
    empty.mkdir()

    report = restore_snapshot(store, APP, {"data": empty})

    manifest = snapshot_manifest(store, APP)["data"]
    assert report.created == len(manifest) - 1 and report.rewritten == report.removed == 0
    assert volume_manifest(empty) == manifest
    assert os.stat(empty / "data/sparse.img").st_blocks * 512 < 1 << 20


def test_restore_needs_exactly_the_snapshot_volumes(store: Path, volume: Path, snapshot_place: Path) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    other = snapshot_place / "other"
    other.mkdir()
    with pytest.raises(BadInput, match="not in the snapshot: \\['db'\\]"):
        restore_snapshot(store, APP, {"data": volume, "db": other})
    with pytest.raises(BadInput, match="missing: \\['data'\\]"):
        restore_snapshot(store, APP, {"db": other})
    with pytest.raises(CheckFailed, match="no last-known-good"):
        restore_snapshot(store, "warm-other", {"data": volume})


def test_restore_reports_a_damaged_snapshot_file(store: Path, volume: Path) -> None:
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    stored = info.path / "volumes/data/config/app.conf"
    stored.write_bytes(b"setting = 9\n")  # same size
    (volume / "config/app.conf").unlink()
    with pytest.raises(CheckFailed, match=r"config/app.conf does not match its manifest"):
        restore_snapshot(store, APP, {"data": volume})
    assert not volumes_clean(store, APP)
    assert not [n for n in os.listdir(volume / "config") if n.startswith(".ccci-tmp")]


# -- escapes ----------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    root = tmp_path / "outside"
    write(root / "precious", b"must not change")
    return root


def test_restore_replaces_a_symlinked_dir_without_writing_outside(
    store: Path, volume: Path, outside: Path
) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    before = tree_digest(outside)
    shutil.rmtree(volume / "docs")
    (volume / "docs").symlink_to(outside)  # docs/readme.txt would now land outside

    report = restore_snapshot(store, APP, {"data": volume})

    assert tree_digest(outside) == before
    assert (report.rewritten, report.created) == (1, 1)
    assert volume_manifest(volume) == snapshot_manifest(store, APP)["data"]


def test_restore_refuses_a_manifest_entry_below_a_symlink(
    store: Path, volume: Path, outside: Path
) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    lines = manifest_lines(store)
    evil_link = {**lines[1], "path": "escape", "type": "l", "target": str(outside),
                 "sha256": None, "size": len(str(outside))}
    evil_file = {**next(line for line in lines if line["path"] == "data/keep.bin"),
                 "path": "escape/precious"}
    rewrite_manifest(store, APP, [*lines, evil_link, evil_file])
    before_outside, before_volume = tree_digest(outside), tree_digest(volume)

    with pytest.raises(CheckFailed, match="'escape/precious' has no directory parent"):
        restore_snapshot(store, APP, {"data": volume})

    assert tree_digest(outside) == before_outside
    assert tree_digest(volume) == before_volume


@pytest.mark.parametrize("path", ["../evil", "/tmp/evil", "docs/../../evil", "docs//x", ""])
def test_restore_refuses_manifest_paths_that_escape(store: Path, volume: Path, path: str) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    lines = manifest_lines(store)
    evil = {**next(line for line in lines if line["path"] == "data/keep.bin"), "path": path}
    rewrite_manifest(store, APP, [*lines, evil])
    before = tree_digest(volume)
    with pytest.raises(CheckFailed, match="would escape the volume"):
        restore_snapshot(store, APP, {"data": volume})
    assert tree_digest(volume) == before


def test_restore_stops_when_a_parent_turns_into_a_symlink_midway(
    store: Path, volume: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    (volume / "docs/readme.txt").unlink()
    before = tree_digest(outside)
    original = VolumeRestore._restore_entry

    def swap_then_restore(self: VolumeRestore, entry: ManifestEntry, *args: object) -> None:
        if entry.path == "docs/readme.txt":  # after the scan and after docs was checked
            os.rename(volume / "docs", volume / "docs.moved")
            (volume / "docs").symlink_to(outside)
        original(self, entry, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(VolumeRestore, "_restore_entry", swap_then_restore)
    with pytest.raises(CheckFailed, match="docs: is a symlink or not a directory; refusing"):
        restore_snapshot(store, APP, {"data": volume})
    assert tree_digest(outside) == before
    assert not volumes_clean(store, APP)


# -- verify -----------------------------------------------------------------------------------


def test_verify_snapshot_names_the_first_difference(store: Path, volume: Path) -> None:
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    stored = info.path / "volumes/data/data/keep.bin"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    os.utime(stored, ns=(FIXED_NS, FIXED_NS))
    with pytest.raises(CheckFailed, match=r"data: data/keep.bin: content differs"):
        verify_snapshot(store, APP)
    (info.path / "volumes/data/docs/readme.txt").unlink()
    os.utime(info.path / "volumes/data/docs", ns=(FIXED_NS, FIXED_NS))
    with pytest.raises(CheckFailed, match=r"data: docs/readme.txt: missing"):
        verify_snapshot(store, APP)
    manifest = info.path / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes().replace(b'"0600"', b'"0666"', 1))
    with pytest.raises(CheckFailed, match="does not match the digest"):
        verify_snapshot(store, APP)


def test_verify_snapshot_without_a_snapshot_fails(store: Path) -> None:
    with pytest.raises(CheckFailed, match="no last-known-good"):
        verify_snapshot(store, APP)
    assert current_snapshot(store, APP) is None


# -- disk guard -------------------------------------------------------------------------------


def _generation_identity(store: Path) -> tuple[str, int, str]:
    generation = store / APP / link_target(store)
    info = current_snapshot(store, APP)
    assert info is not None
    return generation.name, os.stat(generation).st_ino, info.manifest_sha256


def test_low_disk_refuses_before_writing(
    store: Path, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    before = _generation_identity(store)
    listing = sorted(os.listdir(store / APP))
    monkeypatch.setattr(snapshot_space, "_free_bytes", lambda path: 1 << 20)
    write(volume / "added", b"x")

    with pytest.raises(CheckFailed, match=r"a copy needs [\d.]+ MiB.*only 1.0 MiB is free"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)

    assert _generation_identity(store) == before
    assert sorted(os.listdir(store / APP)) == listing
    verify_snapshot(store, APP)


def test_the_disk_guard_skips_its_scan_only_where_the_whole_filesystem_would_fit(
    store: Path, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = snapshot_space.filesystem_bound(volume)
    assert bound is not None and bound >= snapshot_space.disk_usage(volume)
    scanned: list[Path] = []
    real_usage = snapshot_space.disk_usage
    monkeypatch.setattr(snapshot_space, "disk_usage", lambda root: scanned.append(root) or real_usage(root))
    monkeypatch.setattr(snapshot_space, "filesystem_bound", lambda path: 10 << 20)

    monkeypatch.setattr(snapshot_space, "_free_bytes", lambda path: 12 << 20)
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A, min_free_bytes=1 << 20)
    assert scanned == []
    monkeypatch.setattr(snapshot_space, "_free_bytes", lambda path: 10 << 20)
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B, min_free_bytes=1 << 20)
    assert scanned == [volume]


def test_min_free_bytes_is_kept_free(store: Path, volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_space, "_free_bytes", lambda path: 90 << 20)
    with pytest.raises(CheckFailed, match=r"plus 95\.4 MiB that must stay free"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A, min_free_bytes=100_000_000)
    assert generation_dirs(store) == []
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A, min_free_bytes=50_000_000)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 20 MiB filesystem (tmpfs) for the store."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("mounting a tmpfs needs root, and CI runs as root")
        pytest.skip("mounting a tmpfs needs root (a laptop without it; CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)
            pytest.fail(f"{mount} was still busy: a descriptor into it leaked")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _random_files(root: Path, count: int, size: int) -> None:
    for i in range(count):
        write(root / f"blob{i}", os.urandom(size))


def test_low_disk_on_a_real_small_filesystem(small_fs: Path, tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    _random_files(volume, 12, 1 << 20)  # 12 MiB: one copy fits into 20 MiB, two do not
    take_snapshot(small_fs, APP, {"data": volume}, commit=COMMIT_A)
    before = _generation_identity(small_fs)
    write(volume / "blob0", os.urandom(1 << 20))

    refusal = r"not enough disk space.*a copy needs 12\.\d MiB, but only [\d.]+ MiB is free"
    with pytest.raises(CheckFailed, match=refusal):
        take_snapshot(small_fs, APP, {"data": volume}, commit=COMMIT_B)

    assert _generation_identity(small_fs) == before
    assert generation_dirs(small_fs) == [before[0]]
    verify_snapshot(small_fs, APP)


def test_disk_full_during_a_copy_discards_it(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "vol"
    _random_files(volume, 8, 1 << 20)
    take_snapshot(small_fs, APP, {"data": volume}, commit=COMMIT_A)
    before = _generation_identity(small_fs)
    _random_files(volume, 16, 1 << 20)  # 16 MiB no longer fits beside the 8 MiB snapshot
    monkeypatch.setattr(snapshot_space, "_free_bytes", lambda path: 1 << 40)  # the guard is fooled
    fds = open_fds()

    with pytest.raises(CheckFailed, match=r"failed and was discarded.*No space left"):
        take_snapshot(small_fs, APP, {"data": volume}, commit=COMMIT_B)

    assert open_fds() == fds

    assert _generation_identity(small_fs) == before
    assert generation_dirs(small_fs) == [before[0]]
    verify_snapshot(small_fs, APP)


def test_restore_onto_a_full_disk_fails_clearly_and_stays_dirty(
    small_fs: Path, store: Path
) -> None:
    volume = small_fs / "vol"
    _random_files(volume, 8, 1 << 20)
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    shutil.rmtree(volume)
    volume.mkdir()
    _random_files(small_fs / "filler", 15, 1 << 20)  # leaves ~5 MiB for 8 MiB of data
    fds = open_fds()

    with pytest.raises(CheckFailed, match=r"restore of .* stay marked dirty: .*No space left"):
        restore_snapshot(store, APP, {"data": volume})

    assert open_fds() == fds  # also for the jobs cancelled after the first failure
    assert not volumes_clean(store, APP)
    shutil.rmtree(small_fs / "filler")
    restore_snapshot(store, APP, {"data": volume})
    assert volume_manifest(volume) == snapshot_manifest(store, APP)["data"]


# -- leftovers, lock, clean state -------------------------------------------------------------


def test_leftovers_of_an_interrupted_take_are_removed(store: Path, volume: Path) -> None:
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    app_dir = store / APP
    write(app_dir / "gen-19990101T000000Z-deadbeef/volumes/data/half", b"partial")
    os.symlink("gen-19990101T000000Z-deadbeef", app_dir / ".last-known-good.tmp-0badf00d")
    write(app_dir / ".ccci-tmp-volumes-state.json.1234", b"{")

    assert current_snapshot(store, APP) == info

    assert sorted(os.listdir(app_dir)) == sorted(
        [".lock", "last-known-good", "live-index.json", "volumes-state.json", link_target(store)])
    verify_snapshot(store, APP)


def test_lock_is_respected_and_released_when_its_holder_dies(store: Path, volume: Path) -> None:
    take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    leftover = store / APP / "gen-19990101T000000Z-deadbeef"
    leftover.mkdir()
    holder = spawn(
        "import fcntl, os, sys\n"
        f"fd = os.open({str(store / APP / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('go', flush=True)\n"
        "sys.stdin.read()\n"
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "go\n"
        # Reading metadata does not wait for the lock, and leaves the cleaning to its holder.
        assert current_snapshot(store, APP) is not None and leftover.exists()
        taker = threading.Thread(
            target=take_snapshot, args=(store, APP, {"data": volume}), kwargs={"commit": COMMIT_B}
        )
        taker.start()
        taker.join(timeout=0.5)
        assert taker.is_alive(), "a take ran while another process held the store lock"
    finally:
        holder.kill()
        holder.wait()
    taker.join(timeout=60)
    assert not taker.is_alive()
    assert not leftover.exists()
    info = verify_snapshot(store, APP)
    assert info.commit == COMMIT_B


def test_volumes_clean_tracks_marks_and_the_current_digest(store: Path, volume: Path) -> None:
    assert not volumes_clean(store, APP)
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    assert volumes_clean(store, APP)  # a take copies the volumes, so they equal it
    mark_volumes_dirty(store, APP)
    assert not volumes_clean(store, APP)
    mark_volumes_clean(store, APP, "0" * 64)
    assert not volumes_clean(store, APP)  # clean against some other snapshot
    mark_volumes_clean(store, APP, info.manifest_sha256)
    assert volumes_clean(store, APP)
    with pytest.raises(BadInput):
        mark_volumes_clean(store, APP, "not-a-digest")
    mark_volumes_dirty(store, APP)
    restore_snapshot(store, APP, {"data": volume})
    assert volumes_clean(store, APP)


# -- pure parts -------------------------------------------------------------------------------


def _entry(path: str, kind: str = "f", **kw: object) -> ManifestEntry:
    base: dict[str, object] = dict(path=path, type=kind, mode=0o644, uid=0, gid=0,
                                   size=3 if kind == "f" else 0, mtime_ns=5,
                                   sha256="ab" * 32 if kind == "f" else None,
                                   target="t" if kind == "l" else None)
    base.update(kw)
    return ManifestEntry(**base)  # type: ignore[arg-type]


def _seen(kind: str | None = "f", inode: int = 1, **kw: object) -> Observed:
    base: dict[str, object] = dict(type=kind, mode=0o644, uid=0, gid=0, size=3, mtime_ns=5,
                                   target="t" if kind == "l" else None, inode=(1, inode), nlink=1)
    base.update(kw)
    return Observed(**base)  # type: ignore[arg-type]


def test_a_take_links_only_a_vouched_file_the_last_manifest_holds_exactly() -> None:
    source = _entry("f")
    assert linkable(source, _seen(), _entry("f"))
    assert not linkable(replace(source, sha256=None), _seen(), _entry("f"))  # not vouched for
    assert not linkable(source, _seen(), None)  # not in the last snapshot
    assert not linkable(source, _seen(), _entry("f", sha256="cd" * 32))
    assert not linkable(source, _seen(), _entry("f", mode=0o600))
    assert not linkable(source, _seen(), _entry("f", mtime_ns=6))
    assert not linkable(source, _seen(nlink=2), _entry("f"))  # hard links are copied
    assert not linkable(source, _seen(), _entry("f", hardlink="f"))


def test_decide_uses_lstat_first_and_hashes_only_when_needed() -> None:
    want = _entry("f")
    assert decide(want, _seen()) == "hash"  # nothing vouches for its content
    assert decide(want, _seen(), vouched=want.sha256) == "keep"
    assert decide(want, _seen(), vouched="cd" * 32) == "write"
    assert decide(want, _seen(), vouched=want.sha256, paranoid=True) == "hash"
    assert decide(want, _seen(mtime_ns=6)) == "hash"
    assert decide(want, _seen(size=4), vouched=want.sha256) == "write"
    assert decide(want, _seen(mode=0o600), vouched=want.sha256) == "fix"
    assert decide(want, _seen(uid=7), vouched=want.sha256) == "fix"
    assert decide(want, None) == "write"
    assert decide(want, _seen("l")) == "write"
    assert decide(want, _seen(), inode_owner="other") == "write"
    assert decide(_entry("l", "l"), _seen("l", target="u")) == "write"
    assert decide(_entry("d", "d"), _seen("d", size=0, mode=0o700)) == "fix"
    member = _entry("m", hardlink="a")
    assert decide(member, _seen(inode=9), leader_inode=(1, 9)) == "keep"
    assert decide(member, _seen(inode=8), leader_inode=(1, 9)) == "link"
    assert decide(member, None, leader_inode=(1, 9)) == "link"


def test_manifest_round_trips_and_sorts_parents_first() -> None:
    entries = group_hardlinks(
        [_entry("b"), _entry(".", "d"), _entry("a-b"), _entry("a", "d"), _entry("a/x"),
         _entry(LATIN1_NAME), _entry("l", "l")],
        {"a/x": (1, 5), "b": (1, 5)},
    )
    assert [e.path for e in entries] == [".", "a", "a/x", "a-b", "b", LATIN1_NAME, "l"]
    assert by_path(entries)["b"].hardlink == "a/x"
    data = render_manifest({"v": entries})
    assert parse_manifest(data) == {"v": entries}
    assert render_manifest({"v": list(reversed(entries))}) == data


def test_manifest_lines_are_what_json_dumps_writes(volume: Path) -> None:
    odd = ['quote"back\\slash\nnewline\ttab', "ünïcode-☃", LATIN1_NAME, "\x7f\x01"]
    entries = volume_manifest(volume) + [
        ManifestEntry(path=name, type="l", mode=0o777, uid=2**40, gid=0, size=len(name),
                      mtime_ns=-5, target=name) for name in odd
    ]
    for entry in entries:
        doc = {"volume": "v", "path": entry.path, "type": entry.type, "mode": f"{entry.mode:04o}",
               "uid": entry.uid, "gid": entry.gid, "size": entry.size, "mtime_ns": entry.mtime_ns,
               "sha256": entry.sha256, "target": entry.target, "hardlink": entry.hardlink}
        assert entry_to_json(entry, "v") == json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_entry("x")], "root is missing"),
        ([_entry(".", "d"), _entry("a/x")], "no directory parent"),
        ([_entry(".", "d"), _entry("a", "l"), _entry("a/x")], "no directory parent"),
        ([_entry(".", "d"), _entry("x"), _entry("x")], "listed twice"),
        ([_entry(".", "d"), _entry("x", sha256=None)], "has no sha256"),
        ([_entry(".", "d"), _entry("x", hardlink="y")], "inconsistent hardlink"),
    ],
)
def test_inconsistent_manifests_are_refused(entries: list[ManifestEntry], message: str) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_entries(entries, "m")


def test_parse_manifest_refuses_malformed_lines() -> None:
    with pytest.raises(CheckFailed, match="m:1: not valid JSON"):
        parse_manifest(b"{nope\n", "m")
    with pytest.raises(CheckFailed, match="mode '0999'"):
        parse_manifest(b'{"volume":"v","path":".","type":"d","mode":"0999"}\n', "m")


def test_jobs_close_the_descriptors_of_jobs_cancelled_after_a_failure() -> None:
    baseline = open_fds()
    gate = threading.Event()
    ran: list[int] = []
    jobs: Jobs[None] = Jobs()

    def fail() -> list[None]:
        raise OSError("disk full")

    def block() -> list[None]:
        gate.wait(timeout=30)
        return []

    jobs.submit(fail, (os.open("/", os.O_RDONLY),))
    for _ in range(WORKERS):  # every worker busy, so what follows stays queued
        jobs.submit(block, (os.open("/", os.O_RDONLY),))
    for i in range(5):
        jobs.submit(lambda i=i: ran.append(i) or [], (os.open("/", os.O_RDONLY),))
    failure: list[BaseException] = []

    def collect() -> None:
        try:
            jobs.results()
        except OSError as exc:
            failure.append(exc)

    collector = threading.Thread(target=collect)
    collector.start()
    deadline = time.monotonic() + 30
    while open_fds() > baseline + WORKERS and time.monotonic() < deadline:
        collector.join(timeout=0.01)  # the queued jobs get cancelled; then release the workers
    gate.set()
    collector.join(timeout=30)
    assert [str(e) for e in failure] == ["disk full"] and ran == []
    assert open_fds() == baseline


def test_sockets_are_skipped(store: Path, volume: Path) -> None:
    import socket

    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(volume / "app.sock"))
        info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
        assert "app.sock" not in by_path(snapshot_manifest(store, APP)["data"])
        assert stat.S_ISSOCK(os.lstat(volume / "app.sock").st_mode)
        restore_snapshot(store, APP, {"data": volume})
    assert not (volume / "app.sock").exists()  # a restore removes what the snapshot lacks
    assert verify_snapshot(store, APP) == info


# -- a replacing take that patches the last generation ------------------------------------------


@pytest.fixture
def unlinked(volume: Path) -> Path:
    """The rich tree without its hard-link pair: a replacing take then patches the last
    generation in place instead of linking a new one to it."""
    (volume / "hl/sub/two").unlink()
    return volume


def test_a_replacing_take_patches_the_last_generation_and_keeps_every_unchanged_inode(
    store: Path, unlinked: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = _first_take_settled(store, unlinked)
    before = {str(p.relative_to(old)): inode(p) for p in old.rglob("*")}
    write(unlinked / "cache/b", b"changed")  # new content
    (unlinked / "docs/readme.txt").unlink()  # a file goes
    shutil.rmtree(unlinked / "empty")  # a directory tree goes
    write(unlinked / "new/deep/file", b"new", 0o640, (999, 999))  # new directories and a file
    (unlinked / "link-me.txt").unlink()
    os.symlink("docs", unlinked / "link-me.txt")  # a file becomes a symlink
    shutil.rmtree(unlinked / "cache/a")
    write(unlinked / "cache/a", b"a directory became a file")
    (unlinked / "dangling").unlink()
    os.symlink("elsewhere", unlinked / "dangling")  # a symlink is retargeted
    os.chmod(unlinked / "data/db", 0o750)  # a directory's mode, nothing else
    os.chmod(unlinked / "bin/plain", 0o700)  # a file's mode, nothing else

    with caplog.at_level(logging.INFO, logger="controller.snapshots"):
        second = take_snapshot(store, APP, {"data": unlinked}, commit=COMMIT_B)

    assert "patched the last in place" in caplog.text
    generation = second.path.resolve()
    new = generation / "volumes/data"
    assert not old.exists() and generation_dirs(store) == [link_target(store)]
    assert sorted(os.listdir(generation)) == ["manifest.jsonl", "meta.json", "volumes"]
    for unchanged in ("data/keep.bin", "data/big.bin", "data/sparse.img", "bin/tool", "hl/one",
                      "data/db/file", LATIN1_NAME):
        assert inode(new / unchanged) == before[unchanged], unchanged
    assert inode(new / "cache/b") != before["cache/b"]
    assert inode(new / "bin/plain") != before["bin/plain"]
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(unlinked)
    assert verify_snapshot(store, APP) == second
    shutil.rmtree(unlinked)
    unlinked.mkdir()
    restore_snapshot(store, APP, {"data": unlinked})
    assert volume_manifest(unlinked) == snapshot_manifest(store, APP)["data"]


def _planned(path: str, kind: str, ino: int, size: int = 0) -> tuple[ManifestEntry, Observed]:
    seen = Observed(type=kind, mode=0o755, uid=0, gid=0, size=size, mtime_ns=1, target=None,  # type: ignore[arg-type]
                    inode=(1, ino), nlink=1, ctime_ns=1)
    sha = f"{ino:064x}" if kind == "f" else None
    return ManifestEntry(path, kind, 0o755, 0, 0, size, 1, sha), seen  # type: ignore[arg-type]


def test_a_patch_plan_moves_whole_directories_and_leaves_hard_links_to_a_new_generation() -> None:
    old_tree = dict([_planned(".", "d", 1), _planned("a", "d", 2), _planned("a/x", "f", 3, 10),
                     _planned("a/y", "f", 4, 10), _planned("b", "f", 5, 10), _planned("c", "d", 6),
                     _planned("c/z", "f", 7, 10)])
    old = sorted(old_tree, key=lambda e: e.path)
    seen = {e.path: s for e, s in old_tree.items() if e.path in (".", "a", "a/x")}
    seen["b"] = _planned("b", "d", 8)[1]
    seen["b/n"] = _planned("b/n", "f", 9, 3)[1]
    index = VolumeIndex(10**9, {"a/x": [1, 3, 10, 1, 1, f"{3:064x}"]})

    planned = patch.plan_volume(old, seen, 10**9, index)

    assert planned is not None
    assert planned.removes == ["c", "b", "a/y"]  # c/z goes with c; deepest first
    assert planned.adds == ["b", "b/n"] and planned.kept == 1
    assert planned.dirs == [".", "a", "b"]
    assert [e.path for e in planned.entries] == [".", "a", "a/x", "b", "b/n"]
    # A file the index does not vouch for is staged anew, even when its stat looks the same.
    again = patch.plan_volume(old, seen, 10**9, VolumeIndex())
    assert again is not None and "a/x" in again.adds and again.kept == 0
    linked = [replace(e, hardlink="a/x") if e.path == "a/y" else e for e in old]
    assert patch.plan_volume(linked, seen, 10**9, index) is None
    assert patch.plan_volume(old, {**seen, "b/n": replace(seen["b/n"], nlink=2)}, 10**9,
                             index) is None
    assert patch.plan_volume(old, {".": seen["."]}, 10**9, index) is not None  # small: patched
    many = [old[0], *(_planned(f"f{i}", "f", 100 + i, 1)[0] for i in range(100))]
    assert patch.plan_volume(many, {".": seen["."]}, 10**9, index) is None  # most of it changed


def test_a_patch_that_fails_is_undone_at_once_or_by_the_next_operation(
    store: Path, unlinked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _first_take_settled(store, unlinked)
    first = current_snapshot(store, APP)
    first_manifest = snapshot_manifest(store, APP)
    write(unlinked / "cache/b", b"changed")
    shutil.rmtree(unlinked / "empty")
    write(unlinked / "new/file", b"new")

    def fail(self: patch.Patch, manifests: object) -> None:
        raise CheckFailed("verification failed (injected)")

    monkeypatch.setattr(patch.Patch, "verify", fail)
    with pytest.raises(CheckFailed, match="injected"):
        take_snapshot(store, APP, {"data": unlinked}, commit=COMMIT_B)
    assert current_snapshot(store, APP) == first and generation_dirs(store) == [link_target(store)]
    assert snapshot_manifest(store, APP) == first_manifest
    verify_snapshot(store, APP)

    # Undoing fails too (a disk error): the plan stays, and the next operation undoes it.
    real_undo, calls = patch.undo, []

    def undo_once_failing(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise OSError(errno.EIO, "injected")
        real_undo(*args)

    monkeypatch.setattr(patch, "undo", undo_once_failing)
    with pytest.raises(CheckFailed, match="injected"):
        take_snapshot(store, APP, {"data": unlinked}, commit=COMMIT_B)
    assert len(generation_dirs(store)) == 2  # the half-patched take's, plan and stash kept
    assert verify_snapshot(store, APP) == first  # settles it: undone, then re-hashed whole
    assert len(calls) == 2 and generation_dirs(store) == [link_target(store)]
    assert snapshot_manifest(store, APP) == first_manifest
    monkeypatch.undo()
    assert take_snapshot(store, APP, {"data": unlinked}, commit=COMMIT_B).commit == COMMIT_B
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(unlinked)


@pytest.mark.parametrize("hard_links", [True, False], ids=["linking", "patching"])
def test_a_take_that_fails_right_after_its_swap_keeps_the_new_generation(
    store: Path, volume: Path, hard_links: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hard_links:
        (volume / "hl/sub/two").unlink()
    _first_take_settled(store, volume)
    write(volume / "cache/b", b"changed")
    real_swap = snapshot_store.swap_link

    def swap_then_fail(where: Path, name: str) -> None:
        real_swap(where, name)
        raise OSError(errno.EIO, "injected after the swap")

    monkeypatch.setattr(snapshot_store, "swap_link", swap_then_fail)
    with pytest.raises(CheckFailed, match="injected after the swap"):
        take_snapshot(store, APP, {"data": volume}, commit=COMMIT_B)
    monkeypatch.undo()

    # The swapped-in generation is the last-known-good: not discarded under its link.
    assert (store / APP / link_target(store)).is_dir()
    assert verify_snapshot(store, APP).commit == COMMIT_B  # settles what the take left
    assert generation_dirs(store) == [link_target(store)]
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(volume)


def _plain_tree() -> tuple[list[ManifestEntry], dict[str, Observed]]:
    """A root, a directory and two files, as a manifest and as a scan that equals it."""
    want = [ManifestEntry(".", "d", 0o755, 0, 0, 0, 1), ManifestEntry("d", "d", 0o750, 1, 1, 0, 2),
            ManifestEntry("d/a", "f", 0o644, 1, 1, 3, 3, "a" * 64),
            ManifestEntry("d/b", "f", 0o600, 1, 1, 4, 4, "b" * 64)]
    seen = {e.path: Observed(e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, None, (7, n), 1)
            for n, e in enumerate(want)}
    return want, seen


@pytest.mark.parametrize("change, problem", [
    ("none", None),
    ("missing", "d/b: missing"),
    ("extra", "d/c: not in the snapshot"),
    ("mode", "d/a: mode 0666 instead of 0644"),
    ("shared inode", "d/b: shares an inode with d/a; the snapshot has them apart"),
    ("link wanted", "d/b: not hard-linked to d/a"),
    ("duplicate entry", "d/c: not in the snapshot"),
])
def test_tree_differences_names_each_difference_and_nothing_on_an_equal_tree(change: str,
                                                                              problem: str | None) -> None:
    """The one-pass check of an equal tree must not hide what the full comparison names."""
    want, seen = _plain_tree()
    if change == "missing":
        del seen["d/b"]
    elif change in ("extra", "duplicate entry"):
        seen["d/c"] = replace(seen["d/b"], inode=(7, 9))
        if change == "duplicate entry":  # as many entries as scanned paths, one path twice
            want.append(want[-1])
    elif change == "mode":
        seen["d/a"] = replace(seen["d/a"], mode=0o666)
    elif change == "shared inode":
        seen["d/b"] = replace(seen["d/b"], inode=seen["d/a"].inode)
    elif change == "link wanted":
        want[3] = replace(want[3], hardlink="d/a")
    found = tree_differences(want, seen)
    assert found == ([] if problem is None else [problem])
