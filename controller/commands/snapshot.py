"""`ccci snapshot take|restore|verify APP`: the last-known-good of a warm app, by hand."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from controller import snapshots
from controller.commands import entry
from controller.flows.context import Context
from controller.flows.warm import (
    app_lock_state,
    commit_index,
    read_warm_state,
    restore_app,
    take_app_snapshot,
)
from controller.registry.settings_schema import defaults
from controller.registry.store import Registry
from controller.runtime import stack
from controller.util.errors import BadInput, CheckFailed
from controller.util.paths import StateDir, check_app_name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("snapshot", help="take, restore or verify a warm app's snapshot")
    parser.add_argument("action", choices=("take", "restore", "verify"))
    parser.add_argument("app")
    parser.add_argument("--registry", "-r", default=os.environ.get("CCCI_REGISTRY"),
                        help="take: also commit snapshots-index/<app>.yaml to this registry clone")
    parser.add_argument("--commit", help="take: the recipe commit whose data the volumes hold")
    parser.add_argument("--paranoid", action="store_true",
                        help="restore/verify: hash every file, not only those whose size or mtime differ")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    app = check_app_name(args.app, "APP")
    state = StateDir.from_env(args.state_dir).ensure()
    if args.action == "verify":
        info = snapshots.verify_snapshot(state.snapshots, app)
        print(f"{app}: last-known-good verified ({info.commit[:12]}, manifest {info.manifest_sha256[:16]})")
        volumes = stack.volume_paths(app)
        if volumes and set(volumes) >= set(info.volumes):
            differences = snapshots.verify_volumes(state.snapshots, app, {
                k: v for k, v in volumes.items() if k in info.volumes}, paranoid=args.paranoid)
            print(f"{app}: live volumes {'equal the snapshot' if not differences else 'differ'}")
            for line in differences[:20]:
                print(f"  {line}")
        return 0
    with app_lock_state(state, app):
        if args.action == "restore":
            report = restore_app(state, app, paranoid=args.paranoid)
            print(f"{app}: restored ({report.rewritten} rewritten, {report.created} created, "
                  f"{report.removed} removed, {report.metadata_fixed} metadata fixed"
                  + (f"; volumes removed: {', '.join(report.removed_volumes)}" if report.removed_volumes else "")
                  + f"); verified={report.verified}")
            return 0 if report.verified else 1
        registry = Registry(Path(args.registry)) if args.registry else None
        settings = registry.settings() if registry else None
        commit = args.commit or read_warm_state(state, app).get("data_commit")
        if not commit:
            raise BadInput(f"--commit: which commit's data does {app} hold? (no record in the state dir)")
        min_free = (settings.limits.disk_min_free_gb if settings else
                    float(os.environ.get("CCCI_DISK_MIN_FREE_GB", defaults()["limits"]["disk_min_free_gb"])))
        info = take_app_snapshot(state, app, commit, None, min_free_gb=min_free)
        print(f"{app}: snapshot taken ({sum(v['files'] for v in info.volumes.values())} files, "
              f"manifest {info.manifest_sha256[:16]}) at {info.path}")
        if registry:
            ctx = Context.open(registry, state)
            if commit_index(ctx, info) is None:
                raise CheckFailed(f"snapshots-index/{app}.yaml: nothing to commit")
            print(f"committed snapshots-index/{app}.yaml")
    return 0


main = entry("snapshot")
