"""Where an app's snapshots live: generations, the last-known-good link, metadata, leftovers."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.snapshots import fsio
from controller.snapshots.manifest import (
    MANIFEST_FORMAT,
    SHA256_RE,
    ManifestEntry,
    check_volume_name,
    digest,
    parse_manifest,
    sort_key,
    summarise,
)
from controller.util.errors import BadInput, CcciError, CheckFailed
from controller.util.locks import exclusive
from controller.util.names import check_app_name
from controller.util.timeutil import utcnow

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
# Parsed manifests kept in the process, by the sha256 of the file's bytes: a take replacing
# the last-known-good needs the manifest the previous take wrote (or the restore before it
# read), and parsing 20 000 lines costs about a second. Each holds ~10 MB at that size.
PARSED_CACHE_SIZE = 4


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
    # No volumes is a valid, empty snapshot: a stateless recipe's warm app has nothing to keep.
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


def link_target(where: Path) -> str | None:
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


def new_generation_name() -> str:
    return f"{GEN_PREFIX}{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def swap_link(where: Path, generation: str) -> None:
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


def meta_document(info: SnapshotInfo, generation: str) -> bytes:
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
    target = link_target(where)
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
    manifests = _parsed_manifest(data, info.manifest_sha256, str(manifest_path))
    if set(manifests) != set(info.volumes):
        raise CheckFailed(f"snapshot of {app}: the manifest and {META_FILE} list other volumes")
    for name, entries in manifests.items():
        if summarise(entries) != info.volumes[name]:
            raise CheckFailed(f"snapshot of {app}: volume {name} summary differs from its manifest")
    return Snapshot(info, generation, manifests)


_parsed_lock = threading.Lock()
_parsed: OrderedDict[str, dict[str, tuple[ManifestEntry, ...]]] = OrderedDict()


def remember_manifest(sha256: str, manifests: Mapping[str, list[ManifestEntry]]) -> None:
    """Keep what parse_manifest would return for the manifest file whose digest is `sha256`.

    The caller holds the entries it rendered into that file; they are kept in the file's
    order (render_manifest's), so a later hit returns exactly what a parse would.
    """
    frozen = {name: tuple(sorted(entries, key=lambda e: sort_key(e.path)))
              for name, entries in sorted(manifests.items())}
    with _parsed_lock:
        _parsed[sha256] = frozen
        _parsed.move_to_end(sha256)
        while len(_parsed) > PARSED_CACHE_SIZE:
            _parsed.popitem(last=False)


def forget_manifests() -> None:
    """Empty the parsed-manifest cache (tests; a process that wants its memory back)."""
    with _parsed_lock:
        _parsed.clear()


def _parsed_manifest(data: bytes, sha256: str, where: str) -> dict[str, list[ManifestEntry]]:
    """parse_manifest(data), from the cache when these very bytes were parsed or written.

    `sha256` must be the digest of `data` (open_snapshot has just checked it): the key is
    the content, so a manifest rewritten or damaged on disk is a miss and is parsed.
    """
    with _parsed_lock:
        hit = _parsed.get(sha256)
        if hit is not None:
            _parsed.move_to_end(sha256)
    if hit is not None:
        log.debug("%s: parsed manifest served from memory", where)
        return {name: list(entries) for name, entries in hit.items()}
    manifests = parse_manifest(data, where)
    remember_manifest(sha256, manifests)
    return manifests


def snapshot_manifest(store_root: Path, app: str) -> dict[str, list[ManifestEntry]]:
    """The last-known-good's manifest per volume (digest-checked), for proofs and tests."""
    if not app_dir(store_root, app).is_dir():
        raise CheckFailed(f"{app} has no last-known-good snapshot")
    with locked(store_root, app) as where:
        return open_snapshot(where, app).manifests
