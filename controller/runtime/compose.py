"""Pure reading of a recipe: its .env.sample, compose files, and the names they declare."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from controller.util.errors import BadInput

MAX_COMPOSE_BYTES = 1024 * 1024
MAX_COMPOSE_EVENTS = 200_000
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as abra reads `.env.sample`: comments, `export`, quotes, inline `#`."""
    env: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            continue
        value = value.strip()
        if value[:1] == "'":  # single quotes: literal
            end = value.find("'", 1)
            env[key] = value[1:end] if end > 0 else value[1:]
            continue
        if value[:1] == '"':
            end = value.find('"', 1)
            value = value[1:end] if end > 0 else value[1:]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        # As abra's env loader: `$VAR` and `${VAR}` name keys defined above
        # (COMPOSE_FILE="$COMPOSE_FILE:compose.smtp.yml").
        env[key] = interpolate(value, env) if "$" in value else value
    return env


def abra_sh_exports(text: str) -> dict[str, str]:
    """The top-level `export NAME=value` lines of a recipe's `abra.sh`, read as abra does, never
    run (a PR head's shell is untrusted): recipes keep their config versions there."""
    top_level = [line for line in text.splitlines() if line.startswith("export ")]
    return parse_env_file("\n".join(top_level))


def env_comments(text: str) -> dict[str, str]:
    """Inline comments by key (abra's `# length=32` style hints for secrets)."""
    hints: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("#") or "=" not in line or "#" not in line:
            continue
        key = line.split("=", 1)[0].strip()
        hints[key] = line.split("#", 1)[1].strip()
    return hints


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR`, `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group("braced")
        if expr is None:
            return env.get(match.group("plain"), "")
        for op in (":-", "-", ":?", "?"):
            if op in expr:
                name, default = expr.split(op, 1)
                current = env.get(name)
                if op == ":-" and not current:
                    return default
                if op == "-" and current is None:
                    return default
                return current or ""
        return env.get(expr, "")

    return _VAR.sub(replace, value)


