"""`ccci request`: file a run request (a commit under requests/)."""

from __future__ import annotations

import argparse

from controller.commands import entry
from controller.commands.options import registry_arg
from controller.flows.requests import file_request


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("request", help="file a run request")
    registry_arg(parser)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--ref", required=True, help="40-hex commit of the recipe to test")
    parser.add_argument("--mode", default="cold", help="cold (default), quick or upgrade")
    parser.add_argument("--by", required=True, dest="requested_by", help="who asks")
    parser.add_argument("--comment", default=None, help="the PR comment that asked, if any")
    parser.add_argument("--pr", type=int, default=None)
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    run_id = file_request(args.registry, recipe=args.recipe, ref=args.ref, mode=args.mode,
                          requested_by=args.requested_by, trigger=args.comment, pr=args.pr)
    print(run_id)
    return 0


main = entry("request")
