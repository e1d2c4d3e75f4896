"""The snapshot store of one app: generations, the last-known-good link, takes and verifies."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.snapshots import fsio
from controller.snapshots.check import compare_tree
from controller.snapshots.copy import copy_tree, remove_tree
from controller.snapshots.manifest import (
    MANIFEST_FORMAT,
    SHA256_RE,
    ManifestEntry,
    check_commit,
    check_volume_name,
    digest,
    parse_manifest,
    render_manifest,
    summarise,
)
from controller.util.errors import BadInput, CcciError, CheckFailed
from controller.util.locks import exclusive
from controller.util.paths import check_app_name
from controller.util.timeutil import now_iso, utcnow

log = logging.getLogger(__name__)

LAST_KNOWN_GOOD = "last-known-good"
GEN_PREFIX = "gen-"
LINK_TEMP_PREFIX = ".last-known-good.tmp-"
LOCK_FILE = ".lock"
STATE_FILE = "volumes-state.json"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.jsonl"
VOLUMES_DIR = "volumes"
META_CAP = 1 << 20
MANIFEST_CAP = 256 << 20
BLOCK = 4096


@dataclass(frozen=True)
class SnapshotInfo:
    app: str
    path: Path  # <store_root>/<app>/last-known-good, a symlink to the generation dir
    commit: str  # 40-hex commit whose data this is
    volumes: dict[str, dict[str, int]]  # {volume_name: {"files": n, "bytes": n}}
    manifest_sha256: str  # digest over the sorted per-entry manifest
    taken_at: str  # ISO Z
    taken_by_run: str | None


@dataclass(frozen=True)
class Snapshot:
    """An opened last-known-good: its metadata, its generation dir and its parsed manifest."""

    info: SnapshotInfo
    generation: Path
    manifests: dict[str, list[ManifestEntry]]

    def volume_dir(self, name: str) -> Path:
        return self.generation / VOLUMES_DIR / name


def app_dir(store_root: Path, app: str) -> Path:
    return store_root.absolute() / check_app_name(app)


@contextlib.contextmanager
def locked(store_root: Path, app: str) -> Iterator[Path]:
    """Hold the app's store lock (a killed holder releases it) and yield the app dir."""
    where = app_dir(store_root, app)
    where.mkdir(parents=True, exist_ok=True)
    with exclusive(where / LOCK_FILE, what=f"snapshot store of {app}"):
        yield where


@contextlib.contextmanager
def os_errors_fail(what: str) -> Iterator[None]:
    """An OSError (disk full, I/O error, a file vanishing) becomes a CheckFailed sentence."""
    try:
        yield
    except CcciError:
        raise
    except OSError as exc:
        raise CheckFailed(f"{what}: {exc}") from exc


# -- inputs -----------------------------------------------------------------------------------


def resolve_volumes(
    store_root: Path, volumes: dict[str, Path], allowed_root: Path | None
) -> dict[str, Path]:
    """Check names and paths; return real, existing directories, none overlapping the store."""
    if not volumes:
        raise BadInput("no volumes given")
    store = store_root.absolute().resolve()
    allowed = allowed_root.resolve() if allowed_root is not None else None
    resolved: dict[str, Path] = {}
    for name, path in volumes.items():
        check_volume_name(name)
        real = Path(path).resolve()
        if allowed is not None and not real.is_relative_to(allowed):
            raise BadInput(
                f"volume {name}: {path} resolves to {real}; refuse a volume path outside "
                f"the engine's data root {allowed}"
            )
        if not real.is_dir():
            raise BadInput(f"volume {name}: {path} is not an existing directory")
        if real.is_relative_to(store) or store.is_relative_to(real):
            raise BadInput(f"volume {name}: {path} overlaps the snapshot store {store}")
        resolved[name] = real
    paths = sorted(resolved.values())
    for a, b in itertools.pairwise(paths):
        if b.is_relative_to(a):
            raise BadInput(f"volume paths {a} and {b} overlap")
    return resolved


# -- the last-known-good link and its leftovers -----------------------------------------------


def _link_target(where: Path) -> str | None:
    link = where / LAST_KNOWN_GOOD
    try:
        st = link.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        raise CheckFailed(f"{link}: not a symlink; the snapshot store needs an operator")
    target = os.readlink(link)
    if "/" in target or not target.startswith(GEN_PREFIX):
        raise CheckFailed(f"{link}: points at {target!r}, not at a generation of this store")
    return target


def remove_leftovers(where: Path) -> list[str]:
    """Delete what an interrupted take or write left: unlinked generations and temp names.

    Call only under the app's lock: then no take is running, so anything the
    last-known-good link does not name is garbage.
    """
    current = _link_target(where)
    removed: list[str] = []
    for name in sorted(fsio.iter_dir_names(where)):
        path = where / name
        if name.startswith(GEN_PREFIX) and name != current:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        elif name.startswith((LINK_TEMP_PREFIX, fsio.TEMP_PREFIX)):
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        fsio.fsync_path(where)
        log.info("snapshot store %s: removed leftovers of an interrupted operation: %s",
                 where, ", ".join(removed))
    return removed


