"""`ccci init`: a new registry with the layout the controller expects and a commented ccci.yaml."""

from __future__ import annotations

from pathlib import Path

from controller.registry.store import init_registry


def create_registry(path: Path, *, base_domain: str | None = None) -> None:
    init_registry(path, base_domain=base_domain)
