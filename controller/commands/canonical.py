"""`ccci canonical rewarm RECIPE`: rebuild the data-warm canonical app and its snapshot."""

from __future__ import annotations

import argparse

from controller.commands import entry, options
from controller.flows import runs
from controller.flows.fleet.migrate import migrate_legacy_index
from controller.util.names import check_recipe_name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("canonical", help="canonical apps")
    parser.add_argument("action", choices=("rewarm",))
    parser.add_argument("recipe")
    options.registry_arg(parser, required=False)
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    recipe = check_recipe_name(args.recipe, "RECIPE")
    ctx = options.context(args)
    migrate_legacy_index(ctx)  # this host's single-host entries first: the rewarm replaces its own
    result = runs.rewarm(ctx, recipe)
    print(f"rewarm of {recipe}: {result.outcome}" + (f": {result.error}" if result.error else ""))
    return 0 if result.outcome == "pass" else 1


main = entry("canonical")
