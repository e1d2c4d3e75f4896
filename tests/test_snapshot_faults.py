"""SIGKILL at random moments of a take or a restore never costs the last-known-good, on the
normal disk (files copied) and on XFS with reflink (files cloned)."""

from __future__ import annotations

import collections
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.snapshots import (
    current_snapshot,
    mark_volumes_dirty,
    restore_snapshot,
    snapshot_manifest,
    take_snapshot,
    verify_snapshot,
    verify_volumes,
    volume_manifest,
    volumes_clean,
)
from controller.snapshots.layout import LAST_KNOWN_GOOD, META_FILE
from tests.helpers import wait_for
from tests.snapshot_helpers import (
    APP,
    COMMIT_A,
    build_bulk_tree,
    generation_dirs,
    link_target,
    mutate_bulk,
    spawn,
    wait_past_racy_window,
)

TRIALS = int(os.environ.get("CCCI_SNAPSHOT_FAULT_TRIALS", "50"))

TAKE = """
import sys
from pathlib import Path
from controller.snapshots import take_snapshot
print("go", flush=True)
take_snapshot(Path(sys.argv[1]), sys.argv[2], {"data": Path(sys.argv[3])}, commit=sys.argv[4])
"""

RESTORE = """
import sys
from pathlib import Path
from controller.snapshots import restore_snapshot
print("go", flush=True)
restore_snapshot(Path(sys.argv[1]), sys.argv[2], {"data": Path(sys.argv[3])})
"""


def run_child(code: str, args: list[str], kill_after: float | None) -> tuple[bool, float]:
    """Run `code` in a child; SIGKILL it `kill_after` seconds after it is ready.

    Returns (finished on its own, seconds from ready to exit).
    """
    child = spawn(code, *args)
    assert child.stdout is not None and child.stderr is not None
    try:
        assert child.stdout.readline() == "go\n", child.stderr.read()
        started = time.monotonic()
        try:
            child.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            return False, time.monotonic() - started
        if child.returncode == -signal.SIGKILL:  # it killed itself at an exact point
            return False, time.monotonic() - started
        assert child.returncode == 0, child.stderr.read()
        return True, time.monotonic() - started
    finally:
        child.stdout.close()
        child.stderr.close()
        if child.poll() is None:
            child.kill()
            child.wait()


def take_phase(store: Path) -> str:
    """Where a killed take stopped, read from what it left (before anything cleans up)."""
    app_dir = store / APP
    current = link_target(store)
    others = [g for g in generation_dirs(store) if g != current]
    if any(n.startswith(".last-known-good.tmp-") for n in os.listdir(app_dir)):
        return "temp link made, not swapped"
    if not others:
        return "nothing written yet"
    newest = max(others)  # generation names start with their UTC time
    if newest < current:
        return "swapped, old generation partly removed"
    if (app_dir / newest / META_FILE).exists():
        return "verified, not swapped"
    return "copy or verify in progress"


@pytest.fixture
def bulk(snapshot_place: Path) -> tuple[Path, Path]:
    store, source = snapshot_place / "store", snapshot_place / "volume"
    build_bulk_tree(source, files=2000, large=2, large_bytes=4 << 20)
    return store, source


