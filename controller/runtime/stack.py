"""Deploy, inspect, wait for and remove one app's stack on the swarm."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets as pysecrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.runtime import engine
from controller.runtime.compose import RecipeLayout
from controller.runtime.spec import DeploySpec, overlay_document, secret_length, stack_env
from controller.util.errors import CcciError, ExternalError, RunTimeout
from controller.util.proc import run_command
from controller.util.retry import ENGINE_CLEANUP, call_with_retries
from controller.util.timeutil import Deadline
from controller.util.yamlio import dump_document

log = logging.getLogger(__name__)

NAMESPACE = "com.docker.stack.namespace"
RESTART_LOOP_FAILURES = 3
FAILED_STATES = ("failed", "rejected")
# Task errors that are the engine's, not the recipe's: the container never started because of a
# race on the CI host itself (moby/moby#48783: the tmpfs of a service's secrets cannot be
# remounted read-only, "device or resource busy"). A wait retries such a task, resuming the
# update swarm paused for it, at most ENGINE_FAULT_RETRIES times; after that it fails as `infra`.
ENGINE_FAULTS = ("device or resource busy",)
ENGINE_FAULT_RETRIES = 2
# How often a wait for convergence looks at the engine (a few API calls each time): what a
# maintainer waits beyond the moment an app is converged is half of it on average.
POLL_S = 0.25
_PASSTHROUGH_ENV = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH",
                    "DOCKER_TLS_VERIFY", "DOCKER_CONTEXT", "LANG", "TMPDIR")


# -- deploy ------------------------------------------------------------------------------------

def _docker_cli() -> str:
    return os.environ.get("CCCI_DOCKER_CLI") or shutil.which("docker") or "docker"


def deploy_argv(compose_files: list[str], overlay: str, app: str) -> list[str]:
    """Pure: the deploy command (the SDK has no stacks)."""
    argv = [_docker_cli(), "stack", "deploy", "--resolve-image", "never", "--prune", "--detach=true"]
    for name in [*compose_files, overlay]:
        argv += ["-c", name]
    return [*argv, app]


def ensure_external_objects(layout: RecipeLayout, spec: DeploySpec) -> None:
    """Create what a Co-op Cloud recipe expects abra to have made: stack-scoped external
    secrets (random values), and external networks such as `proxy`."""
    c = engine.client()
    labels = spec.identity.object_labels()
    existing_secrets = {s.name for s in engine.call("list secrets", lambda: c.secrets.list()) or []}
    for key, name in layout.external_secrets.items():
        if name in existing_secrets:
            continue
        if not name.startswith(spec.identity.app):
            raise CcciError(
                f"the recipe needs the external secret {name!r}, which is not scoped to the app "
                "and does not exist", cause="recipe")
        value = pysecrets.token_hex(secret_length(layout, key))[: secret_length(layout, key)]
        # Generated secrets are app data (the database was initialised with them): they
        # outlive an undeploy that keeps the volumes.
        engine.call(f"create secret {name}", functools.partial(
            c.secrets.create, name=name, data=value.encode(), labels={**labels, "ccci.generated": "true"}))
    existing_networks = {n.name for n in engine.call("list networks", lambda: c.networks.list()) or []}
    for name in layout.external_networks.values():
        if name in existing_networks:
            continue
        engine.call(f"create network {name}", functools.partial(
            c.networks.create, name, driver="overlay", attachable=True, scope="swarm",
            labels={"ccci.managed": "true", "ccci.infra": "true"}))


def deploy(checkout: Path, layout: RecipeLayout, spec: DeploySpec, extra_env: dict[str, str],
           *, timeout: float = 300) -> None:
    """`docker stack deploy` the recipe plus the controller's overlay."""
    overlay_path = checkout / ".ccci-overlay.yml"
    if spec.node is None:
        spec = dataclasses.replace(spec, node=engine.node_id())
    try:
        overlay = overlay_document(layout, spec)
    except ValueError as exc:
        raise CcciError(str(exc), cause="recipe") from exc
    overlay_path.write_text(dump_document(overlay))
    ensure_external_objects(layout, spec)
    env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
    env.update(stack_env(layout, spec, extra_env))
    argv = deploy_argv(layout.compose_files, overlay_path.name, spec.identity.app)
    try:
        run_command(argv, cwd=checkout, env=env, timeout=timeout, clean_env=True)
    except ExternalError as exc:
        # The CLI refuses what the recipe wrote (bad compose, missing file): the recipe's fault,
        # unless the engine itself was unreachable.
        unreachable = "Cannot connect" in exc.stderr or "connection refused" in exc.stderr
        raise CcciError(f"deploy of {spec.identity.app} failed: {exc.stderr[-800:] or exc.message}",
                        cause="infra" if unreachable or exc.cause == "timeout" else "recipe") from exc


