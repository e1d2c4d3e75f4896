"""A host whose swarm has a worker node: warm apps stay on the controller's node, cold apps
spread, and teardown and the leak check reach what a cold app left on the worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from controller.flows import cleanup, leaks
from controller.runtime import engine, stack
from controller.runtime.compose import read_layout
from controller.runtime.spec import AppIdentity, DeploySpec
from controller.util.paths import StateDir
from controller.util.timeutil import Deadline
from tests.conftest import JoinedWorker
from tests.helpers import wait_for

# web: two replicas, at most one per node, so one of them must land on the worker unless
# something pins it; data: mounts a named volume.
RECIPE = """\
version: "3.8"
services:
  web:
    image: ccci-test/busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
      placement: {max_replicas_per_node: 1}
  data:
    image: ccci-test/busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    volumes: [store:/store]
volumes:
  store:
"""


@pytest.fixture
def on_manager(swarm_worker: JoinedWorker, monkeypatch: pytest.MonkeyPatch) -> Iterator[JoinedWorker]:
    """The controller's engine client talks to the second host's manager for this test."""
    monkeypatch.setenv("DOCKER_HOST", swarm_worker.manager)
    monkeypatch.setattr(engine, "_client", None)
    yield swarm_worker
    if engine._client is not None:
        engine._client.close()


def deploy(checkout: Path, state: StateDir, app: str, mode: str, compose: str) -> stack.AppState:
    checkout.mkdir()
    (checkout / "compose.yml").write_text(compose)
    layout = read_layout(checkout, {"STACK_NAME": app})
    run = f"20261202T120000-{app}" if mode == "cold" else None
    spec = DeploySpec(AppIdentity(app, mode, run, "c" * 40, state.owner_id), f"{app}.ci.test", None, 80, None)
    stack.deploy(checkout, layout, spec, {})
    return stack.wait_converged(app, Deadline(90), stability_s=0.5)


def running_nodes(app: str) -> dict[str, set[str]]:
    """{service name: node ids of its running tasks}, as the manager reports them."""
    names = {svc.full_name: svc for svc in stack.inspect_app(app).services}
    node_of = {task["ID"]: task["NodeID"] for task in stack.tasks_of(app)}
    return {name: {node_of[t.id] for t in svc.running} for name, svc in names.items()}


def test_warm_app_runs_only_on_the_controllers_node(on_manager: JoinedWorker, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").ensure()
    app = "warm-multinode"
    # Without max_replicas_per_node swarm spreads the two replicas over both nodes, unless pinned.
    deploy(tmp_path / "recipe", state, app, "warm", RECIPE.replace("      placement: {max_replicas_per_node: 1}\n", ""))
    try:
        assert running_nodes(app) == {f"{app}_web": {on_manager.manager_node},
                                      f"{app}_data": {on_manager.manager_node}}
        web = next(svc for svc in stack.inspect_app(app).services if svc.name == "web")
        assert len(web.running) == 2
    finally:
        stack.undeploy(app, remove_volumes=True)


def test_cold_app_spreads_and_teardown_and_leak_check_reach_the_worker(
        on_manager: JoinedWorker, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").ensure()
    app = "multinode-c0ffee"
    deploy(tmp_path / "recipe", state, app, "cold", RECIPE)
    worker = docker.DockerClient(base_url=on_manager.worker, timeout=30)
    try:
        placed = running_nodes(app)
        assert placed[f"{app}_web"] == {on_manager.manager_node, on_manager.worker_node}
        assert placed[f"{app}_data"] == {on_manager.manager_node}  # its volume stays in sight
        on_worker = worker.api.containers(filters={"label": f"ccci.app={app}"})
        assert len(on_worker) == 1

        # The run is not in flight: the leak check names the task on the worker, with its node.
        found = [leak.sentence() for leak in leaks.find_leaks(state) if leak.obj.labels.get("ccci.app") == app]
        on_node = [s for s in found if s.startswith("task ") and f"on node {on_manager.worker_hostname}" in s]
        assert len(on_node) == 1, found
        assert "its run 20261202T120000-multinode-c0ffee is not in flight" in on_node[0]

        assert cleanup.teardown_cold_leftovers(state) == [app]
        # Gone everywhere: every task, the volume on the manager's node, and the worker's
        # container. Swarm forgets a task once its node reports it stopped; the worker removes
        # the stopped container on its own a moment later, out of the manager's sight.
        assert stack.tasks_of(app) == []
        wait_for(lambda: not worker.api.containers(all=True, filters={"label": f"ccci.app={app}"}),
                 30, "the worker to remove the stopped container of the forgotten task")
        assert stack.volumes_of(app) == []
        assert worker.volumes.list(filters={"label": f"ccci.app={app}"}) == []
        assert [leak for leak in leaks.find_leaks(state) if leak.obj.labels.get("ccci.app") == app] == []
    finally:
        stack.undeploy(app, remove_volumes=True)
        worker.close()
