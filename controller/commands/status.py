"""`ccci status`: recipes, known-good, snapshots, last results, alerts (table or JSON)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from controller.commands import entry, options
from controller.commands.options import recipe_name, registry_arg
from controller.flows.status import collect_status

COLUMNS_NOT_A_TERMINAL = 200


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="show recipes, known-good and last results")
    registry_arg(parser)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--recipe", type=recipe_name, default=None,
                        help="also show this recipe's recent runs")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    status = collect_status(options.registry_path(args), args.state_dir, recipe=args.recipe)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    console = Console()
    if not console.is_terminal:  # piped or captured: whole rows, not rows cut to 80 columns
        console = Console(width=COLUMNS_NOT_A_TERMINAL)
    table = Table(title=f"ccci registry {status['registry']}")
    for column in ("recipe", "known-good", "snapshot", "last cold", "last quick", "last upgrade", "last run"):
        commit = column in ("known-good", "snapshot")  # a commit is searched for whole
        table.add_column(column, no_wrap=commit, min_width=12 if commit else None)

    def brief(run: dict[str, str] | None) -> str:
        return f"{run['outcome']} @{(run['ref'] or '?')[:7]}" if run else "-"

    for row in status["recipes"]:
        table.add_row(
            row["recipe"],
            (row["known_good"] or "-")[:12],
            (row["snapshot_commit"] or "-")[:12],
            brief(row["last_cold"]),
            brief(row["last_quick"]),
            brief(row["last_upgrade"]),
            f"{row['last_run'] or '-'} {row['last_outcome'] or ''}",
        )
    console.print(table)
    if status["history"] is not None:
        history = Table(title=f"recent runs of {args.recipe}")
        for column in ("run", "mode", "ref", "outcome", "requested by", "finished"):
            history.add_column(column)
        for run in status["history"]:
            history.add_row(str(run.get("run")), str(run.get("mode") or run.get("requested_mode") or "-"),
                            str(run.get("ref") or "-")[:7], str(run.get("outcome")),
                            str(run.get("requested_by") or "-"), str(run.get("finished_at") or "-"))
        console.print(history)
    for row in status["recipes"]:
        if row.get("source_problem"):
            console.print(f"[red]recipe {row['recipe']}[/red]: {row['source_problem']}")
    if status["running"]:
        console.print(f"running: {', '.join(status['running'])}")
    if status["hosts"]:
        fleet = Table(title="hosts")
        for column in ("host", "last seen", "in flight", "warm apps"):
            fleet.add_column(column)
        for host in status["hosts"]:
            fleet.add_row(host["host"], host["last_seen"] or "-", ", ".join(host["running"]) or "-",
                          ", ".join(host["warm"]) or "-")
        console.print(fleet)
    for alert in status["alerts"]:
        console.print(f"[red]ALERT[/red] {alert.get('key')}: {alert.get('message')}")
    for disk in status["disk"]:
        low = " [red](below limits.disk_min_free_gb)[/red]" if disk["low"] else ""
        console.print(f"disk: {disk['path']} {disk['free_gib']:.1f} GiB free{low}")
    forge = status.get("forge")
    if forge:
        console.print(f"forge: last report delivered {forge.get('last_success_at') or 'never'}, "
                      f"{forge['queued']} queued"
                      + (f"; last error {forge.get('last_error_at')}: {forge['last_error']}"
                         if forge.get("last_error") else ""))
    for daemon in status["daemons"]:
        console.print(f"serve pid {daemon.get('pid')}: last pass {daemon.get('last_pass_at')}, "
                      f"{daemon.get('claimed')} claimed, active {daemon.get('active')}")
        if daemon.get("claims_held"):
            console.print(f"  [red]claiming nothing new[/red]: {daemon['claims_held']}")
        pruned = daemon.get("last_prune")
        if isinstance(pruned, dict):
            console.print(f"  last prune {pruned.get('at')}: {pruned.get('removed')} removed, "
                          f"{pruned.get('failed')} failed")
    return 0


main = entry("status")
