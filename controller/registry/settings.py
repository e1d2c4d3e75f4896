"""Registry settings (`ccci.yaml`): nested dataclasses built from the validated file and its schema."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from controller.registry import schemas, settings_schema
from controller.util.credentials import secret_file
from controller.util.errors import BadInput
from controller.util.yamlio import DEFAULT_MAX_BYTES, load_untrusted, read_capped

SETTINGS_FILE = "ccci.yaml"

# Each class is one section of ccci.yaml; what each key means, and its default, is in
# settings_schema (and docs/settings.md, generated from it). No field repeats a default.


@dataclass(frozen=True)
class IdentitySettings:
    """`identity`: who the controller commits as (after the CCCI_GIT_* overrides)."""

    name: str
    email: str


@dataclass(frozen=True)
class AuthoritySettings:
    """`authority`: per kind of run, the users who may request it ('*': anyone)."""

    cold: tuple[str, ...]
    quick: tuple[str, ...]
    upgrade: tuple[str, ...] | None = None  # None (unset): whoever `cold` admits

    def rules(self, key: str) -> tuple[str, ...]:
        """The list of authority `key` (cold, quick, upgrade); an unknown key: nobody."""
        if key == "upgrade" and self.upgrade is None:
            return self.cold
        lists: dict[str, tuple[str, ...] | None] = {f.name: getattr(self, f.name) for f in fields(self)}
        return lists.get(key) or ()

    def allows(self, key: str, user: str) -> bool:
        """Whether `user` is named (or '*' is) in authority `key`. Forge rules (`org:`, `team:`,
        `collaborator`) need the forge: see flows.forge.authority."""
        allowed = self.rules(key)
        return "*" in allowed or user in allowed


@dataclass(frozen=True)
class QuickSettings:
    """`quick`: how quick requests are handled."""

    no_canonical: str  # fallback-cold | reject
    host_wait_s: float  # how long a quick request waits for a host holding its snapshot


@dataclass(frozen=True)
class UpgradeSettings:
    """`upgrade`: upgrade runs from the recipe's release tags."""

    from_tags: int  # how many of the latest release tags, unless the recipe says


@dataclass(frozen=True)
class SweepSettings:
    """`sweep`: the nightly cold sweep."""

    at: str  # HH:MM in `timezone`
    timezone: str
    max_tests: int
    order: str  # stalest-first | alphabetical


@dataclass(frozen=True)
class KeycloakSettings:
    """`warm.keycloak`: the live-warm Keycloak runs get their realms on."""

    mode: str  # external | managed | off
    url: str | None
    admin_user: str
    admin_secret_file: str | None
    admin_secret_env: str
    recipe: str  # managed mode: the recipe deployed as the live Keycloak
    app: str  # managed mode: the live app's name (never `warm-*`)
    port: int  # managed mode: the host port it is published on
    fallback: str  # co-deploy | fail

    def admin_password(self) -> str | None:
        """From the secret file or the environment, never from git."""
        if self.admin_secret_file:
            try:
                return secret_file(self.admin_secret_file).read_text().strip()
            except (OSError, BadInput):
                return None
        return os.environ.get(self.admin_secret_env)


@dataclass(frozen=True)
class WarmSettings:
    """`warm`: live-warm infrastructure that runs share."""

    keycloak: KeycloakSettings


@dataclass(frozen=True)
class LimitsSettings:
    """`limits`: host safety and what prune may remove."""

    max_parallel_cold: int
    disk_min_free_gb: float
    prune_images: str  # dangling | unused | none
    prune_keep_images: tuple[str, ...]  # fnmatch patterns of image names prune never removes
    prune_interval_s: float
    service_memory: str
    service_cpus: float
    service_pids: int


