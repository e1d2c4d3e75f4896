"""Clearing what an interrupted operation left in an app's store, before anything else runs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from controller.snapshots import fsio, patch
from controller.snapshots.layout import GEN_PREFIX, LINK_TEMP_PREFIX, VOLUMES_DIR, link_target
from controller.util import files

log = logging.getLogger(__name__)


def remove_leftovers(where: Path) -> list[str]:
    """Delete what an interrupted take or write left: unlinked generations and temp names.

    Call only under the app's lock: then no take is running, so anything the
    last-known-good link does not name is garbage.
    """
    current = link_target(where)
    # A patch left half done is undone (or, swapped, finished) before its generation goes.
    patch.settle(where, current, VOLUMES_DIR)
    removed: list[str] = []
    for name in sorted(fsio.iter_dir_names(where)):
        path = where / name
        if name.startswith(GEN_PREFIX) and name != current:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        elif name.startswith((LINK_TEMP_PREFIX, files.TEMP_PREFIX)):
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        files.fsync_path(where)
        log.info("snapshot store %s: removed leftovers of an interrupted operation: %s",
                 where, ", ".join(removed))
    return removed