def _new_generation_name() -> str:
    return f"{GEN_PREFIX}{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _swap_link(where: Path, generation: str) -> None:
    """Point last-known-good at `generation` in one rename; old or new, never neither."""
    temp = where / f"{LINK_TEMP_PREFIX}{secrets.token_hex(4)}"
    os.symlink(generation, temp)
    try:
        os.replace(temp, where / LAST_KNOWN_GOOD)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


# -- metadata ---------------------------------------------------------------------------------


def _meta_document(info: SnapshotInfo, generation: str) -> bytes:
    doc = {
        "format": MANIFEST_FORMAT,
        "app": info.app,
        "commit": info.commit,
        "generation": generation,
        "manifest_sha256": info.manifest_sha256,
        "taken_at": info.taken_at,
        "taken_by_run": info.taken_by_run,
        "volumes": info.volumes,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _parse_meta(data: bytes, where: Path, path: Path, app: str) -> SnapshotInfo:
    try:
        doc: Any = json.loads(data)
    except ValueError as exc:
        raise CheckFailed(f"{where}: not valid JSON ({exc})") from exc
    ok = (
        isinstance(doc, dict)
        and doc.get("format") == MANIFEST_FORMAT
        and doc.get("app") == app
        and isinstance(doc.get("commit"), str)
        and isinstance(doc.get("manifest_sha256"), str)
        and SHA256_RE.match(doc["manifest_sha256"]) is not None
        and isinstance(doc.get("taken_at"), str)
        and isinstance(doc.get("taken_by_run"), str | None)
        and isinstance(doc.get("volumes"), dict)
        and all(
            isinstance(v, dict) and set(v) == {"files", "bytes"}
            and all(isinstance(n, int) for n in v.values())
            for v in doc["volumes"].values()
        )
    )
    if not ok:
        raise CheckFailed(f"{where}: not the metadata of a snapshot of {app}")
    return SnapshotInfo(
        app=app,
        path=path,
        commit=doc["commit"],
        volumes={k: dict(v) for k, v in doc["volumes"].items()},
        manifest_sha256=doc["manifest_sha256"],
        taken_at=doc["taken_at"],
        taken_by_run=doc["taken_by_run"],
    )


def read_info(where: Path, app: str) -> tuple[SnapshotInfo, Path] | None:
    """The last-known-good's metadata and generation dir, or None when there is none."""
    target = _link_target(where)
    if target is None:
        return None
    generation = where / target
    meta = generation / META_FILE
    try:
        data = fsio.read_capped(meta, META_CAP)
    except FileNotFoundError as exc:
        raise CheckFailed(f"{meta}: missing; the last-known-good of {app} is damaged") from exc
    return _parse_meta(data, meta, where / LAST_KNOWN_GOOD, app), generation


def open_snapshot(where: Path, app: str) -> Snapshot:
    """Read the last-known-good's manifest and check it against the digest in its metadata."""
    found = read_info(where, app)
    if found is None:
        raise CheckFailed(f"{app} has no last-known-good snapshot")
    info, generation = found
    manifest_path = generation / MANIFEST_FILE
    try:
        data = fsio.read_capped(manifest_path, MANIFEST_CAP)
    except FileNotFoundError as exc:
        raise CheckFailed(f"{manifest_path}: missing") from exc
    if digest(data) != info.manifest_sha256:
        raise CheckFailed(
            f"snapshot of {app}: {manifest_path} does not match the digest in {META_FILE}"
        )
    manifests = parse_manifest(data, str(manifest_path))
    if set(manifests) != set(info.volumes):
        raise CheckFailed(f"snapshot of {app}: the manifest and {META_FILE} list other volumes")
    for name, entries in manifests.items():
        if summarise(entries) != info.volumes[name]:
            raise CheckFailed(f"snapshot of {app}: volume {name} summary differs from its manifest")
    return Snapshot(info, generation, manifests)


# -- the disk guard ---------------------------------------------------------------------------


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding `path` (tests replace this to fake a full disk)."""
    return shutil.disk_usage(path).free


def disk_usage(root: Path) -> int:
    """Allocated bytes below `root`, each hard-linked inode once (what a raw copy needs)."""
    total = 0
    counted: set[tuple[int, int]] = set()
    root_fd = fsio.open_root(root)
    try:
        for seen in fsio.scan(root_fd).values():
            if seen.type == "f" and seen.nlink > 1:
                if seen.inode in counted:
                    continue
                counted.add(seen.inode)
            if seen.type == "f":
                # Rounded up to whole blocks, but no more than a sparse source allocates.
                total += min(-(-seen.size // BLOCK) * BLOCK, max(seen.blocks, BLOCK))
            elif seen.type == "d":
                total += BLOCK
    finally:
        os.close(root_fd)
    return total


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


def check_free_space(where: Path, app: str, sources: dict[str, Path], min_free_bytes: int) -> None:
    need = sum(disk_usage(src) for src in sources.values())
    free = _free_bytes(where)
    if need + min_free_bytes > free:
        keep = f" plus {_human(min_free_bytes)} that must stay free" if min_free_bytes else ""
        raise CheckFailed(
            f"not enough disk space to snapshot {app}: a copy needs {_human(need)}{keep}, "
            f"but only {_human(free)} is free on {where}; the old snapshot is kept"
        )


# -- take, current, verify --------------------------------------------------------------------


def take_snapshot(
    store_root: Path,
    app: str,
    volumes: dict[str, Path],
    *,
    commit: str,
    run_id: str | None = None,
    min_free_bytes: int = 0,
    allowed_root: Path | None = None,
) -> SnapshotInfo:
    """Copy the (undeployed) app's volumes into a new generation and make it last-known-good."""
    check_commit(commit)
    sources = resolve_volumes(store_root, volumes, allowed_root)
    with locked(store_root, app) as where:
        remove_leftovers(where)
        previous = _link_target(where)
        check_free_space(where, app, sources, min_free_bytes)
        name = _new_generation_name()
        generation = where / name
        try:
            info = _write_generation(where, generation, app, sources, commit, run_id)
            _swap_link(where, name)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                shutil.rmtree(generation)
            if isinstance(exc, OSError) and not isinstance(exc, CcciError):
                raise CheckFailed(f"snapshot of {app} failed and was discarded: {exc}") from exc
            raise
        # The new link is durable before the old generation goes: a crash leaves one of them.
        fsio.fsync_path(where)
        if previous is not None and previous != name:
            clock = _Stopwatch()
            remove_tree(where / previous)
            fsio.fsync_path(where)
            log.info("snapshot of %s: old generation removed in %.2fs", app, clock.lap())
        # The volumes were just copied whole, so they equal this snapshot.
        write_state(where, clean=True, manifest_sha256=info.manifest_sha256)
        log.info("snapshot of %s taken at %s (commit %s, %s)", app, name, commit[:12],
                 info.volumes)
        return info


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
) -> SnapshotInfo:
    clock = _Stopwatch()
    os.mkdir(generation, 0o700)
    os.mkdir(generation / VOLUMES_DIR, 0o700)
    manifests = {
        name: copy_tree(src, generation / VOLUMES_DIR / name)
        for name, src in sorted(sources.items())
    }
    manifest = render_manifest(manifests)
    fsio.write_durably(generation / MANIFEST_FILE, manifest)
    copied = clock.lap()
    # One syncfs makes every copied file and directory durable before it is verified.
    fsio.sync_filesystem(generation)
    synced = clock.lap()
    for name, entries in manifests.items():
        problems = compare_tree(
            generation / VOLUMES_DIR / name, entries, label=f"{name}: ", drop_cache=True
        )
        if problems:
            raise CheckFailed(f"the new snapshot of {app} does not verify: {problems[0]}")
    log.info("snapshot of %s: copied in %.2fs, synced in %.2fs, verified in %.2fs",
             app, copied, synced, clock.lap())
    info = SnapshotInfo(
        app=app,
        path=where / LAST_KNOWN_GOOD,
        commit=commit,
        volumes={name: summarise(entries) for name, entries in manifests.items()},
        manifest_sha256=digest(manifest),
        taken_at=now_iso(),
        taken_by_run=run_id,
    )
    fsio.write_durably(generation / META_FILE, _meta_document(info, generation.name))
    fsio.fsync_path(generation / VOLUMES_DIR)
    fsio.fsync_path(generation)
    return info


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


