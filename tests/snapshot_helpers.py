"""Trees for snapshot tests: one with every kind of entry, and bulk trees for fault injection."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from controller.snapshots import volume_manifest
from controller.snapshots.index import RACY_NS
from controller.snapshots.layout import LAST_KNOWN_GOOD, MANIFEST_FILE, META_FILE
from controller.snapshots.manifest import digest, render_manifest
from tests.helpers import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
APP = "warm-notes"
FIXED_NS = 1_700_000_000_123_456_789  # every entry of a fresh rich tree has this mtime


def write(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def build_rich_tree(root: Path, *, big_bytes: int = 3 << 20) -> None:
    """Every kind of entry a volume can hold, with odd modes and foreign owners."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    write(root / "docs/readme.txt", b"read me\n")
    write(root / "config/app.conf", b"setting = 1\n", 0o600)
    write(root / "bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
    write(root / "bin/plain", b"#!/bin/sh\necho plain\n", 0o755)
    write(root / "data/db/file", b"rows" * 100, 0o600, (999, 999))
    os.chown(root / "data/db", 999, 999)
    os.chmod(root / "data/db", 0o700)
    write(root / "data/pg/pgdata", b"pg", 0o640, (70, 70))
    os.chown(root / "data/pg", 70, 70)
    write(root / "data/keep.bin", rng.randbytes(5000))
    write(root / "data/stealth.bin", rng.randbytes(4096))
    write(root / "data/empty.bin", b"")
    write(root / "data/big.bin", rng.randbytes(big_bytes))
    write(root / "link-me.txt", b"I will become a symlink\n")
    write(root / "cache/a/1", b"one")
    write(root / "cache/b", b"two")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "empty/nested/deeper").mkdir(parents=True)
    # A hard-link pair in different directories.
    write(root / "hl/one", b"shared inode\n", 0o640, (999, 70))
    (root / "hl/sub").mkdir()
    os.link(root / "hl/one", root / "hl/sub/two")
    # Symlinks: relative, dangling, absolute (never followed), and to a directory.
    os.symlink("../docs/readme.txt", root / "bin/readme")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("/etc/hostname", root / "absolute")
    os.symlink("data", root / "data-link")
    os.lchown(root / "dangling", 999, 999)
    # A sparse file: 32 MiB long, two small islands of data.
    with open(root / "data/sparse.img", "wb") as handle:
        handle.seek(1 << 20)
        handle.write(b"island one")
        handle.seek(20 << 20)
        handle.write(b"island two")
        handle.truncate(32 << 20)
    set_all_mtimes(root, FIXED_NS)


def set_all_mtimes(root: Path, ns: int) -> None:
    """Deepest first, so setting a child's time never disturbs a parent already set."""
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for path in [*paths, root]:
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def build_bulk_tree(root: Path, *, files: int = 3000, large: int = 2, large_bytes: int = 4 << 20,
                    seed: int = 1, hard_links: bool = True) -> None:
    """Many small files in nested dirs plus a few large ones (for fault injection); without
    `hard_links`, a replacing take patches the last generation instead of linking to it."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(files):
        sub = root / f"d{i % 37:02d}" / f"e{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}").write_bytes(rng.randbytes(rng.randint(0, 16 << 10)))
    for i in range(large):
        (root / f"large{i}.bin").write_bytes(rng.randbytes(large_bytes))
    for i in range(0, files, 97):
        os.symlink(f"f{i:05d}", root / f"d{i % 37:02d}" / f"e{i % 7}" / f"s{i:05d}")
    for i in range(0, files if hard_links else 0, 131):
        src = root / f"d{i % 37:02d}" / f"e{i % 7}" / f"f{i:05d}"
        os.link(src, root / f"d{i % 37:02d}" / f"h{i:05d}")


def mutate_bulk(root: Path, rng: random.Random, *, fraction: float) -> None:
    """Change, delete, add and chmod a fraction of a bulk tree's files, as an upgrade would."""
    files = sorted(p for p in root.rglob("f*") if p.is_file() and not p.is_symlink())
    for path in rng.sample(files, max(1, int(len(files) * fraction))):
        action = rng.choice(("rewrite", "delete", "chmod", "append"))
        if action == "rewrite":
            path.write_bytes(rng.randbytes(rng.randint(0, 16 << 10)))
        elif action == "delete":
            path.unlink()
        elif action == "chmod":
            os.chmod(path, 0o600)
        else:
            with open(path, "ab") as handle:
                handle.write(b"appended")
    for i in range(max(1, int(len(files) * fraction / 4))):
        (root / f"new-{rng.randrange(1 << 30):08x}-{i}").write_bytes(rng.randbytes(1000))
    victim = root / f"d{rng.randrange(37):02d}"
    if victim.is_dir() and rng.random() < 0.3:
        shutil.rmtree(victim)


def wait_past_racy_window(root: Path, deadline_s: float = 5.0) -> None:
    """Poll the clock until every entry below `root` changed over RACY_NS ago, so the live
    index a take or restore writes now vouches for all of them."""
    newest = max(os.lstat(p).st_ctime_ns for p in [root, *root.rglob("*")])
    wait_for(lambda: time.time_ns() > newest + RACY_NS, deadline_s,
             "the clock to move past the racy window", interval=0.01)


def generation_dirs(store: Path, app: str = APP) -> list[str]:
    return sorted(n for n in os.listdir(store / app) if n.startswith("gen-"))


def link_target(store: Path, app: str = APP) -> str:
    return os.readlink(store / app / LAST_KNOWN_GOOD)


def rewrite_manifest(store: Path, app: str, lines: list[dict[str, object]]) -> None:
    """Tamper with the last-known-good's manifest and keep its digest consistent."""
    generation = store / app / link_target(store, app)
    data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    (generation / MANIFEST_FILE).write_bytes(data)
    meta = json.loads((generation / META_FILE).read_text())
    meta["manifest_sha256"] = digest(data)
    (generation / META_FILE).write_text(json.dumps(meta))


def manifest_lines(store: Path, app: str = APP) -> list[dict[str, object]]:
    generation = store / app / link_target(store, app)
    return [json.loads(line) for line in (generation / MANIFEST_FILE).read_text().splitlines()]


def tree_digest(root: Path) -> str:
    """Digest of a live tree's full manifest (to prove a directory did not change)."""
    return digest(render_manifest({"x": volume_manifest(root)}))


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A child Python running `code` (argv: `args`) with the controller importable."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )

