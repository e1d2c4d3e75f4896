"""`ccci snapshot take|restore|verify APP`: the last-known-good of a warm app, by hand."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from controller.commands import entry
from controller.flows import warm_apps
from controller.util.names import check_app_name, snapshot_index_rel
from controller.util.paths import StateDir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("snapshot", help="take, restore or verify a warm app's snapshot")
    parser.add_argument("action", choices=("take", "restore", "verify"))
    parser.add_argument("app")
    parser.add_argument("--registry", "-r", default=os.environ.get("CCCI_REGISTRY"),
                        help="take: also commit snapshots-index/<host>/<app>.yaml to this registry clone")
    parser.add_argument("--commit", help="take: the recipe commit whose data the volumes hold")
    parser.add_argument("--paranoid", action="store_true",
                        help="hash every file, even those the live index vouches for as unchanged "
                             "since the last take or restore (see docs/snapshots.md)")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    app = check_app_name(args.app, "APP")
    state = StateDir.from_env(args.state_dir).ensure()
    if args.action == "verify":
        found = warm_apps.verify_by_hand(state, app, paranoid=args.paranoid)
        info = found.info
        print(f"{app}: last-known-good verified ({info.commit[:12]}, manifest {info.manifest_sha256[:16]})")
        if found.differences is not None:
            print(f"{app}: live volumes {'equal the snapshot' if not found.differences else 'differ'}")
            for line in found.differences[:20]:
                print(f"  {line}")
        return 0
    if args.action == "restore":
        report = warm_apps.restore_by_hand(state, app, paranoid=args.paranoid)
        print(f"{app}: restored ({report.rewritten} rewritten, {report.created} created, "
              f"{report.removed} removed, {report.metadata_fixed} metadata fixed"
              + (f"; volumes removed: {', '.join(report.removed_volumes)}" if report.removed_volumes else "")
              + f"); verified={report.verified}")
        return 0 if report.verified else 1
    info, committed = warm_apps.take_by_hand(
        state, app, commit=args.commit, registry_path=Path(args.registry) if args.registry else None,
        host=args.host, paranoid=args.paranoid)
    print(f"{app}: snapshot taken ({sum(v['files'] for v in info.volumes.values())} files, "
          f"manifest {info.manifest_sha256[:16]}) at {info.path}")
    if committed:
        print(f"committed {snapshot_index_rel(args.host, app)}")
    return 0


main = entry("snapshot")
