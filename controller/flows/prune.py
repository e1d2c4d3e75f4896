"""Disk pruning that knows what is warm and what is live: cold leftovers, dead
runs' work dirs and images — never a warm app's volume, never an image a live or data-warm app
needs, never anything while a run is in flight on it."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.flows import cleanup
from controller.flows.warm_apps import read_warm_state
from controller.registry.settings import Settings, load_settings
from controller.registry.settings_schema import defaults, schema_of
from controller.runtime import engine, images
from controller.runtime.images import Image
from controller.util.alerts import clear_alert, raise_alert
from controller.util.errors import CcciError, ExternalError
from controller.util.files import read_json
from controller.util.locks import exclusive_if_free
from controller.util.paths import StateDir

log = logging.getLogger(__name__)

DISK_ALERT = "disk-low"
IMAGE_MODES = tuple(schema_of("limits.prune_images")["enum"])
_LIMITS = defaults()["limits"]  # without a registry, prune as one with no `limits` would


@dataclass(frozen=True)
class PrunePolicy:
    images: str = _LIMITS["prune_images"]  # one of IMAGE_MODES
    keep_images: tuple[str, ...] = tuple(_LIMITS["prune_keep_images"])  # fnmatch patterns never removed
    min_free_gb: float = _LIMITS["disk_min_free_gb"]


def policy_from_settings(settings: Settings, *, images: str | None = None) -> PrunePolicy:
    """The registry's `limits.*` prune settings; `images` overrides `limits.prune_images`."""
    limits = settings.limits
    return PrunePolicy(images=images or limits.prune_images, keep_images=limits.prune_keep_images,
                       min_free_gb=limits.disk_min_free_gb)


def policy_for_registry(registry_path: Path | None, *, images: str | None = None) -> PrunePolicy:
    """The prune policy of a registry clone's ccci.yaml, or the defaults without one."""
    if registry_path is None:
        return replace(PrunePolicy(), images=images) if images else PrunePolicy()
    return policy_from_settings(load_settings(registry_path), images=images)


@dataclass
class PruneItem:
    kind: str  # app | workdir | image
    name: str
    reason: str  # why it may go, or why it stays
    removed: bool = False
    error: str | None = None


