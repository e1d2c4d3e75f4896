"""`ccci run RUN_ID`: run one request in the foreground, with progress by phase."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from controller.commands import entry, options
from controller.flows import modes, rewarm, runs
from controller.flows.fleet.migrate import migrate_legacy_index
from controller.flows.forge.service import Deliverer
from controller.util.errors import BadInput, CcciError
from controller.util.names import request_rel


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run one request in the foreground")
    options.registry_arg(parser)
    parser.add_argument("run_id")
    parser.add_argument("--no-rewarm", action="store_true",
                        help="leave a rewarm this run's promotion queues to `ccci serve` instead of "
                             "running it before exiting")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    spinner = console.status("starting", spinner="dots") if console.is_terminal else None

    def progress(phase: str, state: str) -> None:
        if state == "start":
            if spinner:
                spinner.update(f"[bold]{phase}[/bold] …")
            else:
                console.print(f"… {phase}")
        else:
            mark = {"ok": "[green]✓[/green]", "failed": "[red]✗[/red]"}.get(state, "·")
            console.print(f"{mark} {phase}")

    ctx = options.context(args, progress=progress)
    name = f"{args.run_id}.yaml"
    rel = request_rel(args.run_id)
    if ctx.registry.result(args.run_id) is not None:
        raise BadInput(f"{rel}: already has a result; file a new request to run again")
    if not (ctx.registry.root / rel).is_file():
        raise BadInput(f"{rel}: no such request in {ctx.registry.root}")
    migrate_legacy_index(ctx)  # a single-host registry: this host's snapshot entries under its name
    try:
        request, decision = runs.admit(ctx, name)
    except runs.NotPlacedHere as exc:
        raise BadInput(f"{rel}: not a run for {ctx.host} now: {exc.message}") from None
    run = runs.claim(ctx, request, decision)
    if run is None:
        raise BadInput(f"{rel}: another controller claimed it first")
    if spinner:
        spinner.start()
    try:
        runs.run_claimed(ctx, run)
        # As serve does: a verdict that moved the canonical queued a rewarm; do it now.
        if not args.no_rewarm and request.recipe in rewarm.queued_rewarms(ctx):
            runs.perform_queued_rewarm(ctx, request.recipe)
    finally:
        if spinner:
            spinner.stop()
    if ctx.settings.forge.enabled:  # what serve would deliver, now; what fails stays queued
        try:
            Deliverer(ctx).deliver_now()
        except CcciError as exc:
            console.print(f"the forge did not take the report yet (it stays queued): {exc.message}")
    result = run.result
    colour = "green" if result.outcome == "pass" else "red"
    console.print(f"[{colour}]{result.outcome}[/{colour}] {request.recipe}@{request.ref[:7]} "
                  f"({result.mode}) run {result.run}")
    if result.outcome == "pass":
        console.print(f"{result.mode} proves: {modes.mode(result.mode).proves}")
    if result.error:
        console.print(result.error)
    print(result.outcome, file=sys.stdout)
    return 0 if result.outcome == "pass" else 1


main = entry("run")