@dataclass(frozen=True)
class ForgeSettings:
    """`forge`: the Gitea or Forgejo PR comments come from and verdicts go to."""

    kind: str  # gitea | forgejo
    url: str | None  # None: no forge
    token_file: str | None
    webhook_secret_file: str | None
    context: str
    results_url: str | None  # with {path}
    poll_interval_s: float

    @property
    def enabled(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class ServeSettings:
    """`serve`: the daemon."""

    poll_interval_s: float
    reap_interval_s: float
    reconcile_interval_s: float
    deadline_grace_s: int  # a claim's deadline is start + timeout_s + this
    refile_abandoned: bool  # re-file once a run another host marked aborted


@dataclass(frozen=True)
class HttpSettings:
    """`recipes.<name>.http`: the service the HTTP probe reaches."""

    service: str | None  # None: see `resolve`
    port: int | None
    path: str
    enabled: bool  # false: the recipe serves no HTTP; skip the port and the probe

    def resolve(self, from_recipe: tuple[str, int] | None = None) -> tuple[str, int]:
        """(service, port): what ccci.yaml says, else what the recipe tells its proxy (traefik
        labels), else app:80."""
        service, port = from_recipe or ("app", 80)
        if self.service is not None and self.service != service:
            port = 80  # the recipe's port belongs to another service
        return self.service or service, self.port or port


@dataclass(frozen=True)
class ServiceLimits:
    """The resource limits every service of a run gets."""

    memory: str
    cpus: float
    pids: int


@dataclass(frozen=True)
class RecipeSettings:
    """`recipes.<name>`: one recipe and its options."""

    name: str
    source: str  # a local path or git URL of the recipe repository
    track: str  # a branch name, or "tags"
    sso: str | None  # "keycloak": the run gets a per-run realm
    timeout_s: int
    stability_s: float
    http: HttpSettings
    assert_path: str  # `assert` in the file (a Python keyword here)
    assert_timeout_s: int
    env: dict[str, str]  # extra stack env, over .env.sample
    forge_repo: str | None  # owner/name on the forge
    warm_hosts: tuple[str, ...]  # hosts keeping the canonical warm; empty: the promoting one
    allow: tuple[str, ...]  # host policy grants (policy.allow)
    limits: ServiceLimits  # limits.service_*, with this recipe's overrides
    follow_up_cold: bool = False  # a failed quick run files a cold run of the same commit
    hot: bool = False  # keep the warm canonical running at its known-good between quick runs
    upgrade_from: int | None = None  # release tags an upgrade run starts from; None: upgrade.from_tags

    @property
    def keeps_hot(self) -> bool:
        """A hot canonical, where it can be one: an SSO recipe's runs each get their own realm."""
        return self.hot and not self.sso


@dataclass(frozen=True)
class Settings:
    """The whole of ccci.yaml, every section filled in."""

    base_domain: str
    identity: IdentitySettings
    recipes: dict[str, RecipeSettings]
    authority: AuthoritySettings
    quick: QuickSettings
    upgrade: UpgradeSettings
    sweep: SweepSettings
    warm: WarmSettings
    limits: LimitsSettings
    forge: ForgeSettings
    serve: ServeSettings

    def recipe(self, name: str) -> RecipeSettings:
        try:
            return self.recipes[name]
        except KeyError:
            raise BadInput(f"{SETTINGS_FILE}: at 'recipes': no recipe named {name!r}") from None

    def upgrade_from_tags(self, name: str) -> int:
        """How many release tags an upgrade run of recipe `name` starts from."""
        own = self.recipe(name).upgrade_from
        return own if own is not None else self.upgrade.from_tags

    def domain(self, app: str) -> str:
        return f"{app}.{self.base_domain}"


def _recipe(name: str, raw: dict[str, Any], limits: LimitsSettings) -> RecipeSettings:
    http = raw["http"]
    own = raw.get("limits") or {}
    return RecipeSettings(
        name=name,
        source=raw["source"],
        track=raw["track"],
        sso=raw.get("sso"),
        timeout_s=raw["timeout_s"],
        stability_s=float(raw["stability_s"]),
        http=HttpSettings(service=http.get("service"), port=http.get("port"), path=http["path"],
                          enabled=http["enabled"]),
        assert_path=raw["assert"],
        assert_timeout_s=raw["assert_timeout_s"],
        env={k: str(v) for k, v in raw["env"].items()},
        forge_repo=raw.get("forge_repo"),
        warm_hosts=tuple(raw["warm_hosts"]),
        allow=tuple(raw["policy"]["allow"]),
        limits=ServiceLimits(memory=str(own.get("memory", limits.service_memory)),
                             cpus=float(own.get("cpus", limits.service_cpus)),
                             pids=int(own.get("pids", limits.service_pids))),
        follow_up_cold=bool(raw["follow_up_cold"]),
        hot=bool(raw["hot"]),
        upgrade_from=raw.get("upgrade_from"),
    )


def _identity(raw: dict[str, Any]) -> IdentitySettings:
    return IdentitySettings(name=os.environ.get("CCCI_GIT_NAME") or raw["name"],
                            email=os.environ.get("CCCI_GIT_EMAIL") or raw["email"])


def default_identity() -> IdentitySettings:
    """Who the controller commits as when no ccci.yaml says otherwise."""
    return _identity(settings_schema.defaults()["identity"])


def settings_from_document(doc: dict[str, Any]) -> Settings:
    """Settings from a validated document; what it leaves out comes from the schema's defaults."""
    full = settings_schema.with_defaults(doc)
    identity, authority, sweep = full["identity"], full["authority"], full["sweep"]
    kc, limits, forge = full["warm"]["keycloak"], full["limits"], full["forge"]
    limit_settings = LimitsSettings(
        max_parallel_cold=limits["max_parallel_cold"],
        disk_min_free_gb=float(limits["disk_min_free_gb"]),
        prune_images=limits["prune_images"],
        prune_keep_images=tuple(limits["prune_keep_images"]),
        prune_interval_s=float(limits["prune_interval_s"]),
        service_memory=str(limits["service_memory"]), service_cpus=float(limits["service_cpus"]),
        service_pids=int(limits["service_pids"]))
    return Settings(
        base_domain=full["base_domain"],
        identity=_identity(identity),
        recipes={name: _recipe(name, raw, limit_settings) for name, raw in full["recipes"].items()},
        authority=AuthoritySettings(cold=tuple(authority["cold"]), quick=tuple(authority["quick"]),
                                    upgrade=tuple(authority["upgrade"]) if authority.get("upgrade") is not None
                                    else None),
        upgrade=UpgradeSettings(from_tags=int(full["upgrade"]["from_tags"])),
        quick=QuickSettings(no_canonical=full["quick"]["no_canonical"],
                            host_wait_s=float(full["quick"]["host_wait_s"])),
        sweep=SweepSettings(at=sweep["at"], timezone=sweep["timezone"], max_tests=sweep["max_tests"],
                            order=sweep["order"]),
        warm=WarmSettings(keycloak=KeycloakSettings(
            mode=kc["mode"], url=kc.get("url"), admin_user=kc["admin_user"],
            admin_secret_file=kc.get("admin_secret_file"), admin_secret_env=kc["admin_secret_env"],
            recipe=kc["recipe"], app=kc["app"], port=kc["port"], fallback=kc["fallback"])),
        limits=limit_settings,
        forge=ForgeSettings(
            kind=forge["kind"], url=forge.get("url"), token_file=forge.get("token_file"),
            webhook_secret_file=forge.get("webhook_secret_file"), context=forge["context"],
            results_url=forge.get("results_url"), poll_interval_s=float(forge["poll_interval_s"])),
        serve=ServeSettings(poll_interval_s=float(full["serve"]["poll_interval_s"]),
                            reap_interval_s=float(full["serve"]["reap_interval_s"]),
                            reconcile_interval_s=float(full["serve"]["reconcile_interval_s"]),
                            deadline_grace_s=int(full["serve"]["deadline_grace_s"]),
                            refile_abandoned=bool(full["serve"]["refile_abandoned"])),
    )


def parse_settings(raw: bytes, where: str = SETTINGS_FILE) -> Settings:
    """Settings from the bytes of a ccci.yaml (untrusted: capped, safely loaded, schema-checked).
    Remembered by content and the environment that overrides it (frozen, so shared safely): a
    serve pass reads the file several times, and checking 200 recipes costs a quarter second."""
    return _parse_settings(raw, where, os.environ.get("CCCI_GIT_NAME"), os.environ.get("CCCI_GIT_EMAIL"))


@functools.lru_cache(maxsize=8)
def _parse_settings(raw: bytes, where: str, _name: str | None, _email: str | None) -> Settings:
    doc = load_untrusted(raw, where)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: at '(top level)': expected a mapping of settings")
    schemas.validate(doc, settings_schema.SETTINGS, where)
    settings = settings_from_document(doc)
    _check_time_zone(settings.sweep.timezone, where)
    return settings


def _check_time_zone(name: str, where: str) -> None:
    """Found at load, not on the second sweep."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"{where}: at 'sweep.timezone': {name!r} is not a known time zone (an IANA "
                       "name such as UTC or Europe/Berlin)") from None


def load_settings(registry_root: Path) -> Settings:
    path = registry_root / SETTINGS_FILE
    if not path.is_file():
        raise BadInput(f"{SETTINGS_FILE}: not found in {registry_root} (is this a registry? try `ccci init`)")
    return parse_settings(read_capped(path, SETTINGS_FILE, DEFAULT_MAX_BYTES))