@pytest.mark.parametrize("hard_links", [True, False], ids=["linking", "patching"])
def test_take_killed_at_random_moments_leaves_one_verifiable_snapshot(
    snapshot_place: Path, hard_links: bool
) -> None:
    """With hard links in the tree a replacing take links a new generation to the last; without,
    it patches the last one in place. Either way a kill leaves exactly one snapshot."""
    store, source = snapshot_place / "store", snapshot_place / "volume"
    build_bulk_tree(source, files=2000, large=2, large_bytes=4 << 20, hard_links=hard_links)
    rng = random.Random(20261129)
    take_snapshot(store, APP, {"data": source}, commit=COMMIT_A)
    duration = 0.0
    for commit in ("c" * 40, "d" * 40):  # the slower of two sets the range of kill points
        mutate_bulk(source, rng, fraction=0.01)
        finished, took = run_child(TAKE, [str(store), APP, str(source), commit], None)
        assert finished
        duration = max(duration, took)
    previous = verify_snapshot(store, APP)
    outcomes: collections.Counter[str] = collections.Counter()
    phases: collections.Counter[str] = collections.Counter()

    for trial in range(TRIALS):
        mutate_bulk(source, rng, fraction=0.01)  # every take has something new to copy
        commit = f"{trial + 1:040x}"
        finished, took = run_child(
            TAKE, [str(store), APP, str(source), commit], rng.uniform(0, duration * 1.2)
        )
        phases["finished" if finished else take_phase(store)] += 1
        if finished:  # a loaded machine slows takes down: keep the kill points spread
            duration = max(duration, took)

        info = verify_snapshot(store, APP)  # also removes what the killed take left

        assert generation_dirs(store) == [link_target(store)]
        assert [n for n in os.listdir(store / APP) if n.startswith(".")] == [".lock"]
        if info.commit == commit:
            outcomes["new"] += 1
            assert snapshot_manifest(store, APP)["data"] == volume_manifest(source)
        else:
            outcomes["old"] += 1
            assert info == previous
        previous = info
        if trial % 10 == 9:
            # The store still takes snapshots; and the machine's load changes how long a
            # take lasts, so re-measure one to keep the kill points spread over all of it.
            mutate_bulk(source, rng, fraction=0.01)
            commit = f"{trial:x}".rjust(40, "e")
            finished, took = run_child(TAKE, [str(store), APP, str(source), commit], None)
            assert finished
            duration = max(duration, took)
            previous = verify_snapshot(store, APP)
            assert previous.commit == commit

    print(f"\ntake: {duration:.2f}s per take; outcomes {dict(outcomes)}; kill points {dict(phases)}")
    assert outcomes["old"], (outcomes, phases)  # the kills did interrupt takes


def test_restore_killed_at_random_moments_never_harms_the_snapshot(
    bulk: tuple[Path, Path],
) -> None:
    store, volume = bulk
    rng = random.Random(112926)
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    manifest = snapshot_manifest(store, APP)["data"]
    generation = os.readlink(store / APP / LAST_KNOWN_GOOD)
    mutate_bulk(volume, rng, fraction=0.2)
    finished, duration = run_child(RESTORE, [str(store), APP, str(volume)], None)
    assert finished and volume_manifest(volume) == manifest
    outcomes: collections.Counter[str] = collections.Counter()

    for _ in range(TRIALS):
        mark_volumes_dirty(store, APP)  # as the quick flow does before it upgrades
        mutate_bulk(volume, rng, fraction=0.2)
        finished, took = run_child(
            RESTORE, [str(store), APP, str(volume)], rng.uniform(0, duration * 1.2)
        )
        if finished:
            duration = max(duration, took)

        assert verify_snapshot(store, APP) == info
        assert link_target(store) == generation
        if volumes_clean(store, APP):  # only a restore that verified may say so
            outcomes["finished" if finished else "killed after marking clean"] += 1
            assert verify_volumes(store, APP, {"data": volume}, paranoid=True) == []
        else:
            outcomes["killed"] += 1
        report = restore_snapshot(store, APP, {"data": volume})
        assert report.verified and volumes_clean(store, APP)
        assert volume_manifest(volume) == manifest

    print(f"\nrestore: {duration:.2f}s per restore; outcomes {dict(outcomes)}")
    assert outcomes["killed"], outcomes


# -- a first take's worker processes ---------------------------------------------------------

AMID_WORKERS = """
import os, signal, sys
from pathlib import Path
from controller.snapshots import jobs, take_snapshot

os.environ["CCCI_TEST_MARK"] = sys.argv[5]  # inherited by every process the take starts
real, made = jobs.Jobs.submit_elsewhere, 0

def submit(self, *args):
    global made
    made += 1
    if made > int(sys.argv[4]):  # with this many batches handed to the worker processes
        if not args[0]._processes:
            sys.exit("no worker process was started")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args)

jobs.Jobs.submit_elsewhere = submit
print("go", flush=True)
take_snapshot(Path(sys.argv[1]), sys.argv[2], {"data": Path(sys.argv[3])}, commit="f" * 40)
"""


