"""`ccci forge webhook | poll`: PR comments on the forge in, as request commits."""

from __future__ import annotations

import argparse

from controller.commands import entry, options
from controller.flows.forge import service
from controller.util.errors import BadInput


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("forge", help="the forge: receive or poll PR comments")
    actions = parser.add_subparsers(dest="forge_action", required=True, parser_class=type(parser))
    webhook = actions.add_parser("webhook", help="receive issue_comment webhooks")
    options.registry_arg(webhook)
    webhook.add_argument("--listen", required=True, metavar="HOST:PORT",
                         help="where to listen, e.g. 127.0.0.1:8765 behind a reverse proxy")
    webhook.set_defaults(handler=execute_webhook)
    poll = actions.add_parser("poll", help="poll PR comments since a persisted cursor")
    options.registry_arg(poll)
    poll.add_argument("--once", action="store_true", help="one poll, deliver what is queued, exit")
    poll.add_argument("--interval", type=options.positive_seconds, default=None,
                      help="seconds between polls (default forge.poll_interval_s)")
    poll.set_defaults(handler=execute_poll)


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"--listen: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def execute_webhook(args: argparse.Namespace) -> int:
    host, port = listen_address(args.listen)
    return service.serve_webhook(options.context(args, sync=False), host, port)


def execute_poll(args: argparse.Namespace) -> int:
    return service.run_poller(options.context(args, sync=False), once=args.once, interval=args.interval)


main = entry("forge")
