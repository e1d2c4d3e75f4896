"""Reaching the configured forge: its client (token from a file), the webhook secret, and which
recipe a forge repository is."""

from __future__ import annotations

from controller.forge import ForgeClient
from controller.registry.settings import RecipeSettings, Settings
from controller.util.credentials import secret_file
from controller.util.errors import BadInput
from controller.util.log import register_secret


def _secret(name: str | None, key: str) -> str:
    if not name:
        raise BadInput(f"ccci.yaml: at 'forge.{key}': not set; the forge needs it")
    try:
        path = secret_file(name)
    except BadInput as exc:
        raise BadInput(f"ccci.yaml: at 'forge.{key}': {exc.message}") from exc
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise BadInput(f"ccci.yaml: at 'forge.{key}': cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise BadInput(f"ccci.yaml: at 'forge.{key}': {path} is empty")
    register_secret(value)  # never in a log line from now on
    return value


def forge_client(settings: Settings) -> ForgeClient:
    forge = settings.forge
    if forge.url is None:
        raise BadInput("ccci.yaml: at 'forge.url': no forge is configured")
    return ForgeClient(forge.url, _secret(forge.token_file, "token_file"))


def webhook_secret(settings: Settings) -> bytes:
    return _secret(settings.forge.webhook_secret_file, "webhook_secret_file").encode()


def recipe_for_repo(settings: Settings, repo: str) -> RecipeSettings | None:
    """The recipe whose `forge_repo` is `repo` (owner/name; the forge ignores case)."""
    wanted = repo.casefold()
    for recipe in settings.recipes.values():
        if recipe.forge_repo and recipe.forge_repo.casefold() == wanted:
            return recipe
    return None


def forge_repos(settings: Settings) -> list[str]:
    return sorted({r.forge_repo for r in settings.recipes.values() if r.forge_repo})
