"""Shared fixtures: isolated git identity, tmp state dirs, registries on real git remotes,
the test bed's Docker engines (the first host's, the second host's, a worker node joined to the
second host's swarm) and Keycloak (fail under CI=true when missing)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import helpers

TESTBED_ENV = Path(os.environ.get("CCCI_TESTBED_DIR", "/var/lib/ccci-testbed")) / "env"


def _load_testbed_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if TESTBED_ENV.is_file():
        for line in TESTBED_ENV.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                values[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


TESTBED = _load_testbed_env()
XFS_MOUNT = Path(os.environ.get("CCCI_TESTBED_XFS") or TESTBED.get("CCCI_TESTBED_XFS")
                 or TESTBED_ENV.parent / "xfs")


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the real home or global git config."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for key, value in helpers.GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CCCI_GIT_NAME", raising=False)
    monkeypatch.delenv("CCCI_GIT_EMAIL", raising=False)
    # One fleet host name for every test (and its subprocesses); fleet tests name others.
    monkeypatch.setenv("CCCI_HOST", helpers.HOST)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CCCI_STATE_DIR", str(state))
    return state


def _need(what: str, reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is required under CI=true: {reason}")
    pytest.skip(f"{what} not available on this laptop: {reason}")


@pytest.fixture(scope="session")
def docker_host() -> str:
    """The test bed's engine (`scripts/testbed up`); fails under CI=true when unreachable."""
    host = os.environ.get("DOCKER_HOST") or TESTBED.get("DOCKER_HOST")
    if not host:
        _need("Docker", f"no DOCKER_HOST and no {TESTBED_ENV}")
    assert host
    os.environ["DOCKER_HOST"] = host
    import docker

    try:
        client = docker.from_env(timeout=10)
        info = client.info()
        client.close()
    except Exception as exc:
        _need("Docker", f"{host}: {exc}")
        raise
    if info.get("Swarm", {}).get("LocalNodeState") != "active":
        _need("Docker swarm", f"{host}: swarm is not active (run scripts/testbed up)")
    return host


def _testbed_value(key: str) -> str | None:
    return os.environ.get(key) or TESTBED.get(key)


def _swarm_state(host: str, what: str) -> dict[str, object]:
    """`docker info` of the engine at `host`; fails under CI=true when it does not answer."""
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=10)
        info: dict[str, object] = client.info()
        client.close()
    except Exception as exc:
        _need(what, f"{host}: {exc}")
        raise
    return info


@dataclass(frozen=True)
class SecondHost:
    """The test bed's second host: an engine with its own swarm in network namespace `netns`.
    Run its controller with `command` (inside the namespace, so that 127.0.0.1 is that host's
    loopback, where its apps publish their ports); needs root."""

    docker_host: str
    netns: str

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]


@pytest.fixture(scope="session")
def second_docker_host() -> SecondHost:
    """The second host's engine (`scripts/testbed up`); fails under CI=true when unreachable.
    Unlike `docker_host` it does not set DOCKER_HOST: a test says which engine it talks to."""
    host = _testbed_value("CCCI_TESTBED_DOCKER_HOST_2")
    netns = _testbed_value("CCCI_TESTBED_NETNS_2")
    if not host or not netns:
        _need("the second Docker engine", f"CCCI_TESTBED_DOCKER_HOST_2 is not in {TESTBED_ENV} (scripts/testbed up)")
    assert host and netns
    info = _swarm_state(host, "the second Docker engine")
    if (info.get("Swarm") or {}).get("LocalNodeState") != "active":  # type: ignore[union-attr]
        _need("the second swarm", f"{host}: swarm is not active (run scripts/testbed up)")
    return SecondHost(host, netns)


@dataclass(frozen=True)
class JoinedWorker:
    manager: str  # DOCKER_HOST of the swarm's manager (the second host)
    manager_node: str  # node ids
    worker: str  # DOCKER_HOST of the worker's own engine
    worker_node: str
    worker_hostname: str


