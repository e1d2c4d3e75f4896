"""One module per CLI subcommand: parse, call one flow, return an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def entry(name: str) -> Callable[[Sequence[str] | None], int]:
    """`main(argv=None) -> int` for one subcommand, through the CLI's error boundary."""

    def main(argv: Sequence[str] | None = None) -> int:
        from controller.cli import main as cli_main

        return cli_main([name, *(argv if argv is not None else sys.argv[1:])])

    return main
