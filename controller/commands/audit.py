"""`ccci audit`: prove the canonical invariant over the registry's whole git history."""

from __future__ import annotations

import argparse
import sys

from controller.commands import entry
from controller.commands.options import registry_arg
from controller.flows.audit import audit


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="check every canonical change in git history")
    registry_arg(parser)
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    checked, violations = audit(args.registry)
    for violation in violations:
        print(violation.sentence(), file=sys.stderr)
    if violations:
        print(f"audit failed: {len(violations)} of {checked} canonical changes were not made by the "
              "controller after a green cold run of that commit", file=sys.stderr)
        return 1
    print(f"audit ok: {checked} canonical changes, each made by the controller after a green cold "
          "run of that exact commit")
    return 0


main = entry("audit")
