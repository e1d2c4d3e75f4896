"""`ccci sweep`: file the nightly cold sweep's requests (when due, or `--now`)."""

from __future__ import annotations

import argparse

from controller.cli import registry_arg
from controller.commands import entry
from controller.flows import sweep
from controller.flows.context import Context
from controller.registry.store import Registry
from controller.util.paths import StateDir
from controller.util.timeutil import iso, utcnow


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("sweep", help="file cold requests for each recipe's tracked line")
    registry_arg(parser)
    parser.add_argument("--now", action="store_true", help="sweep even if it is not due")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    ctx = Context.open(registry, StateDir.from_env(args.state_dir))
    registry.sync()
    settings = ctx.settings
    last = sweep.last_sweep(ctx)
    if not args.now and not sweep.sweep_due(utcnow(), last, settings.sweep.at, settings.sweep.timezone):
        print(f"sweep not due: last at {iso(last) if last else 'never'}, next after "
              f"{settings.sweep.at} {settings.sweep.timezone}")
        return 0
    report = sweep.run_sweep(ctx)
    for run_id in report.filed:
        print(f"filed {run_id}")
    for recipe, why in report.skipped.items():
        print(f"skipped {recipe}: {why}")
    return 0


main = entry("sweep")
