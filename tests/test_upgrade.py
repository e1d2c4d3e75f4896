"""The upgrade check: after deploying v2 over v1, the running tasks provably run v2."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import docker
import pytest

from controller.runtime import probe, stack
from controller.runtime.compose import read_layout
from controller.runtime.spec import AppIdentity, DeploySpec
from controller.util.errors import CcciError
from controller.util.timeutil import Deadline
from testbed.fixtures import RecipeRepo, build_recipe
from tests import helpers

pytestmark = pytest.mark.docker


def deploy_commit(repo: RecipeRepo, commit: str, app: str, port: int, workdir: Path,
                  http_port: int | None = None, owner: str | None = None) -> None:
    """Deploy `commit` of the recipe as `app`, as the flows do (CLI deploy + overlay)."""
    checkout = workdir / commit[:12]
    checkout.mkdir(parents=True)
    helpers.git(repo.path, "archive", "-o", str(workdir / "tree.tar"), commit)
    helpers.git(checkout, "init", "-q")  # any dir works; just unpack the tree
    import tarfile

    with tarfile.open(workdir / "tree.tar") as archive:
        archive.extractall(checkout, filter="data")
    layout = read_layout(checkout, {"STACK_NAME": app, "DOMAIN": f"{app}.ci.test"})
    if http_port is None:
        http_port = 8080 if repo.name == "notes" else 80
    mode, run = ("warm", None) if app.startswith("warm-") else ("cold", "20261129T120000-static-abcdef")
    spec = DeploySpec(AppIdentity(app, mode, run, commit, owner), f"{app}.ci.test", "app", http_port, port)
    stack.deploy(checkout, layout, spec, {})


def upgrade_moved(app: str, expected: str, timeout: float = 90) -> list[str]:
    """The upgrade test helper: wait for convergence on `expected`, then return what does not
    run it (empty: the upgrade really moved)."""
    try:
        state = stack.wait_converged(app, Deadline(timeout), stability_s=1, expected_commit=expected)
    except CcciError as exc:
        return [exc.message]
    return stack.commit_check(state, expected)


@pytest.fixture
def static_repo(tmp_path: Path, docker_host: str) -> RecipeRepo:
    return build_recipe("static", tmp_path / "recipes" / "static")


def test_commit_check_proves_v2_runs_after_upgrade_and_fails_when_it_does_not(
        static_repo: RecipeRepo, tmp_path: Path) -> None:
    app = "static-abcdef"
    v1, v2 = static_repo.versions[1], static_repo.versions[2]
    port = probe.free_port()
    try:
        deploy_commit(static_repo, v1, app, port, tmp_path / "w1")
        assert upgrade_moved(app, v1) == []
        deploy_commit(static_repo, v2, app, port, tmp_path / "w2")
        assert upgrade_moved(app, v2) == []
        state = stack.inspect_app(app)
        stale = stack.commit_check(state, v1)
        assert stale and "service label" in stale[0]
        assert "static fixture v2" in __import__("urllib.request").request.urlopen(
            f"http://127.0.0.1:{port}/", timeout=10).read().decode()

        # A v3 whose new tasks can never start: the spec says v3, but nothing runs it.
        broken = static_repo.commit_files("broken", {
            "compose.yml": static_repo.read(v2, "compose.yml").replace(
                "ccci-test/busybox:latest", "ccci-test/no-such-image:latest")})
        deploy_commit(static_repo, broken, app, port, tmp_path / "w3")
        problems = upgrade_moved(app, broken, timeout=20)
        assert problems, "an upgrade whose tasks never run v3 must fail the commit check"
    finally:
        stack.undeploy(app, remove_volumes=True)
    assert helpers.objects_of_app(app) == []


BUSY = ("starting container failed: unable to remount dir as readonly: mount tmpfs:/var/lib/docker/containers/"
        "41edb122acc6/mounts/secrets, flags: 0x21, data: uid=0,gid=0: device or resource busy")


def _force_updates(app: str) -> int:
    client = docker.from_env()
    try:
        service = client.services.list(filters={"label": f"{stack.NAMESPACE}={app}"})[0]
        return int(service.attrs["Spec"]["TaskTemplate"].get("ForceUpdate", 0))
    finally:
        client.close()


def test_a_task_the_engine_fails_to_start_is_retried_on_the_swarm_and_only_then_blamed_on_the_host(
        static_repo: RecipeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """moby/moby#48783 on a real engine: a new task fails to start because the engine cannot
    remount its secrets read-only, and swarm pauses the update. The fault is injected at that one
    point (what the next poll sees); the resumed update and the convergence are the real swarm's."""
    app = "static-e4b1f0"
    v1, v2 = static_repo.versions[1], static_repo.versions[2]
    real_inspect = stack.inspect_app
    faults: list[str] = []

    def paused_by_the_engine(name: str) -> stack.AppState:
        state = real_inspect(name)
        svc = state.services[0]
        task = stack.TaskState(id=f"busy-{len(faults)}", state="failed", desired="shutdown", error=BUSY,
                               commit=v2, exit_code=None, created="")
        faults.append(task.id)
        paused = dataclasses.replace(svc, update_state="paused", tasks=[*svc.tasks, task], update_message=(
            f"update paused due to failure or early termination of task {task.id}"))
        return stack.AppState(name, [paused, *state.services[1:]])

    try:
        port = probe.free_port()
        deploy_commit(static_repo, v1, app, port, tmp_path / "w1")
        assert upgrade_moved(app, v1) == []
        deploy_commit(static_repo, v2, app, port, tmp_path / "w2")
        forced = _force_updates(app)
        # Once: the wait resumes the update on the swarm, which then converges on v2.
        with monkeypatch.context() as patch:
            patch.setattr(stack, "inspect_app", lambda name: (
                paused_by_the_engine(name) if not faults else real_inspect(name)))
            state = stack.wait_converged(app, Deadline(90), stability_s=1, expected_commit=v2)
        assert stack.commit_check(state, v2) == []
        assert _force_updates(app) == forced + 1
        assert "the engine failed a task, not the recipe" in caplog.text and "retry 1 of 2" in caplog.text
        # At every poll: after two retries the wait gives up, and says it is the host's fault.
        faults.clear()
        with monkeypatch.context() as patch:
            patch.setattr(stack, "inspect_app", paused_by_the_engine)
            with pytest.raises(CcciError) as failed:
                stack.wait_converged(app, Deadline(90), stability_s=1, expected_commit=v2)
        assert failed.value.cause == "infra", failed.value.message
        assert "retried 2 times" in failed.value.message and "device or resource busy" in failed.value.message
        assert len(faults) == 3 and _force_updates(app) == forced + 3
    finally:
        stack.undeploy(app, remove_volumes=True)
    assert helpers.objects_of_app(app) == []
