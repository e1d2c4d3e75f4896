"""Snapshot take, verify and restore timed against cp -a --reflink=never, on the normal disk
and on XFS with reflink, in one run (~1 GiB in ~20 000 files on each).

    python bench/snapshot.py [--dir DIR] [--xfs DIR] [--size-gb 1.0] [--repeat N] [--keep]

--dir is a work dir on the normal disk (default: a new one in /var/tmp); --xfs is a work
dir on an XFS filesystem with reflink (default: $CCCI_TESTBED_XFS/ccci-bench, from
`scripts/testbed up --fs xfs`; `--xfs none` skips it). Each filesystem gets its own tree,
kept for the next run (copies are removed unless --keep). Caches are dropped before every
timed step when the process may (root); the report says whether it could.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.snapshots import (
    restore_snapshot,
    take_snapshot,
    verify_snapshot,
)

APP = "bench"
SMALL_PER_GB = 20_000
LARGE_FILES = 8
FILES_PER_DIR = 100


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed(step: Callable[[], object], *, cold: bool) -> tuple[float, bool]:
    dropped = drop_caches() if cold else False
    started = time.monotonic()
    step()
    return time.monotonic() - started, dropped


def sh(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True)


def make_tree(src: Path, size_gb: float, seed: int = 1) -> dict[str, int]:
    """~20k small files (1-64 KiB) per GiB in nested dirs, plus 8 large files for the rest."""
    spec = {"size_gb_milli": int(size_gb * 1000), "seed": seed, "format": 1}
    marker = src.with_name(src.name + ".json")
    if src.is_dir() and marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        stats: dict[str, int] = json.loads(marker.read_text())["stats"]
        return stats
    if src.exists():
        shutil.rmtree(src)
    rng = random.Random(seed)
    pool = rng.randbytes(64 << 20)  # slices of one random pool: fast to make, incompressible
    small = int(SMALL_PER_GB * size_gb)
    small_bytes = 0
    for i in range(small):
        folder = src / f"d{i // (FILES_PER_DIR * 5):03d}" / f"e{(i // FILES_PER_DIR) % 5}"
        if i % FILES_PER_DIR == 0:
            folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1 << 10, 64 << 10)
        start = rng.randrange(len(pool) - size)
        (folder / f"f{i:06d}.bin").write_bytes(pool[start : start + size])
        small_bytes += size
    large_each = max(1 << 20, (int(size_gb * (1 << 30)) - small_bytes) // LARGE_FILES)
    (src / "large").mkdir(parents=True, exist_ok=True)
    for i in range(LARGE_FILES):
        with open(src / "large" / f"blob{i}.bin", "wb") as handle:
            left = large_each
            while left:
                step = min(left, len(pool) - 1)
                start = rng.randrange(len(pool) - step)
                handle.write(pool[start : start + step])
                left -= step
    stats = {"files": small + LARGE_FILES, "bytes": small_bytes + large_each * LARGE_FILES}
    marker.write_text(json.dumps({"spec": spec, "stats": stats}))
    return stats


def touch_one_percent(root: Path, seed: int = 2) -> int:
    """Rewrite ~1 % of the files with new content (new size), as a small upgrade would."""
    rng = random.Random(seed)
    files = sorted(p for p in root.rglob("f*.bin"))
    chosen = rng.sample(files, max(1, len(files) // 100))
    for path in chosen:
        path.write_bytes(rng.randbytes(rng.randint(1 << 10, 64 << 10)))
    return len(chosen)


def fmt_ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "-"


def fs_type(path: Path) -> str:
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                          capture_output=True, text=True, check=False).stdout.strip()


Row = tuple[str, str, float, str, float]  # filesystem, step, ccci, baseline, baseline time


class Bench:
    def __init__(self, repeat: int, size_gb: float) -> None:
        self.repeat = repeat
        self.size_gb = size_gb
        self.dropped_all = True
        self.rows: list[Row] = []
        self.trees: dict[str, dict[str, int]] = {}

    def measure(self, step: Callable[[], object], before: Callable[[], object] = lambda: None,
                after: Callable[[], object] = lambda: None) -> float:
        """Median of --repeat cold runs; `before`/`after` run untimed around each."""
        runs = []
        for _ in range(self.repeat):
            before()
            seconds, dropped = timed(step, cold=True)
            self.dropped_all &= dropped
            runs.append(seconds)
            after()
        print(f"  {' '.join(f'{r:.2f}' for r in runs)} s", file=sys.stderr)
        return statistics.median(runs)

    def run_on(self, work: Path) -> None:
        """Every step on one filesystem: its tree, store, baseline copy and restore target."""
        fs = fs_type(work)
        src, store, cp_dir, restored = work / "src", work / "store", work / "cp", work / "restore"
        for leftover in (store, cp_dir, restored):
            if leftover.exists():
                shutil.rmtree(leftover)
        print(f"{fs}: tree {src} ({self.size_gb:g} GiB asked) ...", file=sys.stderr)
        self.trees[fs] = make_tree(src, self.size_gb)

        def remove(path: Path) -> Callable[[], None]:
            return lambda: shutil.rmtree(path, ignore_errors=True)

        print(f"{fs}: cp -a --reflink=never ...", file=sys.stderr)
        t_cp = self.measure(lambda: sh(f"cp -a --reflink=never {src} {cp_dir}"), after=remove(cp_dir))
        baseline = "cp -a --reflink=never"

        print(f"{fs}: take ...", file=sys.stderr)
        commits = (f"{i:040x}" for i in itertools.count())
        seeds = itertools.count(100)
        changed = 0

        def change_source() -> None:
            nonlocal changed
            changed = touch_one_percent(src, next(seeds))

        t_take = self.measure(lambda: take_snapshot(store, APP, {"data": src}, commit=next(commits)),
                              before=remove(store))
        t_retake = self.measure(lambda: take_snapshot(store, APP, {"data": src}, commit=next(commits)),
                                before=change_source)
        t_paranoid = self.measure(lambda: take_snapshot(store, APP, {"data": src}, commit=next(commits),
                                                        paranoid=True), before=change_source)
        self.rows.append((fs, "take (first snapshot, with its verify)", t_take, baseline, t_cp))
        self.rows.append((fs, f"take replacing the last ({changed} files changed)", t_retake,
                          baseline, t_cp))
        self.rows.append((fs, f"take --paranoid replacing the last ({changed} files changed)",
                          t_paranoid, baseline, t_cp))

        print(f"{fs}: verify ...", file=sys.stderr)
        copy_root = (store / APP / "last-known-good").resolve() / "volumes" / "data"
        t_verify = self.measure(lambda: verify_snapshot(store, APP))
        t_sha = self.measure(lambda: sh(f"find {copy_root} -type f -print0 | xargs -0 sha256sum >/dev/null"))
        self.rows.append((fs, "verify_snapshot", t_verify, "find -print0 \\| xargs -0 sha256sum", t_sha))

        print(f"{fs}: restore ...", file=sys.stderr)
        def empty_target() -> None:
            shutil.rmtree(restored, ignore_errors=True)
            restored.mkdir()

        t_full = self.measure(lambda: restore_snapshot(store, APP, {"data": restored}),
                              before=empty_target)

        def change_restored() -> None:
            nonlocal changed
            changed = touch_one_percent(restored, next(seeds))

        t_incr = self.measure(lambda: restore_snapshot(store, APP, {"data": restored}),
                              before=change_restored)
        self.rows.append((fs, "restore into an empty dir", t_full, baseline, t_cp))
        self.rows.append((fs, f"incremental restore ({changed} files changed)", t_incr,
                          "full restore", t_full))


def default_xfs() -> str:
    mount = os.environ.get("CCCI_TESTBED_XFS") or "/var/lib/ccci-testbed/xfs"
    return str(Path(mount) / "ccci-bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work dir on the normal disk (tree reused when present)")
    parser.add_argument("--xfs", default=default_xfs(),
                        help="work dir on XFS with reflink, or 'none' (tree reused when present)")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the trees and copies")
    parser.add_argument("--repeat", type=int, default=1, help="runs per step; the median counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0fms %(message)s")
    logging.getLogger("controller.snapshots").setLevel(logging.INFO)

    created = args.dir is None
    work: Path = args.dir or Path(tempfile.mkdtemp(prefix="ccci-bench-snapshot-", dir="/var/tmp"))
    places = [work]
    if args.xfs != "none":
        xfs = Path(args.xfs)
        xfs.mkdir(parents=True, exist_ok=True)
        if fs_type(xfs) != "xfs":
            parser.error(f"--xfs {xfs}: not on an XFS filesystem (scripts/testbed up --fs xfs, "
                         "or --xfs none)")
        places.append(xfs)
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.repeat, args.size_gb)
    try:
        for place in places:
            bench.run_on(place)
    finally:
        for place in places:
            if args.keep:
                print(f"kept: {place}", file=sys.stderr)
            elif created and place == work:
                shutil.rmtree(work)
            else:
                for name in ("store", "cp", "restore"):
                    shutil.rmtree(place / name, ignore_errors=True)

    xfs_arg = "" if args.xfs == default_xfs() else f" --xfs {args.xfs}"
    print(f"\nDate: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; command: "
          f"`python bench/snapshot.py --size-gb {args.size_gb:g} --repeat {args.repeat}{xfs_arg}`"
          f" (median of {args.repeat} cold runs per step)")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"Python {platform.python_version()}; "
          + "; ".join(f"{fs_type(p)} at {p}" for p in places))
    for fs, stats in bench.trees.items():
        print(f"Tree on {fs}: {stats['files']} files, {stats['bytes'] / (1 << 30):.2f} GiB "
              f"({int(SMALL_PER_GB * args.size_gb)} of 1-64 KiB, {LARGE_FILES} large)")
    print("Caches: " + ("dropped before every timed step (cold)." if bench.dropped_all
                        else "NOT dropped (not root?): warm-cache figures."))
    print()
    print("| filesystem | step | ccci | baseline | baseline time | ccci / baseline |")
    print("|---|---|---:|---|---:|---:|")
    for fs, name, ours, baseline, theirs in bench.rows:
        print(f"| {fs} | {name} | {ours:.2f} s | {baseline} | {theirs:.2f} s "
              f"| {fmt_ratio(ours, theirs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
