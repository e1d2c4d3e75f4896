"""What a stack may ask of the CI host: the host policy, checked on each of a recipe's compose
files as the deploy will read them (env substituted, merge keys resolved), before anything is
deployed. Pure: a compose document in, what it asks for out.

A PR head is code from anyone who can open a PR; the host holds every recipe's warm data, the
live Keycloak and the Docker socket. So nothing that reaches the host is allowed unless the
registry's reviewers grant it, by key, per recipe (`recipes.<r>.policy.allow`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Grant keys (a grant with a `:` names what it allows: `bind:/srv/backups`, `cap_add:NET_ADMIN`).
DOCKER_SOCKET = "docker_socket"
HOST_NETWORK = "host_network"
PRIVILEGED = "privileged"
SYSCTLS = "sysctls"
PID_HOST = "pid_host"
IPC_HOST = "ipc_host"
USERNS_HOST = "userns_host"
DEVICES = "devices"
PORTS = "ports"
SECURITY_OPT = "security_opt"
VOLUME_DRIVER = "volume_driver"
SOCKETS = ("docker.sock", "containerd.sock", "podman.sock", "dockershim.sock")
# External networks a recipe may name without a grant: the proxy network Co-op Cloud recipes
# join (the controller creates it) and the SSO network of the live Keycloak.
SHARED_NETWORKS = ("proxy", "ccci-sso")
# security_opt values that keep confinement as it is (anything else loosens it).
HARMLESS_SECURITY_OPT = re.compile(r"^no-new-privileges(:true|=true)?$")


@dataclass(frozen=True)
class Ask:
    """One thing a stack asks of the host."""

    grant: str  # the key that would allow it
    where: str  # `services.app.volumes`, `networks.outside`
    detail: str  # what exactly

    def sentence(self, file: str, recipe: str) -> str:
        return (f"{file}: at '{self.where}': {self.detail} needs `{self.grant}` in "
                f"recipes.{recipe}.policy.allow in ccci.yaml (a grant the registry's reviewers give)")


def _bind_source(volume: Any) -> str | None:
    """The host path of a bind mount, in the short (`/src:/dst[:ro]`) or long syntax."""
    if isinstance(volume, str):
        source = volume.split(":", 1)[0] if ":" in volume else ""
        return source if source.startswith(("/", "~", ".")) else None
    if isinstance(volume, dict) and volume.get("type") == "bind":
        return str(volume.get("source") or "")
    return None


def _is_socket(path: str) -> bool:
    return path.rstrip("/").endswith(SOCKETS) or path.rstrip("/") in ("/var/run", "/run")


def _service_asks(name: str, spec: dict[str, Any]) -> Iterator[Ask]:
    at = f"services.{name}"
    for volume in spec.get("volumes") or []:
        source = _bind_source(volume)
        if source is None:
            continue
        if _is_socket(source):
            yield Ask(DOCKER_SOCKET, f"{at}.volumes", f"a mount of the container runtime's socket {source}")
        else:
            yield Ask(f"bind:{source}", f"{at}.volumes", f"a bind mount of the host path {source or '(empty)'}")
    network_mode = str(spec.get("network_mode") or "")
    if network_mode == "host" or network_mode.startswith(("container:", "service:")):
        yield Ask(HOST_NETWORK, f"{at}.network_mode", f"network_mode {network_mode}")
    for cap in spec.get("cap_add") or []:
        yield Ask(f"cap_add:{str(cap).upper().removeprefix('CAP_')}", f"{at}.cap_add", f"the capability {cap}")
    for option in spec.get("security_opt") or []:
        if not HARMLESS_SECURITY_OPT.match(str(option)):
            yield Ask(SECURITY_OPT, f"{at}.security_opt", f"security_opt {option}")
    if spec.get("sysctls"):
        yield Ask(SYSCTLS, f"{at}.sysctls", "sysctls")
    if str(spec.get("pid") or "") == "host":
        yield Ask(PID_HOST, f"{at}.pid", "the host's pid namespace")
    if str(spec.get("ipc") or "") == "host":
        yield Ask(IPC_HOST, f"{at}.ipc", "the host's ipc namespace")
    if str(spec.get("userns_mode") or "") == "host":
        yield Ask(USERNS_HOST, f"{at}.userns_mode", "the host's user namespace")
    if spec.get("privileged") is True:
        yield Ask(PRIVILEGED, f"{at}.privileged", "a privileged container")
    if spec.get("devices"):
        yield Ask(DEVICES, f"{at}.devices", "host devices")
    if spec.get("ports"):
        yield Ask(PORTS, f"{at}.ports", "ports published on the host (ccci publishes the one it probes)")
    networks = spec.get("networks")
    if isinstance(networks, list | dict) and "host" in networks:
        yield Ask(HOST_NETWORK, f"{at}.networks", "the host network")


def _external_name(key: str, spec: Any) -> str | None:
    if not isinstance(spec, dict) or not spec.get("external"):
        return None
    external = spec.get("external")
    named = external.get("name") if isinstance(external, dict) else None
    return str(spec.get("name") or named or key)


def stack_asks(doc: dict[str, Any], *, app: str) -> list[Ask]:
    """Everything one (rendered) compose document asks of the host beyond what every run gets."""
    asks: list[Ask] = []
    services = doc.get("services") or {}
    for name, spec in services.items() if isinstance(services, dict) else []:
        if isinstance(spec, dict):
            asks += _service_asks(str(name), spec)
    for key, spec in (doc.get("volumes") or {}).items():
        if not isinstance(spec, dict):
            continue
        driver = str(spec.get("driver") or "local")
        if driver != "local" or spec.get("driver_opts"):
            asks.append(Ask(VOLUME_DRIVER, f"volumes.{key}", f"a volume with driver {driver}"
                            + (" and driver_opts (they can mount host paths)" if spec.get("driver_opts") else "")))
    for kind in ("networks", "secrets", "configs"):
        for key, spec in (doc.get(kind) or {}).items():
            name = _external_name(str(key), spec)
            if name is None:
                continue
            if name == "host" and kind == "networks":
                asks.append(Ask(HOST_NETWORK, f"networks.{key}", "the host network"))
            elif name.startswith(f"{app}_") or (kind == "networks" and name in SHARED_NETWORKS):
                continue  # the run's own (the controller creates it), or the shared proxy/SSO
            else:
                asks.append(Ask(f"external:{kind[:-1]}:{name}", f"{kind}.{key}",
                                f"the external {kind[:-1]} {name}, which this run does not own"))
    return asks


def granted(ask: Ask, allow: tuple[str, ...]) -> bool:
    """A bind grant covers the path and everything under it (`..` resolved first); other grants
    match exactly."""
    if not ask.grant.startswith("bind:"):
        return ask.grant in allow
    path = posixpath.normpath(ask.grant.removeprefix("bind:"))
    for grant in allow:
        if grant.startswith("bind:"):
            root = posixpath.normpath(grant.removeprefix("bind:"))
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return True
    return False
