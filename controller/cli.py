"""The console script `ccci` (and `python -m controller`): hand argv to the commands."""

from __future__ import annotations

from collections.abc import Sequence

from controller.commands import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv)
