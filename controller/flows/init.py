"""`ccci init`: a new registry with the layout the controller expects and a commented ccci.yaml."""

from __future__ import annotations

import re
from pathlib import Path

from controller.registry.settings_schema import schema_of
from controller.registry.store import init_registry
from controller.util.errors import BadInput

# What `ccci init --help` shows as the base domain of a registry created without one.
EXAMPLE_BASE_DOMAIN = str(schema_of("base_domain")["examples"][0])


def create_registry(path: Path, *, base_domain: str | None = None) -> None:
    if base_domain is not None and not re.match(str(schema_of("base_domain")["pattern"]), base_domain):
        raise BadInput(f"--base-domain: {base_domain!r} is not a domain name (letters, digits, dashes and "
                       "dots, such as ci.example.org)")
    init_registry(path, base_domain=base_domain)
