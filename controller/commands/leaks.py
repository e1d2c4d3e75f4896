"""`ccci leaks`: list live objects not owned by a run in flight; exit 1 if any."""

from __future__ import annotations

import argparse
import sys

from controller.commands import entry
from controller.flows.leaks import find_leaks
from controller.util.errors import BadInput, ExternalError
from controller.util.paths import StateDir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("leaks", help="objects no run in flight owns (exit 1 if any)")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    try:
        leaks = find_leaks(StateDir.from_env(args.state_dir))
    except ExternalError as exc:  # not "leaks found" (1): nothing could be looked at
        raise BadInput(f"cannot look for leaks: {exc.message}") from exc
    for leak in leaks:
        print(leak.sentence())
    if leaks:
        print(f"{len(leaks)} leaked objects", file=sys.stderr)
        return 1
    print("no leaks")
    return 0


main = entry("leaks")
