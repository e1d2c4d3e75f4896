"""Images on the engine: what exists, what containers and services use, and removal."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from controller.runtime import engine


@dataclass(frozen=True)
class Image:
    id: str
    tags: tuple[str, ...]  # repo:tag names; empty for a dangling image
    size: int


def normalise_ref(ref: str) -> str:
    """`busybox` → `busybox:latest`, `x:1@sha256:…` → `x:1`: the form the engine tags images with."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def list_images() -> list[Image]:
    c = engine.client()
    raw = engine.call("list images", lambda: c.api.images()) or []
    out = []
    for item in raw:
        tags = tuple(t for t in (item.get("RepoTags") or []) if t and t != "<none>:<none>")
        out.append(Image(str(item["Id"]), tags, int(item.get("Size") or 0)))
    return out


def used_image_ids() -> set[str]:
    """Image ids of every container, running or not (the engine refuses to remove those anyway)."""
    c = engine.client()
    containers: list[dict[str, Any]] = engine.call(
        "list containers", lambda: c.api.containers(all=True)) or []
    return {str(item["ImageID"]) for item in containers if item.get("ImageID")}


def service_image_refs(app: str | None = None) -> set[str]:
    """Image references in live service specs (all services, or one app's)."""
    c = engine.client()
    filters = {"label": f"com.docker.stack.namespace={app}"} if app else None
    services = engine.call("list services", lambda: c.services.list(filters=filters)) or []
    refs = set()
    for svc in services:
        image = svc.attrs.get("Spec", {}).get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image")
        if image:
            refs.add(normalise_ref(str(image)))
    return refs


def remove_image(ref: str) -> None:
    """Remove a tag (the image goes with its last tag) or a dangling image by id; never forced,
    so the engine refuses (an ExternalError) when a container uses it."""
    c = engine.client()
    engine.call(f"remove image {ref[:80]}",
                functools.partial(c.api.remove_image, ref, force=False, noprune=False),
                missing_ok=True)
