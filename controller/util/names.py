"""Every name the controller derives: run ids, app names, and paths inside the registry."""

from __future__ import annotations

import hashlib
import os
import re
import socket

from controller.util.errors import BadInput

RECIPE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RUN_ID_RE = re.compile(r"^(\d{8}T\d{6})-([a-z0-9][a-z0-9-]{0,62})-([0-9a-f]{6})$")

# A repository on the forge, `owner/name`; never `.` or `..` (it becomes part of an API path).
FORGE_REPO = r"^(?!\.\.?/)[A-Za-z0-9_.-]{1,100}/(?!\.\.?$)[A-Za-z0-9_.-]{1,100}$"

WARM_PREFIX = "warm-"
# Registry folders; the controller and `ccci request` write only under these.
REQUESTS_DIR = "requests"
RESULTS_DIR = "results"
CANONICALS_DIR = "canonicals"
SNAPSHOT_INDEX_DIR = "snapshots-index"
SWEEP_DIR = "sweep"
REGISTRY_DIRS = (CANONICALS_DIR, SNAPSHOT_INDEX_DIR, REQUESTS_DIR, RESULTS_DIR, SWEEP_DIR)
SWEEP_RECORD_REL = f"{SWEEP_DIR}/last.yaml"  # the fleet's last sweep: one per night, whoever filed it

# A CI host's name, as a DNS label: it is a folder of the registry and part of commit messages.
HOST_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
HOST_ENV = "CCCI_HOST"


def check_recipe_name(name: object, where: str = "recipe") -> str:
    if not isinstance(name, str) or not RECIPE_RE.match(name):
        raise BadInput(f"{where}: {name!r} is not a valid recipe name (lower-case letters, digits, '-')")
    return name


def check_app_name(name: object, where: str = "app") -> str:
    if not isinstance(name, str) or not APP_RE.match(name):
        raise BadInput(f"{where}: {name!r} is not a valid app name (lower-case letters, digits, '-')")
    return name


def check_host_name(name: object, where: str = "--host") -> str:
    if not isinstance(name, str) or not HOST_RE.match(name):
        raise BadInput(f"{where}: {name!r} is not a valid host name (a DNS label: lower-case letters, "
                       "digits and '-', at most 63, not starting or ending with '-')")
    return name


def host_name(explicit: str | None = None) -> str:
    """This CI host's name in the fleet: `--host`, else $CCCI_HOST, else the machine's hostname
    (its first label, lower-cased). BadInput naming where a bad one came from."""
    if explicit is not None:
        return check_host_name(explicit, "--host")
    from_env = os.environ.get(HOST_ENV)
    if from_env:
        return check_host_name(from_env, HOST_ENV)
    machine = socket.gethostname().split(".", 1)[0].lower()
    return check_host_name(machine, f"the hostname (set --host or {HOST_ENV})")


def run_hex(run_id: str) -> str:
    """The 6 hex digits that end a run id."""
    return run_id.rsplit("-", 1)[-1]


# -- apps ---------------------------------------------------------------------------------------

def warm_app(recipe: str) -> str:
    """The data-warm canonical app of a recipe."""
    return f"{WARM_PREFIX}{recipe}"




def cold_app(recipe: str, run_id: str) -> str:
    """A cold run's throw-away app: `<recipe>-<6 hex of the run>`."""
    return f"{recipe}-{run_hex(run_id)}"


# -- registry paths -----------------------------------------------------------------------------

def request_rel(run_id: str) -> str:
    return f"{REQUESTS_DIR}/{run_id}.yaml"


def result_id_for(request_name: str) -> str:
    """The run id a request file's result is stored under.

    A valid name is its own run id; any other name (it cannot be trusted as a path) maps to
    `invalid-<hash>`, so a malformed request still gets exactly one result file.
    """
    stem = request_name[: -len(".yaml")] if request_name.endswith(".yaml") else request_name
    if RUN_ID_RE.match(stem):
        return stem
    return "invalid-" + hashlib.sha256(request_name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def result_rel(run_id: str) -> str:
    """`results/<YYYY-MM>/<run id>.yaml`; a run id that is not one goes under `results/invalid/`."""
    match = RUN_ID_RE.match(run_id)
    if match:
        stamp = match.group(1)
        return f"{RESULTS_DIR}/{stamp[0:4]}-{stamp[4:6]}/{run_id}.yaml"
    return f"{RESULTS_DIR}/invalid/{run_id}.yaml"


def canonical_rel(recipe: str) -> str:
    return f"{CANONICALS_DIR}/{recipe}.yaml"


def snapshot_index_rel(host: str, app: str) -> str:
    """`snapshots-index/<host>/<app>.yaml`: a snapshot is on one host's disk, so its entry says whose."""
    return f"{SNAPSHOT_INDEX_DIR}/{host}/{app}.yaml"


def legacy_snapshot_index_rel(app: str) -> str:
    """Where a single-host registry kept the entry; its owner moves it under its name at start."""
    return f"{SNAPSHOT_INDEX_DIR}/{app}.yaml"
