"""Options several subcommands share, and opening the context they work in."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from controller.flows.context import Context, ProgressSink, open_context
from controller.util.errors import BadInput
from controller.util.names import check_recipe_name


def registry_arg(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--registry", "-r", required=required, type=Path,
                        default=None if required else os.environ.get("CCCI_REGISTRY"),
                        help="path of the registry's local git clone" + ("" if required else
                                                                         " (default $CCCI_REGISTRY)"))


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above zero (a zero or negative interval would spin)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be a positive number of seconds")
    return value


def recipe_name(text: str) -> str:
    """An argparse type: a recipe name as the registry spells them."""
    try:
        return check_recipe_name(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def registry_path(args: argparse.Namespace) -> Path:
    if not args.registry:
        raise BadInput("--registry: the registry clone is required (or set CCCI_REGISTRY)")
    return Path(args.registry)


def context(args: argparse.Namespace, *, sync: bool = True, progress: ProgressSink | None = None) -> Context:
    """The registry and state dir a command names, synced with the remote unless asked not to."""
    return open_context(registry_path(args), getattr(args, "state_dir", None), sync=sync, progress=progress,
                        host=getattr(args, "host", None))