# -- inspect -----------------------------------------------------------------------------------

@dataclass
class TaskState:
    id: str
    state: str
    desired: str
    error: str
    commit: str | None
    exit_code: int | None
    created: str


@dataclass
class ServiceState:
    name: str  # as in the recipe
    full_name: str
    replicas: int
    update_state: str | None
    update_message: str
    commit: str | None
    tasks: list[TaskState] = field(default_factory=list)

    @property
    def running(self) -> list[TaskState]:
        return [t for t in self.tasks if t.state == "running" and t.desired == "running"]

    @property
    def failures(self) -> list[TaskState]:
        """Tasks that ended without being asked to: failed, rejected, or exited on their own
        (`complete` — e.g. an app that exits 0 when swarm kills it as unhealthy)."""
        return [t for t in self.tasks if t.state in FAILED_STATES or t.state == "complete"
                or (t.desired == "shutdown" and t.exit_code not in (None, 0) and t.state != "shutdown")]

    @property
    def scheduled(self) -> list[TaskState]:
        """Tasks swarm still means to run (running, starting, or waiting to start)."""
        return [t for t in self.tasks if t.desired in ("running", "ready", "accepted")
                and t.state not in (*FAILED_STATES, "complete", "shutdown", "orphaned", "remove")]


@dataclass
class AppState:
    app: str
    services: list[ServiceState]

    def summary(self) -> str:
        parts = []
        for s in self.services:
            last = next((t.error for t in reversed(s.failures) if t.error), "")
            pending = sorted({t.state for t in s.tasks if t.desired == "running" and t.state != "running"})
            parts.append(f"{s.name} {len(s.running)}/{s.replicas}"
                         + (f" [{', '.join(pending)}]" if pending else "")
                         + (f" update {s.update_state}" if s.update_state else "")
                         + (f" ({len(s.failures)} failed: {last})" if s.failures else ""))
        return "; ".join(parts) or "no services"