@dataclass
class PruneReport:
    dry_run: bool
    removed: list[PruneItem] = field(default_factory=list)
    kept: list[PruneItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # whole steps left out, and why
    free_before: dict[str, int] = field(default_factory=dict)
    free_after: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[PruneItem]:
        return [item for item in self.removed if item.error]

    def to_json(self) -> dict[str, Any]:
        def items(rows: list[PruneItem]) -> list[dict[str, Any]]:
            return [{"kind": r.kind, "name": r.name, "reason": r.reason, "removed": r.removed,
                     "error": r.error} for r in rows]
        return {"dry_run": self.dry_run, "removed": items(self.removed), "kept": items(self.kept),
                "skipped": self.skipped, "free_before": self.free_before, "free_after": self.free_after}


# -- pure decisions ----------------------------------------------------------------------------

def _names(image: Image) -> list[str]:
    """Every name an operator might write a keep pattern against: `repo:tag` and `repo`."""
    return [n for tag in image.tags for n in (tag, tag.rsplit(":", 1)[0])]


def plan_images(found: Iterable[Image], *, used_ids: set[str], live_refs: set[str],
                warm_refs: dict[str, str], policy: PrunePolicy,
                hold_tagged: str | None) -> tuple[list[tuple[Image, str]], list[tuple[Image, str]]]:
    """Which images may go (with why) and which tagged ones stay (with why). `warm_refs` maps an
    image name to the warm app or live infra that needs it; `hold_tagged` says why no otherwise
    unused tagged image may go right now (a run in flight may be about to deploy it)."""
    remove: list[tuple[Image, str]] = []
    keep: list[tuple[Image, str]] = []
    if policy.images == "none":
        return remove, keep
    for image in found:
        if image.id in used_ids:
            if image.tags and policy.images == "unused":
                keep.append((image, "a container uses it"))
            continue
        if not image.tags:
            remove.append((image, "dangling (no tag, no container)"))
            continue
        if policy.images != "unused":
            continue
        live = [t for t in image.tags if t in live_refs]
        needed = sorted({warm_refs[t] for t in image.tags if t in warm_refs})
        pinned = [n for n in _names(image) for pattern in policy.keep_images if fnmatch.fnmatchcase(n, pattern)]
        if live:
            keep.append((image, "a live service names it"))
        elif needed:
            keep.append((image, f"needed to reattach {', '.join(needed)}"))
        elif pinned:
            keep.append((image, "matches limits.prune_keep_images"))
        elif hold_tagged:
            keep.append((image, hold_tagged))
        else:
            remove.append((image, "tagged, and nothing live, warm or in flight uses it"))
    return remove, keep


# -- facts -------------------------------------------------------------------------------------

def warm_image_refs(state: StateDir) -> tuple[dict[str, str], list[str]]:
    """{image name: app} that data-warm apps (with a last-known-good) and the live infra need to
    redeploy, plus the warm apps that have no image record (so tagged images cannot be judged)."""
    refs: dict[str, str] = {}
    unknown: list[str] = []
    warm_apps = sorted(p.name for p in state.snapshots.iterdir() if p.is_dir()) if state.snapshots.is_dir() else []
    for app in warm_apps:
        recorded = read_warm_state(state, app).get("images")
        if not isinstance(recorded, list):
            unknown.append(app)
            continue
        refs.update({images.normalise_ref(str(ref)): app for ref in recorded})
    infra = state.infra
    for path in sorted(infra.glob("*.json")) if infra.is_dir() else []:
        doc = read_json(path)
        for ref in doc.get("images") or [] if isinstance(doc, dict) else []:
            refs[images.normalise_ref(str(ref))] = str(doc.get("app") or path.stem)
    return refs, unknown


def free_space(state: StateDir) -> dict[str, int]:
    """Free bytes where the controller and the engine keep data (the engine's data root only
    when it is on this host)."""
    out = {}
    roots = [state.root]
    with contextlib.suppress(CcciError):  # no engine: the state dir alone
        roots.append(Path(engine.data_root()))
    devices = set()
    for root in roots:
        if root.exists() and root.stat().st_dev not in devices:  # one line per filesystem
            devices.add(root.stat().st_dev)
            out[str(root)] = shutil.disk_usage(root).free
    return out


def disk_low(free: dict[str, int], min_free_gb: float) -> list[str]:
    limit = int(min_free_gb * 1024**3)
    return [f"{path} has {value / 1024**3:.1f} GiB free (limits.disk_min_free_gb is {min_free_gb:g})"
            for path, value in sorted(free.items()) if value < limit]


# -- the prune ---------------------------------------------------------------------------------

def prune(state: StateDir, policy: PrunePolicy, *, dry_run: bool = False) -> PruneReport:
    """Remove what no run, warm app or live infra needs; say what stayed and why."""
    report = PruneReport(dry_run=dry_run, free_before=free_space(state))
    for app, run in sorted(cleanup.stale_cold_apps(state).items()):  # as at start-up
        item = PruneItem("app", app, f"cold app whose run {run or '?'} is not in flight")
        report.removed.append(item)
        if not dry_run:
            _attempt(item, functools.partial(cleanup.remove_cold_app, app))
    with exclusive_if_free(state.prune_gate) as quiescent:
        if not quiescent:
            report.skipped.append("runs are in flight: their work dirs and tagged images stay")
        else:
            _prune_workdirs(state, report, dry_run)
        _prune_images(state, policy, report, dry_run, quiescent)
    report.free_after = report.free_before if dry_run else free_space(state)
    return report


def _attempt(item: PruneItem, action: Callable[[], object]) -> None:
    try:
        action()
        item.removed = True
    except (CcciError, OSError) as exc:
        item.error = exc.message if isinstance(exc, CcciError) else str(exc)
        log.warning("prune: could not remove %s %s: %s", item.kind, item.name, item.error)


def _prune_workdirs(state: StateDir, report: PruneReport, dry_run: bool) -> None:
    work = state.work
    for path in sorted(work.iterdir()) if work.is_dir() else []:
        item = PruneItem("workdir", str(path), "left by a run that is no longer in flight")
        report.removed.append(item)
        if not dry_run:
            _attempt(item, functools.partial(shutil.rmtree, path))


def _prune_images(state: StateDir, policy: PrunePolicy, report: PruneReport, dry_run: bool,
                  quiescent: bool) -> None:
    if policy.images == "none":
        report.skipped.append("images: limits.prune_images is none")
        return
    warm_refs, unknown = warm_image_refs(state)
    hold = None
    if not quiescent:
        hold = "a run is in flight and may be about to deploy it"
    elif unknown:
        hold = f"no image record for {', '.join(unknown)} yet (a rewarm writes one)"
    remove, keep = plan_images(
        images.list_images(), used_ids=images.used_image_ids(), live_refs=images.service_image_refs(),
        warm_refs=warm_refs, policy=policy, hold_tagged=hold)
    report.kept.extend(PruneItem("image", ", ".join(i.tags) or i.id[:19], why) for i, why in keep)
    for image, why in remove:
        item = PruneItem("image", ", ".join(image.tags) or image.id[:19], why)
        if dry_run:
            report.removed.append(item)
            continue
        try:
            _remove_image(image)
            item.removed = True
            report.removed.append(item)
        except ExternalError as exc:
            if exc.returncode != 409:
                item.error = exc.message
                report.removed.append(item)
                log.warning("prune: could not remove image %s: %s", item.name, exc.message)
                continue
            # The engine knows a user we did not see (a child image, a container created
            # since we looked): it stays, which is what prune wants.
            item.reason = f"the engine keeps it: {exc.stderr or exc.message}"
            report.kept.append(item)


def _remove_image(image: Image) -> None:
    """An image goes with its last tag; a dangling one by id. Never forced."""
    for ref in image.tags or (image.id,):
        images.remove_image(ref)


def prune_and_alert(state: StateDir, policy: PrunePolicy) -> PruneReport:
    """The daemon's prune: prune, then alert while the disk stays low."""
    report = prune(state, policy)
    for item in report.removed:
        if item.removed:
            log.info("prune: removed %s %s (%s)", item.kind, item.name, item.reason)
    still_low = disk_low(report.free_after, policy.min_free_gb)
    if still_low:
        raise_alert(state, DISK_ALERT, "disk space is low after pruning: " + "; ".join(still_low))
    else:
        clear_alert(state, DISK_ALERT)
    return report
