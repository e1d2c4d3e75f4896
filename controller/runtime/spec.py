"""Pure construction of a deploy: the stack's env and the controller's overlay compose file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from controller.runtime.compose import RecipeLayout


@dataclass(frozen=True)
class AppIdentity:
    """Who a deploy belongs to; becomes the `ccci.*` labels."""

    app: str
    mode: str  # cold | warm | infra
    run: str | None
    commit: str
    owner: str | None = None  # the controller state dir that judges this app's life

    def labels(self) -> dict[str, str]:
        labels = {
            "ccci.managed": "true",
            "ccci.app": self.app,
            "ccci.mode": self.mode,
            "ccci.commit": self.commit,
        }
        if self.owner:
            labels["ccci.owner"] = self.owner
        if self.run:
            labels["ccci.run"] = self.run
        return labels

    def object_labels(self) -> dict[str, str]:
        """Labels for volumes, networks, configs, secrets: no commit (they outlive upgrades)."""
        return {k: v for k, v in self.labels().items() if k != "ccci.commit"}


@dataclass(frozen=True)
class DeploySpec:
    identity: AppIdentity
    domain: str
    http_service: str | None
    http_port: int
    host_port: int | None
    env: dict[str, str] = field(default_factory=dict)
    endpoint_mode: str | None = field(
        default_factory=lambda: os.environ.get("CCCI_ENDPOINT_MODE", "dnsrr") or None)
    limits: ResourceLimits | None = None  # on every service; None: the recipe's own
    # The swarm node of the controller's own engine (its id), where `pinned_services` run.
    node: str | None = None


@dataclass(frozen=True)
class ResourceLimits:
    memory: str  # compose's notation: 512M, 1g
    cpus: float
    pids: int


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (text or "").split("."))
    except ValueError:
        return ()


def limits_document(limits: ResourceLimits, compose_version: str | None) -> dict[str, Any]:
    """`deploy.resources.limits` in the recipe's compose version: `pids` exists from 3.9 on (and
    in the unversioned format); the CLI refuses it in older ones."""
    doc: dict[str, Any] = {"memory": limits.memory, "cpus": f"{limits.cpus:g}"}
    if compose_version is None or _version(compose_version) >= (3, 9):
        doc["pids"] = limits.pids
    return doc


def stack_env(layout: RecipeLayout, spec: DeploySpec, extra: dict[str, str]) -> dict[str, str]:
    """The stack's env as abra builds it: `.env.sample`, then the operator's per-recipe `env`
    from ccci.yaml, then the run's own values (names, domain, realm details) which always win."""
    env = dict(layout.env_sample)
    env.update(spec.env)
    env.update({
        "STACK_NAME": spec.identity.app,
        "DOMAIN": spec.domain,
        "CCCI_APP": spec.identity.app,
        "CCCI_COMMIT": spec.identity.commit,
    })
    env.update(extra)
    env.pop("COMPOSE_FILE", None)
    return env


def pinned_services(layout: RecipeLayout, spec: DeploySpec) -> list[str]:
    """Pure: the services that must run on the controller's node in a multi-node swarm. A warm
    or infra app entirely: its volumes are the ones the controller snapshots from its own disk.
    A cold app only where the controller must reach it: the HTTP service (its host-mode port is
    probed on 127.0.0.1) and services that mount a named volume (volumes are per node, and
    teardown and the leak check see this node's only); the rest may run on any node."""
    if not spec.node:
        return []
    if spec.identity.mode in ("warm", "infra"):
        return list(layout.services)
    return [name for name in layout.services
            if name in layout.stateful or (name == spec.http_service and spec.host_port is not None)]


def overlay_document(layout: RecipeLayout, spec: DeploySpec) -> dict[str, Any]:
    """The controller's own compose file, deployed after the recipe's: labels on every
    object, `pinned_services` constrained to the controller's node, the HTTP service published
    in host mode on the app's port (stop-first updates, since a host port cannot be held by two
    tasks at once)."""
    if spec.http_service and spec.http_service not in layout.services:
        known = ", ".join(layout.services)
        raise ValueError(f"http service {spec.http_service!r} is not in the recipe (services: {known}); "
                         "give the recipe traefik labels, or set recipes.<name>.http in ccci.yaml "
                         "({service, port}, or enabled: false for a recipe that serves no HTTP)")
    labels = spec.identity.labels()
    object_labels = spec.identity.object_labels()
    services: dict[str, Any] = {}
    pinned = pinned_services(layout, spec)
    for name in layout.services:
        service: dict[str, Any] = {"labels": dict(labels), "deploy": {"labels": dict(labels)}}
        if name in pinned:
            # The CLI appends to the recipe's own constraints: both hold.
            service["deploy"]["placement"] = {"constraints": [f"node.id=={spec.node}"]}
        if spec.endpoint_mode:
            # Service VIPs need IPVS, which CI hosts often lack; DNS round-robin needs nothing.
            service["deploy"]["endpoint_mode"] = spec.endpoint_mode
        if spec.limits is not None:
            # Last file wins: a recipe's own limits cannot lift these (only ccci.yaml can).
            service["deploy"]["resources"] = {"limits": limits_document(spec.limits, layout.version)}
        if name == spec.http_service and spec.host_port is not None:
            service["ports"] = [{
                "target": spec.http_port,
                "published": spec.host_port,
                "protocol": "tcp",
                "mode": "host",
            }]
            service["deploy"]["update_config"] = {"order": "stop-first"}
        services[name] = service
    # The CLI refuses to merge files of different versions: speak the recipe's (none = latest).
    doc: dict[str, Any] = {"version": layout.version} if layout.version else {}
    doc["services"] = services

    def labelled(kind: str, keys: list[str]) -> dict[str, Any]:
        out = {}
        for key in keys:
            definition = dict(layout.definitions.get(kind, {}).get(key, {}))
            definition["labels"] = {**(definition.get("labels") or {}), **object_labels}
            out[key] = definition
        return out

    if layout.volumes:
        doc["volumes"] = labelled("volumes", layout.volumes)
    networks = labelled("networks", layout.networks)
    networks.setdefault("default", {"labels": dict(object_labels)})
    doc["networks"] = networks
    if layout.configs:
        doc["configs"] = labelled("configs", layout.configs)
    if layout.secrets:
        doc["secrets"] = labelled("secrets", layout.secrets)
    return doc


def secret_length(layout: RecipeLayout, secret_key: str) -> int:
    """abra's `SECRET_<KEY>_VERSION=v1 # length=N` hint, else 32."""
    hint = layout.env_hints.get(f"SECRET_{secret_key.upper()}_VERSION", "")
    for part in hint.replace(",", " ").split():
        if part.startswith("length="):
            try:
                return max(8, min(256, int(part.split("=", 1)[1])))
            except ValueError:
                break
    return 32
