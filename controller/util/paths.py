"""The controller's state directory: every path under it is named here and nowhere else."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from controller.util.names import check_app_name, check_recipe_name

DEFAULT_STATE_DIR = "/var/lib/ccci"


@dataclass(frozen=True)
class StateDir:
    """`--state-dir` / `CCCI_STATE_DIR`: snapshots, locks, alerts, recipe mirrors, in-flight
    markers, logs, and the small files that let a restarted controller pick up where it was."""

    root: Path

    @classmethod
    def from_env(cls, explicit: str | Path | None = None) -> StateDir:
        raw = explicit or os.environ.get("CCCI_STATE_DIR") or DEFAULT_STATE_DIR
        return cls(Path(raw).absolute())

    # -- folders --------------------------------------------------------------------------------

    @property
    def snapshots(self) -> Path:
        """The snapshot store: `<app>/last-known-good → gen-…`, volumes-state.json."""
        return self.root / "snapshots"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts"

    @property
    def recipes(self) -> Path:
        """Bare mirrors of the recipes' repositories."""
        return self.root / "recipes"

    @property
    def runs(self) -> Path:
        """In-flight markers: `<run>.json` beside a `<run>.lock` held while the run lives."""
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def work(self) -> Path:
        """Per-run checkouts; removed when the run ends, by prune after a crash."""
        return self.root / "work"

    @property
    def queue(self) -> Path:
        """Work queued for the daemon that must survive a crash (rewarms)."""
        return self.root / "queue"

    @property
    def warm(self) -> Path:
        """Per warm app: what commit's data its volumes hold, the images it runs."""
        return self.root / "warm"

    @property
    def infra(self) -> Path:
        """The live infra (Keycloak): what was last deployed healthy, the local secret key."""
        return self.root / "infra"

    @property
    def serve(self) -> Path:
        """Daemon heartbeats and the last run of each periodic job."""
        return self.root / "serve"

    @property
    def forge(self) -> Path:
        """The forge: the queue of reports not yet delivered, the poll cursor, its health."""
        return self.root / "forge"

    # -- files ----------------------------------------------------------------------------------

    def recipe_mirror(self, recipe: str) -> Path:
        return self.recipes / f"{check_recipe_name(recipe)}.git"

    def recipe_lock(self, recipe: str) -> Path:
        return self.locks / f"recipe-{check_recipe_name(recipe)}.lock"

    def app_lock(self, app: str) -> Path:
        return self.locks / f"app-{check_app_name(app)}.lock"

    @property
    def prune_gate(self) -> Path:
        """Held shared by every run, exclusive by a prune of what runs may need (images)."""
        return self.locks / "prune.gate"

    def run_marker(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.json"

    def run_lock(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.lock"

    def workdir(self, key: str) -> Path:
        return self.work / key

    def rewarm_request(self, recipe: str) -> Path:
        return self.queue / f"rewarm-{check_recipe_name(recipe)}"

    def warm_state(self, app: str) -> Path:
        return self.warm / f"{check_app_name(app)}.json"

    def infra_state(self, app: str) -> Path:
        return self.infra / f"{check_app_name(app)}.json"

    @property
    def infra_secret_key(self) -> Path:
        return self.infra / "secret.key"

    def heartbeat(self, pid: int) -> Path:
        return self.serve / f"{pid}.json"

    @property
    def jobs(self) -> Path:
        """When each of serve's periodic jobs (sweep, prune, …) last ran."""
        return self.serve / "jobs.json"

    @property
    def forge_outbox(self) -> Path:
        """One file per report not yet on the forge (a status, a comment), in the order made."""
        return self.forge / "outbox"

    @property
    def forge_outbox_lock(self) -> Path:
        return self.locks / "forge-outbox.lock"

    @property
    def forge_cursor(self) -> Path:
        return self.forge / "cursor.json"

    @property
    def forge_health(self) -> Path:
        return self.forge / "health.json"

    def results_index(self, registry_root: Path) -> Path:
        """The derived index of one registry clone's results (a cache: rebuilt when missing)."""
        key = hashlib.sha256(str(registry_root.resolve()).encode()).hexdigest()[:16]
        return self.root / "cache" / f"results-{key}.json"

    @property
    def legacy_sweep_file(self) -> Path:
        """Where the sweep kept its last run before the job table (read, never written)."""
        return self.root / "sweep.json"

    @property
    def log_file(self) -> Path:
        return self.logs / "ccci.log"

    @property
    def owner_id(self) -> str:
        """Names this controller's objects (label `ccci.owner`): start-up teardown and the
        leak check only judge objects whose in-flight markers live in this state dir."""
        return hashlib.sha256(f"{socket.gethostname()}:{self.root.resolve()}".encode()).hexdigest()[:12]

    def ensure(self) -> StateDir:
        for sub in (self.snapshots, self.locks, self.alerts, self.recipes, self.runs, self.logs):
            sub.mkdir(parents=True, exist_ok=True)
        return self
