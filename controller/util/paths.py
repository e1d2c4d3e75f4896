"""The controller's state directory and its layout (DESIGN §7)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from controller.util.errors import BadInput

RECIPE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RUN_ID_RE = re.compile(r"^(\d{8}T\d{6})-([a-z0-9][a-z0-9-]{0,62})-([0-9a-f]{6})$")
DEFAULT_STATE_DIR = "/var/lib/ccci"


def check_recipe_name(name: object, where: str = "recipe") -> str:
    if not isinstance(name, str) or not RECIPE_RE.match(name):
        raise BadInput(f"{where}: {name!r} is not a valid recipe name (lower-case letters, digits, '-')")
    return name


def check_app_name(name: object, where: str = "app") -> str:
    if not isinstance(name, str) or not APP_RE.match(name):
        raise BadInput(f"{where}: {name!r} is not a valid app name (lower-case letters, digits, '-')")
    return name


def run_hex(run_id: str) -> str:
    """The 6 hex digits that end a run id."""
    return run_id.rsplit("-", 1)[-1]


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def from_env(cls, explicit: str | Path | None = None) -> StateDir:
        raw = explicit or os.environ.get("CCCI_STATE_DIR") or DEFAULT_STATE_DIR
        return cls(Path(raw).absolute())

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts"

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def owner_id(self) -> str:
        """Names this controller's objects (label `ccci.owner`): start-up teardown and the
        leak check only judge objects whose in-flight markers live in this state dir."""
        import hashlib
        import socket

        return hashlib.sha256(f"{socket.gethostname()}:{self.root.resolve()}".encode()).hexdigest()[:12]

    @property
    def prune_gate(self) -> Path:
        """Held shared by every run, exclusive by a prune of what runs may need (images)."""
        return self.locks / "prune.gate"

    def app_lock(self, app: str) -> Path:
        return self.locks / f"app-{check_app_name(app)}.lock"

    def ensure(self) -> StateDir:
        for sub in (self.snapshots, self.locks, self.alerts, self.recipes, self.runs, self.logs):
            sub.mkdir(parents=True, exist_ok=True)
        return self
