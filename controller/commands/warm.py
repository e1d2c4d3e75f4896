"""`ccci warm reconcile | reap`: converge the live-warm Keycloak; delete realms of dead runs."""

from __future__ import annotations

import argparse
import sys

from controller.commands import entry, options
from controller.commands.options import registry_arg
from controller.flows import keycloak


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("warm", help="the live-warm infra: reconcile the Keycloak, reap realms")
    actions = parser.add_subparsers(dest="warm_action", required=True, parser_class=type(parser))
    reconcile = actions.add_parser(
        "reconcile", help="deploy the warm Keycloak and move it to its recipe's newest version, gated")
    registry_arg(reconcile)
    reconcile.add_argument("--approve", metavar="COMMIT",
                           help="apply this held upgrade (after its manual steps); the health gate "
                                "still applies")
    reconcile.set_defaults(handler=execute_reconcile)
    reap = actions.add_parser("reap", help="delete per-run realms whose run is no longer in flight")
    registry_arg(reap)
    reap.set_defaults(handler=execute_reap)


def execute_reconcile(args: argparse.Namespace) -> int:
    report = keycloak.reconcile(options.context(args), approve=args.approve)
    print(f"{report.outcome}: {report.message}", file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def execute_reap(args: argparse.Namespace) -> int:
    deleted = keycloak.reap_stale_realms(options.context(args))
    for name in deleted:
        print(f"deleted realm {name}")
    print(f"reaped {len(deleted)} realm(s)")
    return 0


main = entry("warm")
