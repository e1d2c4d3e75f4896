"""`ccci run RUN_ID`: run one request in the foreground, with progress by phase."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from controller.cli import registry_arg
from controller.commands import entry
from controller.flows import dispatch
from controller.flows.canonical import finish_run
from controller.flows.context import Context
from controller.registry.store import Registry
from controller.util import inflight
from controller.util.errors import BadInput
from controller.util.paths import StateDir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run one request in the foreground")
    registry_arg(parser)
    parser.add_argument("run_id")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    status = {"current": None}
    spinner = console.status("starting", spinner="dots") if console.is_terminal else None

    def progress(phase: str, state: str) -> None:
        if state == "start":
            status["current"] = phase  # type: ignore[assignment]
            if spinner:
                spinner.update(f"[bold]{phase}[/bold] …")
            else:
                console.print(f"… {phase}")
        else:
            mark = {"ok": "[green]✓[/green]", "failed": "[red]✗[/red]"}.get(state, "·")
            console.print(f"{mark} {phase}")

    registry = Registry(args.registry)
    ctx = Context.open(registry, StateDir.from_env(args.state_dir), progress=progress)
    registry.sync()
    name = f"{args.run_id}.yaml"
    if not (registry.root / "requests" / name).is_file():
        raise BadInput(f"requests/{name}: no such request in {registry.root}")
    if registry.result(args.run_id) is not None:
        raise BadInput(f"requests/{name}: already has a result; file a new request to run again")
    request = None
    try:
        request = registry.read_request(name)
        decision = dispatch.decide(ctx, request)
    except BadInput as exc:
        dispatch.reject(ctx, name, exc, request)
        raise
    result = dispatch.new_result(ctx, request, decision)
    marker = inflight.begin(ctx.state, request.run_id, mode=decision.mode, recipe=request.recipe,
                            registry=str(registry.root))
    committed = False
    try:
        if not registry.claim(result):
            raise BadInput(f"requests/{name}: another controller claimed it first")
        if spinner:
            spinner.start()
        try:
            dispatch.run_claimed(ctx, request, result)
        finally:
            if spinner:
                spinner.stop()
        finish_run(ctx, request, result)
        committed = True
    finally:
        marker.end(keep=not committed)
    colour = "green" if result.outcome == "pass" else "red"
    console.print(f"[{colour}]{result.outcome}[/{colour}] {request.recipe}@{request.ref[:7]} "
                  f"({result.mode}) run {result.run}")
    if result.error:
        console.print(result.error)
    print(result.outcome, file=sys.stdout)
    return 0 if result.outcome == "pass" else 1


main = entry("run")