def _task_state(raw: dict[str, Any]) -> TaskState:
    status = raw.get("Status") or {}
    container_labels = ((raw.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return TaskState(
        id=raw.get("ID", ""),
        state=status.get("State", ""),
        desired=raw.get("DesiredState", ""),
        error=status.get("Err", "") or "",
        commit=container_labels.get("ccci.commit"),
        exit_code=exit_code,
        created=raw.get("CreatedAt", ""),
    )


def inspect_app(app: str) -> AppState:
    c = engine.client()
    services = engine.call("list services", lambda: c.api.services(
        filters={"label": f"{NAMESPACE}={app}"})) or []
    nodes = engine.call("list nodes", lambda: c.api.nodes()) or []
    ready_nodes = sum(1 for n in nodes if (n.get("Status") or {}).get("State") == "ready") or 1
    out = []
    for svc in services:
        spec = svc.get("Spec") or {}
        mode = spec.get("Mode") or {}
        replicas = (mode.get("Replicated") or {}).get("Replicas", 1) if "Replicated" in mode else ready_nodes
        update = svc.get("UpdateStatus") or {}
        tasks = engine.call("list tasks", functools.partial(c.api.tasks, filters={"service": svc["ID"]})) or []
        full_name = spec.get("Name", "")
        out.append(ServiceState(
            name=full_name[len(app) + 1:] if full_name.startswith(app + "_") else full_name,
            full_name=full_name,
            replicas=int(replicas),
            update_state=update.get("State"),
            update_message=update.get("Message", ""),
            commit=(spec.get("Labels") or {}).get("ccci.commit"),
            tasks=[_task_state(t) for t in tasks],
        ))
    return AppState(app, sorted(out, key=lambda s: s.name))


def explain_task_error(error: str) -> str:
    """A task error as an operator can act on it."""
    if "No such image" in error:
        return (f"{error} (the image is not on this host and the engine could not pull it: "
                "load or build it on the host, or fix the recipe's image tag)")
    return error


def engine_fault(error: str) -> bool:
    """Pure: a task error the engine caused while starting the container, not the recipe."""
    return error.startswith("starting container failed") and any(f in error for f in ENGINE_FAULTS)


def new_engine_faults(state: AppState, excused: set[str]) -> list[tuple[ServiceState, TaskState]]:
    """Pure: failed tasks, not yet retried, whose container the engine could not start."""
    return [(svc, t) for svc in state.services for t in svc.failures
            if t.id not in excused and engine_fault(t.error)]


def convergence_problem(state: AppState, *, expected_commit: str | None, known_failures: dict[str, int],
                        excused: frozenset[str] = frozenset()) -> tuple[str | None, str | None]:
    """Pure: (fatal problem, reason not yet converged). Fatal ends the wait at once. `excused`
    are tasks the engine failed and the wait retried: they count as no failure of the recipe."""
    fatal, waiting = _convergence_problem(state, expected_commit=expected_commit, known_failures=known_failures,
                                          excused=excused)
    return (explain_task_error(fatal) if fatal else None), waiting


def _convergence_problem(state: AppState, *, expected_commit: str | None, known_failures: dict[str, int],
                         excused: frozenset[str]) -> tuple[str | None, str | None]:
    if not state.services:
        return None, "no services yet"
    waiting = None
    for svc in state.services:
        new_failures = len([t for t in svc.failures if t.id not in excused]) - known_failures.get(svc.name, 0)
        if new_failures >= RESTART_LOOP_FAILURES:
            last = next((t.error for t in reversed(svc.failures) if t.error), "") or "tasks keep failing"
            return f"service {svc.name} is in a restart loop ({new_failures} failed tasks): {last}", None
        retried = any(task_id in svc.update_message for task_id in excused)
        if svc.update_state == "paused" and retried:
            waiting = waiting or f"service {svc.name} is resuming its update after an engine fault"
            continue
        if svc.update_state in ("paused", "rollback_paused", "rollback_completed"):
            return f"service {svc.name}: update {svc.update_state}: {svc.update_message}", None
        rejected = [t for t in svc.tasks if t.state == "rejected" and t.desired == "running" and t.id not in excused]
        if rejected:
            return f"service {svc.name}: task rejected: {rejected[-1].error}", None
        if svc.tasks and svc.replicas > 0 and not svc.scheduled and svc.failures:
            if svc.failures[-1].id in excused:
                waiting = waiting or f"service {svc.name} waits for a task after an engine fault"
                continue
            ended = svc.failures[-1]
            why = ended.error or f"{ended.state}, exit {ended.exit_code}"
            return f"service {svc.name} has no task running or scheduled (restart policy gave up): {why}", None
        running = svc.running
        if svc.update_state == "rollback_started" or (
                svc.update_state == "updating" and not _updated(svc, running, expected_commit)):
            waiting = waiting or f"service {svc.name} is updating"
            continue
        if len(running) != svc.replicas:
            waiting = waiting or f"service {svc.name} has {len(running)}/{svc.replicas} tasks running"
            continue
        if expected_commit and any(t.commit != expected_commit for t in running):
            stale = sorted({(t.commit or "none")[:12] for t in running if t.commit != expected_commit})
            waiting = waiting or f"service {svc.name} still runs commit {', '.join(stale)}"
    return None, waiting


def _updated(svc: ServiceState, running: list[TaskState], expected_commit: str | None) -> bool:
    """An update in swarm's monitor period whose every replica already runs, healthy, at the
    commit the run deployed: what is left of `updating` is the monitor (5 s by default), which
    the run's own stability window covers from now on: a task failing in it restarts the window,
    and a failed update is fatal when swarm says so. Without an expected commit nothing tells
    old tasks from new ones, so the update is waited out."""
    return bool(expected_commit) and len(running) == svc.replicas and svc.scheduled == running \
        and all(t.commit == expected_commit for t in running)


def wait_converged(
    app: str,
    deadline: Deadline,
    *,
    stability_s: float,
    expected_commit: str | None = None,
    baseline: AppState | None = None,
    on_poll: Callable[[AppState], None] | None = None,
) -> AppState:
    """Wait until every service runs its replicas (healthy: swarm holds a task in `starting`
    until its healthcheck passes) and stays so for `stability_s`. Fails fast on a restart
    loop, a rejected task or a failed update; RunTimeout at the deadline. A task the engine
    failed to start (`engine_fault`) is retried, a paused update resumed, at most
    ENGINE_FAULT_RETRIES times; then the wait fails with cause `infra`, never `recipe`."""
    known = {s.name: len(s.failures) for s in baseline.services} if baseline else {}
    before = {t.id for s in baseline.services for t in s.failures} if baseline else set()
    excused: set[str] = set()  # tasks the engine failed and this wait retried: no verdict on the recipe
    retries = 0
    stable_since: float | None = None
    last_reason = "not inspected yet"
    while True:
        state = inspect_app(app)
        if on_poll:
            on_poll(state)
        faults = new_engine_faults(state, excused | before)
        if faults:
            retries += 1
            what = "; ".join(f"service {svc.name}: {task.error}" for svc, task in faults)
            if retries > ENGINE_FAULT_RETRIES:
                raise CcciError(f"the engine could not start the tasks of {app} "
                                f"(retried {ENGINE_FAULT_RETRIES} times): {what}", cause="infra")
            log.warning("%s: the engine failed a task, not the recipe: %s (retry %d of %d)",
                        app, what, retries, ENGINE_FAULT_RETRIES)
            excused |= {task.id for _, task in faults}
            for svc in {svc.full_name: svc for svc, _ in faults if svc.update_state == "paused"}.values():
                resume_update(svc.full_name)
        fatal, waiting = convergence_problem(state, expected_commit=expected_commit, known_failures=known,
                                             excused=frozenset(excused))
        if fatal:
            # An update swarm rolled back for a task the engine failed is the host's fault.
            raise CcciError(fatal, cause="infra" if any(t in fatal for t in excused) else "recipe")
        now = time.monotonic()
        pause = POLL_S
        if waiting is None:
            stable_since = stable_since or now
            if now - stable_since >= stability_s:
                return state
            last_reason = "stability window"
            pause = min(pause, stable_since + stability_s - now)  # look again when it ends
        else:
            stable_since = None
            last_reason = waiting
        if deadline.expired():
            raise RunTimeout(f"{app} did not converge before its deadline: {last_reason} "
                             f"({state.summary()})")
        time.sleep(min(pause, max(0.05, deadline.remaining())))


def resume_update(full_name: str) -> None:
    """Start an update swarm paused again, with the same spec (`docker service update --force`)."""
    c = engine.client()
    engine.call(f"resume the update of {full_name}", lambda: c.services.get(full_name).force_update())


def commit_check(state: AppState, expected_commit: str) -> list[str]:
    """Pure: services whose spec or running tasks do not carry `expected_commit`."""
    wrong = []
    for svc in state.services:
        if svc.commit != expected_commit:
            wrong.append(f"{svc.name}: service label {str(svc.commit)[:12]}")
            continue
        stale = [t for t in svc.running if t.commit != expected_commit]
        if stale or not svc.running:
            wrong.append(f"{svc.name}: {len(stale)} of {len(svc.running)} running tasks on another commit"
                         if svc.running else f"{svc.name}: no running task")
    return wrong


# -- undeploy ----------------------------------------------------------------------------------

def _objects(kind: str, label: str) -> list[Any]:
    c = engine.client()
    collection = {"services": c.services, "networks": c.networks, "configs": c.configs,
                  "secrets": c.secrets, "volumes": c.volumes}[kind]
    return engine.call(f"list {kind}", lambda: collection.list(filters={"label": label})) or []


def _containers(label: str) -> list[dict[str, Any]]:
    """Low-level list: one call, no per-container inspect that races with removal."""
    c = engine.client()
    return engine.call("list containers", lambda: c.api.containers(all=True, filters={"label": label})) or []


def containers_of(app: str) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for label in (f"ccci.app={app}", f"{NAMESPACE}={app}"):
        for container in _containers(label):
            found[container["Id"]] = container
    return list(found.values())


def tasks_of(app: str) -> list[dict[str, Any]]:
    """The app's tasks on every node of the swarm (the manager knows them all), including
    those of removed services until their node has removed the container."""
    c = engine.client()
    found: dict[str, dict[str, Any]] = {}
    for label in (f"ccci.app={app}", f"{NAMESPACE}={app}"):
        listed = engine.call("list tasks", functools.partial(c.api.tasks, filters={"label": label})) or []
        found.update((task["ID"], task) for task in listed)
    return list(found.values())


def undeploy(app: str, *, remove_volumes: bool, timeout: float = 180) -> None:
    """Remove the app's services and wait until swarm lists none of their tasks (every node
    has stopped its containers) and this node's engine holds none of their containers
    (swarm returns long before); then its networks, configs, secrets — and, if asked, its
    volumes and the secrets the controller generated for it (which belong with the data).
    Another node removes its stopped containers on its own, a moment later."""
    deadline = Deadline(timeout)
    labels = (f"{NAMESPACE}={app}", f"ccci.app={app}")
    for label in labels:
        for svc in _objects("services", label):
            engine.call(f"remove service {svc.name}", svc.remove, missing_ok=True)

    def gone() -> bool:
        return (not any(_objects("services", label) for label in labels) and not tasks_of(app)
                and not containers_of(app))

    while not gone():
        if deadline.expired():
            raise CcciError(f"undeploy of {app} did not finish within {timeout:.0f} s: "
                            "containers are still present", cause="infra")
        time.sleep(0.25)
    for kind in ("configs", "secrets", "networks"):
        for label in labels:
            for obj in _objects(kind, label):
                generated = (obj.attrs.get("Spec", {}).get("Labels") or {}).get("ccci.generated") == "true"
                if generated and not remove_volumes:
                    continue
                _remove_with_retry(f"remove {kind[:-1]} {obj.name}", obj.remove, deadline)
    if remove_volumes:
        for volume in volumes_of(app):
            _remove_with_retry(f"remove volume {volume.name}", volume.remove, deadline)


def _remove_with_retry(what: str, remove: Callable[[], Any], deadline: Deadline) -> None:
    # A network with endpoints still detaching, a volume a dying container holds: the engine
    # calls that temporary, and it clears up on its own.
    try:
        call_with_retries(ENGINE_CLEANUP, lambda: engine.call(what, remove, missing_ok=True),
                          deadline=deadline)
    except ExternalError as exc:
        raise CcciError(f"{what}: {exc.message}", cause="infra") from exc


# -- volumes -----------------------------------------------------------------------------------

def volumes_of(app: str) -> list[Any]:
    seen: dict[str, Any] = {}
    for label in (f"ccci.app={app}", f"{NAMESPACE}={app}"):
        for volume in _objects("volumes", label):
            seen[volume.name] = volume
    return list(seen.values())


def volume_paths(app: str) -> dict[str, Path]:
    """{short name: host mountpoint} for the app's volumes (`<app>_<name>` → `name`)."""
    out = {}
    for volume in volumes_of(app):
        name = volume.name[len(app) + 1:] if volume.name.startswith(app + "_") else volume.name
        mountpoint = volume.attrs.get("Mountpoint")
        if mountpoint:
            out[name] = Path(mountpoint)
    return out


def remove_volumes_except(app: str, keep: set[str]) -> list[str]:
    """Remove the undeployed app's volumes whose short name is not in `keep` (a volume a later
    commit added is not part of the last-known-good); returns their short names."""
    removed = []
    deadline = Deadline(60)
    for volume in volumes_of(app):
        name = volume.name[len(app) + 1:] if volume.name.startswith(app + "_") else volume.name
        if name not in keep:
            _remove_with_retry(f"remove volume {volume.name}", volume.remove, deadline)
            removed.append(name)
    return sorted(removed)


def ensure_volumes(app: str, names: list[str], labels: dict[str, str]) -> dict[str, Path]:
    """Create any of the app's volumes `<app>_<name>` that do not exist (a restore onto an app
    whose volumes were deleted); stack deploy then adopts them by name."""
    c = engine.client()
    existing = volume_paths(app)
    for name in names:
        if name in existing:
            continue
        full = f"{app}_{name}"
        volume = engine.call(f"create volume {full}", functools.partial(
            c.volumes.create, name=full, driver="local", labels={**labels, NAMESPACE: app}))
        if volume is not None and volume.attrs.get("Mountpoint"):
            existing[name] = Path(volume.attrs["Mountpoint"])
    return existing


def volumes_root() -> Path:
    """Where the engine keeps local volumes: snapshot paths must stay inside it."""
    return Path(engine.data_root()) / "volumes"


def live_tasks(app: str) -> list[str]:
    """Names of tasks of `app` that still run (a snapshot must not be taken under them)."""
    state = inspect_app(app)
    return [f"{s.full_name}.{t.id[:12]}" for s in state.services for t in s.tasks
            if t.state in ("running", "starting", "preparing", "assigned", "accepted", "pending", "new")]


def killed_by_memory_limit(app: str) -> list[str]:
    """Services of `app` with a container the kernel killed for its memory limit."""
    c = engine.client()
    killed = set()
    for container in containers_of(app):
        found = engine.call("inspect container", functools.partial(c.api.inspect_container, container["Id"]),
                            missing_ok=True) or {}
        if (found.get("State") or {}).get("OOMKilled"):
            labels = (found.get("Config") or {}).get("Labels") or {}
            killed.add(labels.get("com.docker.swarm.service.name") or container["Id"][:12])
    return sorted(killed)


def volume_writers(app: str) -> list[str]:
    """Containers, whatever their labels, running or paused, that mount one of `app`'s volumes
    (a snapshot or restore under any writer would copy or leave torn data)."""
    c = engine.client()
    found: dict[str, str] = {}
    for volume in volumes_of(app):
        for status in ("running", "paused", "restarting"):
            listed = engine.call("list containers", functools.partial(
                c.api.containers, all=True, filters={"volume": volume.name, "status": status})) or []
            for container in listed:
                name = (container.get("Names") or ["?"])[0].lstrip("/")
                found[container["Id"]] = f"{name} ({status}, mounts {volume.name})"
    return sorted(found.values())


@dataclass(frozen=True)
class LabelledObject:
    kind: str  # service | container | task (a container on another node) | network | config | secret | volume
    name: str
    labels: dict[str, str]


def labelled_objects() -> list[LabelledObject]:
    """Every object that carries `ccci.managed=true` and that this engine can see: services,
    networks, configs and secrets of the whole swarm; containers and volumes of this node; and
    the tasks on other nodes, which stand for their containers there (an engine lists only its
    own). Volumes on other nodes are not seen: `spec.pinned_services` keeps the services that
    mount them on this node."""
    label = "ccci.managed=true"
    out: list[LabelledObject] = []
    for kind in ("services", "networks", "configs", "secrets", "volumes"):
        for obj in _objects(kind, label):
            labels = obj.attrs.get("Spec", {}).get("Labels") or obj.attrs.get("Labels") or {}
            out.append(LabelledObject(kind[:-1], obj.name, dict(labels)))
    for container in _containers(label):
        name = (container.get("Names") or ["?"])[0].lstrip("/")
        out.append(LabelledObject("container", name, dict(container.get("Labels") or {})))
    out.extend(_tasks_elsewhere(label))
    return out


def _tasks_elsewhere(label: str) -> list[LabelledObject]:
    own = engine.node_id()
    if own is None:
        return []
    c = engine.client()
    nodes = {n["ID"]: (n.get("Description") or {}).get("Hostname", n["ID"][:12])
             for n in engine.call("list nodes", lambda: c.api.nodes()) or []}
    out = []
    for task in engine.call("list tasks", functools.partial(c.api.tasks, filters={"label": label})) or []:
        node = task.get("NodeID") or ""
        if not node or node == own:
            continue  # unassigned (no container anywhere) or this node's (listed as a container)
        labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
        state = (task.get("Status") or {}).get("State", "?")
        out.append(LabelledObject("task", f"{task['ID'][:12]} on node {nodes.get(node, node[:12])} ({state})",
                                  dict(labels)))
    return out


def labelled_apps(mode: str | None = None, owner: str | None = None) -> dict[str, dict[str, str]]:
    """Apps the controller's labels name on this engine: {app: {mode, run, owner}}. With
    `owner`, only that owner's apps."""
    apps: dict[str, dict[str, str]] = {}
    for obj in labelled_objects():
        app = obj.labels.get("ccci.app")
        if not app or obj.labels.get("ccci.infra") == "true":
            continue
        if mode and obj.labels.get("ccci.mode") != mode:
            continue
        if owner and obj.labels.get("ccci.owner") != owner:
            continue
        apps.setdefault(app, {"mode": obj.labels.get("ccci.mode", ""), "run": obj.labels.get("ccci.run", ""),
                              "owner": obj.labels.get("ccci.owner", "")})
    return apps