def load_compose(path: Path) -> dict[str, Any]:
    """Parse one compose file of a recipe: size- and event-capped, aliases allowed (recipes
    use `x-` anchors), only plain types constructed."""
    where = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{where}: cannot read the compose file: {exc.strerror}") from exc
    if len(raw) > MAX_COMPOSE_BYTES:
        raise BadInput(f"{where}: the compose file is over {MAX_COMPOSE_BYTES} bytes")
    text = raw.decode("utf-8", errors="replace")
    try:
        for events, _ in enumerate(YAML(typ="safe", pure=True).parse(io.StringIO(text)), start=1):
            if events > MAX_COMPOSE_EVENTS:
                raise BadInput(f"{where}: the compose file is too complex to read safely")
        doc = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise BadInput(f"{where}: malformed YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise BadInput(f"{where}: at 'services': a compose file needs a mapping of services")
    return doc


def interpolate_document(value: Any, env: dict[str, str]) -> Any:
    """Every string of a compose document with the stack's env substituted, as the deploy does."""
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, dict):
        return {k: interpolate_document(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_document(v, env) for v in value]
    return value


def rendered_files(checkout: Path, layout: RecipeLayout, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each compose file the deploy reads (COMPOSE_FILE's selection), anchors and merge keys
    resolved, env substituted: what the host policy judges."""
    return {name: interpolate_document(load_compose(checkout / name), env) for name in layout.compose_files}


@dataclass
class RecipeLayout:
    """What the controller needs to know about a recipe checkout."""

    compose_files: list[str]
    services: list[str]
    volumes: list[str]
    networks: list[str]
    external_networks: dict[str, str]  # key -> interpolated name
    configs: list[str]
    secrets: list[str]
    external_secrets: dict[str, str]  # key -> interpolated name
    healthchecked: list[str]
    # Services that mount one of the stack's named volumes: they run where the volume is.
    stateful: list[str] = field(default_factory=list)
    # Top-level definitions as the recipe wrote them (later files win per key): the overlay
    # re-states each with labels added, because the CLI replaces, not merges, these entries.
    definitions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    env_sample: dict[str, str] = field(default_factory=dict)  # .env.sample, then abra.sh exports
    env_hints: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    # (service, port) the recipe tells its proxy to route to (traefik labels), if it does.
    proxied_http: tuple[str, int] | None = None


_TRAEFIK_PORT = re.compile(r"^traefik\.http\.services\.[^.]+\.loadbalancer\.server\.port$")


def _label_map(labels: object, env: dict[str, str]) -> dict[str, str]:
    """Compose labels as a mapping, from either the mapping or the `- key=value` list form."""
    if isinstance(labels, dict):
        pairs = [(str(k), "" if v is None else str(v)) for k, v in labels.items()]
    elif isinstance(labels, list):
        pairs = [(key, value) for key, _, value in (str(item).partition("=") for item in labels)]
    else:
        return {}
    return {interpolate(k, env).strip(): interpolate(v, env).strip() for k, v in pairs}


def proxied_service(services: dict[str, Any], env: dict[str, str]) -> tuple[str, int] | None:
    """The service a Co-op Cloud recipe exposes through traefik (`traefik.enable=true` in its
    deploy labels) and the container port it names (`…loadbalancer.server.port`, else 80)."""
    for name, spec in services.items():
        deploy = spec.get("deploy") if isinstance(spec, dict) else None
        labels = _label_map(deploy.get("labels") if isinstance(deploy, dict) else None, env)
        if labels.get("traefik.enable", "").lower() != "true":
            continue
        for key, value in labels.items():
            if _TRAEFIK_PORT.match(key) and value.isdigit() and 0 < int(value) < 65536:
                return str(name), int(value)
        return str(name), 80
    return None


def mounted_volumes(service: object) -> set[str]:
    """Pure: the named volumes a compose service mounts (short `name:/path[:ro]` or long
    `{type: volume, source: name}`); bind mounts and anonymous volumes are not named."""
    mounts = service.get("volumes") if isinstance(service, dict) else None
    names: set[str] = set()
    for mount in mounts if isinstance(mounts, list) else []:
        if isinstance(mount, str):
            source, sep, _ = mount.partition(":")
            if sep and source and not source.startswith(("/", ".", "~", "$")):
                names.add(source)
        elif isinstance(mount, dict) and mount.get("type", "volume") == "volume" and mount.get("source"):
            names.add(str(mount["source"]))
    return names


def compose_file_list(checkout: Path, env: dict[str, str]) -> list[str]:
    """COMPOSE_FILE from the env (abra's convention), else the first standard name."""
    listed = env.get("COMPOSE_FILE")
    if listed:
        files = [f for f in listed.split(":") if f]
    else:
        files = [n for n in ("compose.yml", "compose.yaml", "docker-compose.yml") if (checkout / n).is_file()][:1]
    if not files:
        raise BadInput(f"{checkout.name}: the recipe has no compose.yml")
    for name in files:
        if name.startswith("/") or ".." in Path(name).parts:
            raise BadInput(f".env.sample: at 'COMPOSE_FILE': {name!r} is outside the recipe")
        if not (checkout / name).is_file():
            raise BadInput(f".env.sample: at 'COMPOSE_FILE': {name} does not exist in the recipe")
    return files


def read_layout(checkout: Path, run_env: dict[str, str]) -> RecipeLayout:
    """Read `.env.sample` and the compose files; `run_env` (STACK_NAME, DOMAIN, …) wins."""
    sample_path = checkout / ".env.sample"
    sample_text = sample_path.read_text(errors="replace") if sample_path.is_file() else ""
    abra_sh = checkout / "abra.sh"
    # As abra: abra.sh's exports (config and secret versions) override .env.sample.
    env_sample = {**parse_env_file(sample_text),
                  **(abra_sh_exports(abra_sh.read_text(errors="replace")) if abra_sh.is_file() else {})}
    env = {**env_sample, **run_env}
    files = compose_file_list(checkout, env)
    services: list[str] = []
    volumes: list[str] = []
    networks: list[str] = []
    external_networks: dict[str, str] = {}
    configs: list[str] = []
    secrets: list[str] = []
    external_secrets: dict[str, str] = {}
    healthchecked: list[str] = []
    mounts: dict[str, set[str]] = {}
    version = None
    definitions: dict[str, dict[str, dict[str, Any]]] = {
        "volumes": {}, "networks": {}, "configs": {}, "secrets": {}}
    proxied: tuple[str, int] | None = None
    for name in files:
        doc = load_compose(checkout / name)
        proxied = proxied_service(doc["services"], env) or proxied
        for kind, defs in definitions.items():
            for key, spec in (doc.get(kind) or {}).items():
                defs[key] = dict(spec) if isinstance(spec, dict) else {}
        version = version or (str(doc["version"]) if doc.get("version") else None)
        for svc, spec in (doc.get("services") or {}).items():
            if svc not in services:
                services.append(svc)
            mounts.setdefault(svc, set()).update(mounted_volumes(spec))
            if isinstance(spec, dict) and isinstance(spec.get("healthcheck"), dict) and not spec[
                    "healthcheck"].get("disable") and svc not in healthchecked:
                healthchecked.append(svc)
        for key, spec in (doc.get("volumes") or {}).items():
            if not (isinstance(spec, dict) and spec.get("external")) and key not in volumes:
                volumes.append(key)
        for key, spec in (doc.get("networks") or {}).items():
            if isinstance(spec, dict) and spec.get("external"):
                external_networks[key] = interpolate(str(spec.get("name") or key), env)
            elif key not in networks:
                networks.append(key)
        for key, spec in (doc.get("configs") or {}).items():
            if not (isinstance(spec, dict) and spec.get("external")) and key not in configs:
                configs.append(key)
        for key, spec in (doc.get("secrets") or {}).items():
            if isinstance(spec, dict) and spec.get("external"):
                external_secrets[key] = interpolate(str(spec.get("name") or key), env)
            elif key not in secrets:
                secrets.append(key)
    return RecipeLayout(
        compose_files=files,
        services=services,
        volumes=volumes,
        networks=networks,
        external_networks=external_networks,
        configs=configs,
        secrets=secrets,
        external_secrets=external_secrets,
        healthchecked=healthchecked,
        stateful=[svc for svc in services if mounts.get(svc, set()) & set(volumes)],
        definitions=definitions,
        env_sample=env_sample,
        env_hints=env_comments(sample_text),
        version=version,
        proxied_http=proxied,
    )