def marked_processes(mark: str) -> list[int]:
    """Live processes whose environment carries `mark`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if f"CCCI_TEST_MARK={mark}".encode() in environ.split(b"\0"):
            found.append(int(name))
    return found


@pytest.mark.parametrize("batches", [1, 20])
def test_a_first_take_killed_while_worker_processes_copy_leaves_no_process_and_no_snapshot(
    snapshot_place: Path, batches: int
) -> None:
    """The controller is SIGKILLed while its worker processes copy (just started; in full
    swing): none of them outlives it to write into the store, and what they wrote is a
    leftover the next operation removes."""
    store, source = snapshot_place / "store", snapshot_place / "volume"
    build_bulk_tree(source, files=3000, large=1, large_bytes=1 << 20)
    mark = secrets.token_hex(8)

    finished, _ = run_child(AMID_WORKERS, [str(store), APP, str(source), str(batches), mark], 60)

    assert not finished
    assert [g for g in generation_dirs(store)], "the take had started writing its generation"
    wait_for(lambda: not marked_processes(mark), 10, "the killed take's processes to end")
    assert current_snapshot(store, APP) is None  # and the half-written generation is gone
    assert generation_dirs(store) == []
    take_snapshot(store, APP, {"data": source}, commit=COMMIT_A)
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(source)


# -- exact kill points ------------------------------------------------------------------------
# Random kills rarely land in the short windows around the swap; these kill the child at
# each step by wrapping the function that starts it (in the child only).

KILL_AT = """
import os, signal, sys
from pathlib import Path
from controller.snapshots import fsio, patch, restore, store

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[4]
real_replace, real_write_state = os.replace, restore.write_state

def die_after(calls, real):  # real, until it is called once more than `calls` times
    made = 0

    def call(*args, **kwargs):
        nonlocal made
        made += 1
        if made > calls:
            die()
        return real(*args, **kwargs)
    return call

if point == "take: half linked to the old generation":
    os.link = die_after(20, os.link)
elif point == "take: copied, before syncfs":
    fsio.sync_filesystem = die
elif point == "take: verified, before the swap":
    store.swap_link = die
elif point == "take: temp link made, before the rename":
    os.replace = lambda src, dst, *a, **k: (
        die() if str(dst).endswith("last-known-good") else real_replace(src, dst, *a, **k))
elif point == "take: swapped, before removing the old generation":
    store.remove_tree = die
elif point == "take: old generation half removed":
    os.rmdir = die
elif point == "take: before marking the volumes clean":
    store.write_state = die
elif point == "patch: staged, before the plan":
    patch.Patch.apply = die
elif point == "patch: half applied":
    os.rename = die_after(15, os.rename)
elif point == "patch: applied, before the verify":
    patch.Patch.verify = die
elif point == "patch: volumes moved, before the swap":
    store.swap_link = die
elif point == "patch: swapped, before the stash is removed":
    patch.finish = die
elif point == "restore: marked dirty, before the first write":
    restore.VolumeRestore.run = die
elif point == "restore: verified, before marking clean":
    restore.write_state = lambda where, *, clean, manifest_sha256: (
        die() if clean else real_write_state(where, clean=clean, manifest_sha256=manifest_sha256))
print("go", flush=True)
if point.startswith(("take", "patch")):
    store.take_snapshot(Path(sys.argv[1]), sys.argv[2], {"data": Path(sys.argv[3])},
                        commit="f" * 40)
else:
    restore.restore_snapshot(Path(sys.argv[1]), sys.argv[2], {"data": Path(sys.argv[3])})
