"""Test helpers: registries on real bare remotes, request files, polling with a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from controller.registry.store import init_registry
from controller.util.yamlio import load_untrusted

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Person",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test Person",
    "GIT_COMMITTER_EMAIL": "test@example.org",
}
HEX_A = "a" * 40
HOST = "test-host"  # CCCI_HOST of every test (conftest): snapshots-index/<HOST>/ is where its entries go


def git(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False,
                          env={**os.environ, **GIT_IDENTITY, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `probe` until it returns a truthy value; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        threading.Event().wait(interval)  # the poll's pause, bounded by the deadline above


def leave_swarm(manager: Any, worker: Any, worker_hostname: str) -> None:
    """The worker engine leaves the manager's swarm, and the manager forgets every node of that
    hostname (nodes of earlier joins stay listed as down until removed)."""
    if worker.info()["Swarm"]["LocalNodeState"] != "inactive":
        worker.swarm.leave(force=True)
    for node in manager.nodes.list(filters={"role": "worker"}):
        if node.attrs["Description"]["Hostname"] == worker_hostname:
            manager.api.remove_node(node.id, force=True)  # force: it may not be marked down yet


def ccci(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
         check: bool = False) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO_ROOT, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"ccci {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


SETTINGS_HEAD = """\
base_domain: ci.test
identity: {name: ccci-test, email: ccci@test.invalid}
authority:
  cold: ['*']
  quick: ['*']
