"""Snapshot take, verify and restore timed against cp -a and sha256sum on a ~1 GiB tree.

    python bench/snapshot.py [--dir DIR] [--size-gb 1.0] [--repeat N] [--keep]

Caches are dropped before every timed step when the process may (root); the report
says whether it could. With --dir the generated tree stays there for the next run
(copies are removed unless --keep); without it everything goes unless --keep.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work dir (tree reused when present)")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the tree and copies")
    parser.add_argument("--repeat", type=int, default=1, help="runs per step; the median counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0fms %(message)s")
    logging.getLogger("controller.snapshots").setLevel(logging.INFO)

    created = args.dir is None
    work: Path = args.dir or Path(tempfile.mkdtemp(prefix="ccci-bench-snapshot-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    src, store, cp_dir = work / "src", work / "store", work / "cp"
    restored = work / "restore"
    for leftover in (store, cp_dir, restored):
        if leftover.exists():
            shutil.rmtree(leftover)

    print(f"tree: {src} ({args.size_gb:g} GiB asked) ...", file=sys.stderr)
    stats = make_tree(src, args.size_gb)
    rows: list[tuple[str, float, str, float]] = []
    dropped_all = True

    def measure(step: Callable[[], object], before: Callable[[], object] = lambda: None,
                after: Callable[[], object] = lambda: None) -> float:
        """Median of --repeat cold runs; `before`/`after` run untimed around each."""
        nonlocal dropped_all
        runs = []
        for _ in range(args.repeat):
            before()
            seconds, dropped = timed(step, cold=True)
            dropped_all &= dropped
            runs.append(seconds)
            after()
        print(f"  {' '.join(f'{r:.2f}' for r in runs)} s", file=sys.stderr)
        return statistics.median(runs)

    def remove(path: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(path, ignore_errors=True)

    print("cp -a ...", file=sys.stderr)
    t_cp = measure(lambda: sh(f"cp -a {src} {cp_dir}"), after=remove(cp_dir))
    t_cp_sync = measure(lambda: sh(f"cp -a {src} {cp_dir} && sync"), after=remove(cp_dir))

    print("take ...", file=sys.stderr)
    commits = (f"{i:040x}" for i in itertools.count())
    t_take = measure(lambda: take_snapshot(store, APP, {"data": src}, commit=next(commits)),
                     before=remove(store))
    t_retake = measure(lambda: take_snapshot(store, APP, {"data": src}, commit=next(commits)))
    rows.append(("take (first snapshot)", t_take, "cp -a", t_cp))
    rows.append(("take (first snapshot)", t_take, "cp -a && sync", t_cp_sync))
    rows.append(("take (replaces the previous one)", t_retake, "cp -a", t_cp))

    print("verify ...", file=sys.stderr)
    copy_root = (store / APP / "last-known-good").resolve() / "volumes" / "data"
    t_verify = measure(lambda: verify_snapshot(store, APP))
    t_sha = measure(lambda: sh(f"find {copy_root} -type f -print0 | xargs -0 sha256sum >/dev/null"))
    rows.append(("verify_snapshot", t_verify, "find -print0 \\| xargs -0 sha256sum", t_sha))

    print("restore ...", file=sys.stderr)
    t_full = measure(lambda: restore_snapshot(store, APP, {"data": restored}),
                     before=lambda: (remove(restored)(), restored.mkdir()))
    seeds = itertools.count(2)
    changed = 0

    def change_one_percent() -> None:
        nonlocal changed
        changed = touch_one_percent(restored, next(seeds))

    t_incr = measure(lambda: restore_snapshot(store, APP, {"data": restored}),
                     before=change_one_percent)
    rows.append(("restore into an empty dir", t_full, "cp -a", t_cp))
    rows.append((f"incremental restore ({changed} files changed)", t_incr,
                 "full restore", t_full))

    fs_type = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(work)],
                             capture_output=True, text=True, check=False).stdout.strip()
    print(f"\nDate: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; command: "
          f"`python bench/snapshot.py --size-gb {args.size_gb:g} --repeat {args.repeat}`"
          f" (median of {args.repeat} cold runs per step)")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"{fs_type} at {work}, Python {platform.python_version()}")
    print(f"Tree: {stats['files']} files, {stats['bytes'] / (1 << 30):.2f} GiB "
          f"({int(SMALL_PER_GB * args.size_gb)} of 1-64 KiB, {LARGE_FILES} large)")
    print("Caches: " + ("dropped before every timed step (cold)." if dropped_all
                        else "NOT dropped (not root?): warm-cache figures."))
    print()
    print("| step | ccci | baseline | baseline time | ccci / baseline |")
    print("|---|---:|---|---:|---:|")
    for name, ours, baseline, theirs in rows:
        print(f"| {name} | {ours:.2f} s | {baseline} | {theirs:.2f} s | {fmt_ratio(ours, theirs)} |")

    if not args.keep:
        if created:
            shutil.rmtree(work)
        else:
            for path in (store, cp_dir, restored):
                shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"\nkept: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