"""

TAKE_POINTS = {  # kill point -> which snapshot must survive it
    "take: half linked to the old generation": "old",
    "take: copied, before syncfs": "old",
    "take: verified, before the swap": "old",
    "take: temp link made, before the rename": "old",
    "take: swapped, before removing the old generation": "new",
    "take: old generation half removed": "new",
    "take: before marking the volumes clean": "new",
}


@pytest.mark.parametrize("point", list(TAKE_POINTS))
def test_take_killed_at_each_step_keeps_exactly_one_snapshot(
    snapshot_place: Path, point: str
) -> None:
    store, source = snapshot_place / "store", snapshot_place / "volume"
    build_bulk_tree(source, files=200, large=1, large_bytes=1 << 20)
    wait_past_racy_window(source)  # so that the live index vouches for every file: links
    old = take_snapshot(store, APP, {"data": source}, commit=COMMIT_A)
    mark_volumes_dirty(store, APP)  # as a rewarm does before it deploys the new version
    mutate_bulk(source, random.Random(3), fraction=0.1)

    finished, _ = run_child(KILL_AT, [str(store), APP, str(source), point], 60)

    assert not finished
    leftovers = [g for g in generation_dirs(store) if g != link_target(store)]
    info = verify_snapshot(store, APP)
    assert generation_dirs(store) == [link_target(store)]
    assert [n for n in os.listdir(store / APP) if n.startswith(".")] == [".lock"]
    if TAKE_POINTS[point] == "old":
        assert info == old
    else:
        assert info.commit == "f" * 40
        assert snapshot_manifest(store, APP)["data"] == volume_manifest(source)
        assert leftovers or point == "take: before marking the volumes clean"
    assert not volumes_clean(store, APP)
    assert take_snapshot(store, APP, {"data": source}, commit=COMMIT_A).commit == COMMIT_A


PATCH_POINTS = {  # kill point -> which snapshot must survive it
    "patch: staged, before the plan": "old",
    "patch: half applied": "old",
    "patch: applied, before the verify": "old",
    "patch: volumes moved, before the swap": "old",
    "patch: swapped, before the stash is removed": "new",
}


@pytest.mark.parametrize("point", list(PATCH_POINTS))
def test_a_patching_take_killed_at_each_step_is_undone_or_finished(
    snapshot_place: Path, point: str
) -> None:
    """A tree without hard links: the replacing take patches the last generation in place,
    and a restarted controller undoes the patch exactly (or, swapped, finishes it)."""
    store, source = snapshot_place / "store", snapshot_place / "volume"
    build_bulk_tree(source, files=400, large=1, large_bytes=1 << 20, hard_links=False)
    wait_past_racy_window(source)
    old = take_snapshot(store, APP, {"data": source}, commit=COMMIT_A)
    old_manifest = snapshot_manifest(store, APP)
    mark_volumes_dirty(store, APP)
    mutate_bulk(source, random.Random(5), fraction=0.1)
    shutil.rmtree(source / "d03")  # a whole directory goes
    (source / "d04" / "e4").rename(source / "d04" / "moved")  # one is renamed
    os.chmod(source / "d05", 0o750)  # one changes mode only

    finished, _ = run_child(KILL_AT, [str(store), APP, str(source), point], 60)

    assert not finished
    left = [g for g in generation_dirs(store) if g != link_target(store)]
    plan_kept = (store / APP / link_target(store) / "patch.json").exists()
    assert left or plan_kept, "the killed take left its work for the restart to settle"
    info = verify_snapshot(store, APP)  # settles what the killed take left, then re-hashes all
    assert generation_dirs(store) == [link_target(store)]
    assert [n for n in os.listdir(store / APP) if n.startswith(".")] == [".lock"]
    assert not (store / APP / link_target(store) / "patch.json").exists()
    if PATCH_POINTS[point] == "old":
        assert info == old
        assert snapshot_manifest(store, APP) == old_manifest
    else:
        assert info.commit == "f" * 40
        assert snapshot_manifest(store, APP)["data"] == volume_manifest(source)
    assert not volumes_clean(store, APP)
    again = take_snapshot(store, APP, {"data": source}, commit=COMMIT_A)
    assert again.commit == COMMIT_A
    assert snapshot_manifest(store, APP)["data"] == volume_manifest(source)


@pytest.mark.parametrize(
    "point", ["restore: marked dirty, before the first write", "restore: verified, before marking clean"]
)
def test_restore_killed_at_each_step_leaves_the_volumes_dirty(
    snapshot_place: Path, point: str
) -> None:
    store, volume = snapshot_place / "store", snapshot_place / "volume"
    build_bulk_tree(volume, files=200, large=1, large_bytes=1 << 20)
    info = take_snapshot(store, APP, {"data": volume}, commit=COMMIT_A)
    mark_volumes_dirty(store, APP)
    mutate_bulk(volume, random.Random(4), fraction=0.2)

    finished, _ = run_child(KILL_AT, [str(store), APP, str(volume), point], 60)

    assert not finished
    assert not volumes_clean(store, APP)
    assert verify_snapshot(store, APP) == info
    restore_snapshot(store, APP, {"data": volume})
    assert volumes_clean(store, APP)
    assert volume_manifest(volume) == snapshot_manifest(store, APP)["data"]
