"""`ccci serve`: the daemon; watch the registry clone, claim requests, run them, commit."""

from __future__ import annotations

import argparse

from controller.commands import entry, options
from controller.flows.serve import Server, open_for_serve
from controller.util.systemd import Notifier


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the controller loop")
    options.registry_arg(parser)
    parser.add_argument("--once", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--poll-interval", type=options.positive_seconds, default=None,
                        help="seconds between fetches of the remote (default serve.poll_interval_s)")
    parser.add_argument("--no-watch", action="store_true",
                        help="do not watch the clone for changes; only poll (benchmarks compare both)")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    systemd = Notifier.from_environment()  # READY=1, WATCHDOG=1, STOPPING=1 under Type=notify
    ctx = open_for_serve(options.registry_path(args), args.state_dir, once=args.once,
                         poll_interval=args.poll_interval, systemd=systemd, host=args.host)
    return Server(ctx, once=args.once, poll_interval=args.poll_interval, watch=not args.no_watch,
                  systemd=systemd).serve()


main = entry("serve")
