"""Secret files ccci.yaml names: a path, or a credential systemd hands the unit (`LoadCredential=`)."""

from __future__ import annotations

import os
from pathlib import Path

from controller.util.errors import BadInput

CREDENTIALS_PREFIX = "$CREDENTIALS_DIRECTORY/"


def secret_file(name: str) -> Path:
    """The file a secret's `*_file` key names. `$CREDENTIALS_DIRECTORY/<credential>` is a file in
    the directory systemd gives a unit's `LoadCredential=` secrets (`/run/credentials/<unit>/`).
    Each unit has its own, so that one name serves `ccci serve`, the forge intake and the
    Keycloak timer alike, where a literal path could name only one unit's directory."""
    if not name.startswith(CREDENTIALS_PREFIX):
        return Path(name)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise BadInput(f"{name} is a systemd credential, and this process was given none "
                       "($CREDENTIALS_DIRECTORY is not set): run it in its unit, or set "
                       "CREDENTIALS_DIRECTORY to a directory that holds the credential")
    return Path(directory) / name.removeprefix(CREDENTIALS_PREFIX)
