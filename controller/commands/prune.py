"""`ccci prune`: free disk without touching warm data, live images or runs in flight."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from controller.cli import registry_arg
from controller.commands import entry
from controller.flows.prune import IMAGE_MODES, PrunePolicy, PruneReport, policy_from_settings, prune
from controller.registry.settings import load_settings
from controller.util.paths import StateDir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "prune", help="remove cold leftovers, dead runs' work dirs and images nothing needs")
    registry_arg(parser, required=False)
    parser.add_argument("--images", choices=IMAGE_MODES,
                        help="dangling (default), unused (also tagged images nothing live or warm "
                             "needs) or none; default: limits.prune_images of the registry")
    parser.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=execute)


def policy_for(args: argparse.Namespace) -> PrunePolicy:
    if args.registry is None:
        return replace(PrunePolicy(), images=args.images) if args.images else PrunePolicy()
    return policy_from_settings(load_settings(args.registry), images=args.images)


def print_report(report: PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    for item in report.removed:
        if item.error:
            print(f"could not remove {item.kind} {item.name}: {item.error}")
        else:
            print(f"{verb} {item.kind} {item.name}: {item.reason}")
    for item in report.kept:
        print(f"kept {item.kind} {item.name}: {item.reason}")
    for sentence in report.skipped:
        print(f"skipped {sentence}")
    for path, before in sorted(report.free_before.items()):
        after = report.free_after.get(path, before)
        print(f"free on {path}: {before / 1024**3:.2f} GiB -> {after / 1024**3:.2f} GiB")


def execute(args: argparse.Namespace) -> int:
    report = prune(StateDir.from_env(args.state_dir), policy_for(args), dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print_report(report)
    return 1 if report.failed else 0


main = entry("prune")