limits: {max_parallel_cold: 2, disk_min_free_gb: 0}
sweep: {max_tests: 0}
"""


@dataclass
class RemoteRegistry:
    """A bare remote holding a registry, as a real deployment has one."""

    bare: Path
    base: Path

    @classmethod
    def create(cls, base: Path, settings: str | None = None) -> RemoteRegistry:
        base.mkdir(parents=True, exist_ok=True)
        seed = base / "seed"
        init_registry(seed, base_domain="ci.test")
        (seed / "ccci.yaml").write_text(settings or SETTINGS_HEAD + "recipes: {}\n")
        git(seed, "commit", "-qam", "test settings")
        bare = base / "remote.git"
        git(base, "init", "-q", "--bare", "--initial-branch=main", str(bare))
        git(seed, "remote", "add", "origin", str(bare))
        git(seed, "push", "-q", "origin", "main")
        return cls(bare, base)

    def clone(self, name: str) -> Path:
        dest = self.base / name
        git(self.base, "clone", "-q", str(self.bare), str(dest))
        return dest

    def edit(self, files: dict[str, str], message: str = "edit") -> None:
        """Commit files to the remote through a scratch clone, as a human would."""
        work = self.base / f"edit-{time.monotonic_ns()}"
        git(self.base, "clone", "-q", str(self.bare), str(work))
        for rel, text in files.items():
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(work, "add", "-A")
        git(work, "commit", "-qm", message)
        git(work, "push", "-q", "origin", "main")

    def set_recipes(self, recipes_yaml: str, extra: str = "") -> None:
        self.edit({"ccci.yaml": SETTINGS_HEAD + extra + "recipes:\n" + recipes_yaml}, "settings")


def read_yaml(path: Path) -> Any:
    return load_untrusted(path.read_bytes(), str(path), max_bytes=10 * 1024 * 1024)


def results_in(clone: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((clone / "results").glob("*/*.yaml")):
        out[path.stem] = read_yaml(path)
    return out


def log_subjects(clone: Path, ref: str = "HEAD") -> list[str]:
    return git(clone, "log", "--format=%s", ref).splitlines()


def request_doc(recipe: str, ref: str = HEX_A, mode: str = "cold", by: str = "alice") -> str:
    return f"recipe: {recipe}\nref: '{ref}'\nmode: {mode}\nrequested_by: {by}\n"


class ServeProcess:
    """A real `ccci serve` in a subprocess; stopped with SIGTERM (graceful)."""

    def __init__(self, clone: Path, state: Path, *args: str, log_path: Path | None = None,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None) -> None:
        """`prefix`: a command the controller runs under, such as `nsenter` into a host's netns."""
        self.log_path = log_path or (state.parent / f"serve-{clone.name}.log")
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "controller", "--state-dir", str(state), "serve",
             "--registry", str(clone), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env={**os.environ, "CCCI_STATE_DIR": str(state), **(env or {})},
        )

    def stop(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Every thread's stack into the log first (serve's SIGUSR1): where did it hang?
                self.proc.send_signal(signal.SIGUSR1)
                with contextlib.suppress(AssertionError):  # killed below, dump or not
                    wait_for(lambda: "most recent call first" in self.log(), 5, "faulthandler's dump")
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (zombies included)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def run_until_deployed(state_dir: Path, clone: Path, run_id: str, app: str) -> subprocess.Popen[bytes]:
    """`ccci run` of `run_id` in the background, returned once `app` has a service (a crash
    test then kills or stops it there); killed if that never comes."""
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--state-dir", str(state_dir), "run",
                             "--registry", str(clone), run_id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    try:
        wait_for(lambda: any(o.startswith("service") for o in objects_of_app(app)), 60,
                 f"the services of {app} to exist")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def kill_mid_run_then_serve(state_dir: Path, clone: Path, run_id: str, app: str) -> None:
    """SIGKILL `ccci run` of `run_id` once its app is deployed, then one `serve --once` on the same
    state dir: the killed run left the app behind, and the restart removed every object of it."""
    proc = run_until_deployed(state_dir, clone, run_id, app)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert objects_of_app(app), "the killed run should have left its app behind"
    serve = ccci("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    assert serve.returncode == 0, serve.stderr
    assert objects_of_app(app) == []


def objects_of_app(app: str) -> list[str]:
    """Every Docker object that belongs to `app` by label: services, containers, networks,
    configs, secrets, volumes (what the sacred teardown must leave at zero)."""
    import docker

    client = docker.from_env(timeout=30)
    found = []
    try:
        for label in (f"ccci.app={app}", f"com.docker.stack.namespace={app}"):
            filters = {"label": label}
            found += [f"service {s.name}" for s in client.services.list(filters=filters)]
            found += [f"container {c.name}" for c in client.containers.list(all=True, filters=filters)]
            found += [f"network {n.name}" for n in client.networks.list(filters=filters)]
            found += [f"config {c.name}" for c in client.configs.list(filters=filters)]
            found += [f"secret {s.name}" for s in client.secrets.list(filters=filters)]
            found += [f"volume {v.name}" for v in client.volumes.list(filters=filters)]
    finally:
        client.close()
    return sorted(set(found))


def recipe_entry(name: str, path: Path, **options: object) -> str:
    """One `recipes:` line of ccci.yaml."""
    parts = [f"source: {path}"] + [f"{k}: {v}" for k, v in options.items()]
    return f"  {name}: {{{', '.join(parts)}}}\n"


# SEED_ROWS from ccci.yaml overrides the recipe's .env.sample (and keeps the tests quick).
NOTES_SEED_ROWS = 20000
# No `http`: the recipe's traefik labels name its service and port, as for a real recipe.
NOTES_OPTIONS = {"timeout_s": 300, "stability_s": 2,
                 "env": f"{{SEED_ROWS: '{NOTES_SEED_ROWS}'}}"}
STATIC_OPTIONS = {"timeout_s": 120, "stability_s": 1}


def isolate_environment(tmp: Path, **extra: str) -> None:
    """For the benches (the tests use conftest's fixture): never the real home or global git
    config, the pinned identity, then `extra` (DOCKER_HOST, CCCI_STATE_DIR, …)."""
    home = tmp / "home"
    home.mkdir()
    os.environ.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
                       "GIT_CONFIG_NOSYSTEM": "1", **GIT_IDENTITY, **extra})
    for key in ("CCCI_GIT_NAME", "CCCI_GIT_EMAIL", "CCCI_REGISTRY"):
        os.environ.pop(key, None)
