"""`ccci audit`: prove over the registry's git history that its results and canonicals are the controller's."""

from __future__ import annotations

import argparse
import sys

from controller.commands import entry
from controller.commands.options import registry_arg
from controller.flows.audit import audit


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "audit", help="check that every result and canonical change in git history is the controller's")
    registry_arg(parser)
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    report = audit(args.registry)
    counted = (f"{report.commits} commits ({report.others} not the controller's) and "
               f"{report.canonical_changes} canonical changes")
    for violation in report.violations:
        print(violation.sentence(), file=sys.stderr)
    if report.violations:
        print(f"audit failed: {len(report.violations)} violations in {counted}", file=sys.stderr)
        return 1
    print(f"audit ok: {counted}; every result committed by the controller, every canonical change "
          "made by it with the result of a green cold run of that exact commit")
    return 0


main = entry("audit")