# -- clean/dirty state of the live volumes ----------------------------------------------------


def write_state(where: Path, *, clean: bool, manifest_sha256: str | None) -> None:
    doc = {"clean": clean, "manifest_sha256": manifest_sha256, "updated_at": now_iso()}
    fsio.write_durably(where / STATE_FILE, (json.dumps(doc, sort_keys=True) + "\n").encode())


def mark_volumes_dirty(store_root: Path, app: str) -> None:
    """The live volumes may differ from the last-known-good (an upgrade or restore is running)."""
    with locked(store_root, app) as where:
        write_state(where, clean=False, manifest_sha256=None)


def mark_volumes_clean(store_root: Path, app: str, manifest_sha256: str) -> None:
    """The live volumes equal the snapshot with this digest."""
    if not SHA256_RE.match(manifest_sha256):
        raise BadInput(f"{manifest_sha256!r} is not a sha256 digest")
    with locked(store_root, app) as where:
        write_state(where, clean=True, manifest_sha256=manifest_sha256)


def volumes_clean(store_root: Path, app: str) -> bool:
    """True only when marked clean against the current last-known-good's digest."""
    where = app_dir(store_root, app)
    try:
        doc = json.loads(fsio.read_capped(where / STATE_FILE, META_CAP))
    except (FileNotFoundError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("clean") is not True:
        return False
    found = read_info(where, app)
    return found is not None and doc.get("manifest_sha256") == found[0].manifest_sha256


def snapshot_manifest(store_root: Path, app: str) -> dict[str, list[ManifestEntry]]:
    """The last-known-good's manifest per volume (digest-checked), for proofs and tests."""
    if not app_dir(store_root, app).is_dir():
        raise CheckFailed(f"{app} has no last-known-good snapshot")
    with locked(store_root, app) as where:
        return open_snapshot(where, app).manifests
