"""`ccci sweep`: file the nightly cold sweep's requests (when due, or `--now`)."""

from __future__ import annotations

import argparse

from controller.commands import entry, options
from controller.flows import jobs
from controller.flows.sweep import last_fleet_sweep
from controller.util.timeutil import iso, utcnow


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("sweep", help="file cold requests for each recipe's tracked line")
    options.registry_arg(parser)
    parser.add_argument("--now", action="store_true", help="sweep even if it is not due")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    ctx = options.context(args)
    ledger = jobs.Ledger(ctx.state)
    sweep = jobs.forced_sweep() if args.now else jobs.job("sweep")
    last = jobs.latest(ledger.last_run("sweep"), last_fleet_sweep(ctx.registry.root))
    if not args.now and not sweep.due(ctx, utcnow(), last, False):
        print(f"sweep not due: last at {iso(last) if last else 'never'}, next after "
              f"{ctx.settings.sweep.at} {ctx.settings.sweep.timezone}")
        return 0
    summary = jobs.run_job(ctx, sweep, ledger)
    for run_id in summary.get("filed", []):
        print(f"filed {run_id}")
    if summary.get("swept_by"):
        print(f"{summary['swept_by']} filed this night's sweep first: nothing filed")
    for recipe, why in summary.get("skipped", {}).items():
        print(f"skipped {recipe}: {why}")
    if "error" in summary:
        print(f"sweep failed: {summary['error']}")
        return 1
    return 0


main = entry("sweep")