@pytest.fixture(scope="module")
def swarm_worker(second_docker_host: SecondHost) -> Iterator[JoinedWorker]:
    """The test bed's worker engine joined to the second host's swarm for one test module, and
    made to leave again (a worker left over from an interrupted run is made to leave first)."""
    import docker

    worker_host = _testbed_value("CCCI_TESTBED_WORKER_DOCKER_HOST")
    worker_addr = _testbed_value("CCCI_TESTBED_WORKER_ADDR")
    manager_addr = _testbed_value("CCCI_TESTBED_SWARM_ADDR_2")
    if not worker_host or not worker_addr or not manager_addr:
        _need("the worker engine", f"CCCI_TESTBED_WORKER_DOCKER_HOST is not in {TESTBED_ENV} (scripts/testbed up)")
    assert worker_host and worker_addr and manager_addr
    _swarm_state(worker_host, "the worker engine")
    manager = docker.DockerClient(base_url=second_docker_host.docker_host, timeout=30)
    worker = docker.DockerClient(base_url=worker_host, timeout=30)
    hostname = str(worker.info()["Name"])
    helpers.leave_swarm(manager, worker, hostname)
    worker.swarm.join(remote_addrs=[f"{manager_addr}:2377"], join_token=manager.swarm.attrs["JoinTokens"]["Worker"],
                      advertise_addr=worker_addr, listen_addr=f"{worker_addr}:2377")
    worker_node = str(worker.info()["Swarm"]["NodeID"])
    helpers.wait_for(lambda: manager.api.inspect_node(worker_node)["Status"]["State"] == "ready", 60,
                     "the worker node to be ready")
    try:
        yield JoinedWorker(second_docker_host.docker_host, str(manager.info()["Swarm"]["NodeID"]),
                           worker_host, worker_node, hostname)
    finally:
        helpers.leave_swarm(manager, worker, hostname)
        manager.close()
        worker.close()


@pytest.fixture(scope="session")
def keycloak_admin() -> dict[str, str]:
    """URL and admin credentials of the test bed's Keycloak host process."""
    url = os.environ.get("CCCI_TESTBED_KEYCLOAK_URL") or TESTBED.get("CCCI_TESTBED_KEYCLOAK_URL")
    secret_file = (os.environ.get("CCCI_TESTBED_KEYCLOAK_ADMIN_FILE")
                   or TESTBED.get("CCCI_TESTBED_KEYCLOAK_ADMIN_FILE"))
    user = (os.environ.get("CCCI_TESTBED_KEYCLOAK_ADMIN_USER")
            or TESTBED.get("CCCI_TESTBED_KEYCLOAK_ADMIN_USER") or "admin")
    if not url or not secret_file or not Path(secret_file).is_file():
        _need("Keycloak", "the test bed's Keycloak is not configured (scripts/testbed up)")
    assert url and secret_file
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/realms/master", timeout=10) as response:
            assert response.status == 200
    except Exception as exc:
        _need("Keycloak", f"{url}: {exc}")
    return {"url": url, "user": user, "secret_file": secret_file}


@pytest.fixture
def git_remote(tmp_path: Path) -> Iterator[helpers.RemoteRegistry]:
    """A registry on a bare remote, with helpers to make clones."""
    yield helpers.RemoteRegistry.create(tmp_path / "registry")


def _fs_type(mountpoint: Path) -> str | None:
    found = None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(mountpoint):
            found = fields[2]  # the last mount on a path is the one seen
    return found


@pytest.fixture(scope="session")
def xfs_mount() -> Path:
    """The test bed's XFS with reflink (`scripts/testbed up --fs xfs`); fails under CI=true
    when it is not mounted."""
    if _fs_type(XFS_MOUNT) != "xfs":
        _need("an XFS mount with reflink", f"{XFS_MOUNT} is not mounted (scripts/testbed up --fs xfs)")
    return XFS_MOUNT


@pytest.fixture
def xfs_tmp(xfs_mount: Path) -> Iterator[Path]:
    """A fresh directory on the test bed's XFS, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pytest-", dir=xfs_mount))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["disk", "xfs"])
def snapshot_place(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a snapshot test keeps its volumes and its store: the normal disk (files are
    copied) or the test bed's XFS (files are cloned)."""
    if request.param == "disk":
        return tmp_path
    place: Path = request.getfixturevalue("xfs_tmp")
    return place
