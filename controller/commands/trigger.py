"""`ccci trigger`: turn a PR comment (`!testme`, `!testme --quick`, `!testme --upgrade`) into a run request."""

from __future__ import annotations

import argparse

from controller.commands import entry
from controller.commands.options import registry_arg
from controller.flows.requests import file_request, trigger_mode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("trigger", help="file a request from a PR comment")
    registry_arg(parser)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--by", required=True, dest="requested_by")
    parser.add_argument("--comment", required=True)
    parser.add_argument("--pr", type=int, default=None)
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    mode = trigger_mode(args.comment)  # BadInput (exit 2) for a look-alike: the commenter meant one
    if mode is None:
        print("ignored: not a trigger (a bot passes on every comment; only `!testme`, "
              "`!testme --quick` and `!testme --upgrade` file a request)")
        return 0
    run_id = file_request(args.registry, recipe=args.recipe, ref=args.ref, mode=mode,
                          requested_by=args.requested_by, trigger=args.comment.strip(), pr=args.pr)
    print(run_id)
    return 0


main = entry("trigger")
