"""`ccci canonical rewarm RECIPE`: rebuild the data-warm canonical app and its snapshot."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from controller.cli import registry_arg
from controller.commands import entry
from controller.flows.context import Context
from controller.flows.rewarm import rewarm
from controller.registry.store import Registry
from controller.util.errors import BadInput
from controller.util.names import check_recipe_name
from controller.util.paths import StateDir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("canonical", help="canonical apps")
    parser.add_argument("action", choices=("rewarm",))
    parser.add_argument("recipe")
    registry_arg(parser, required=False)
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    recipe = check_recipe_name(args.recipe, "RECIPE")
    registry_path = args.registry or os.environ.get("CCCI_REGISTRY")
    if not registry_path:
        raise BadInput("--registry: the registry clone is required (or set CCCI_REGISTRY)")
    registry = Registry(Path(registry_path))
    ctx = Context.open(registry, StateDir.from_env(args.state_dir))
    registry.sync()
    result = rewarm(ctx, recipe)
    print(f"rewarm of {recipe}: {result.outcome}" + (f": {result.error}" if result.error else ""))
    return 0 if result.outcome == "pass" else 1


main = entry("canonical")
