"""`ccci init PATH`: create a registry (ccci.yaml, canonicals/, snapshots-index/, requests/, results/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.commands import entry
from controller.flows.init import EXAMPLE_BASE_DOMAIN, create_registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("init", help="create a registry")
    parser.add_argument("path", type=Path)
    parser.add_argument("--base-domain", help=f"the registry's base domain (default {EXAMPLE_BASE_DOMAIN})")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    create_registry(args.path, base_domain=args.base_domain)
    print(f"created registry at {args.path}")
    return 0


main = entry("init")
