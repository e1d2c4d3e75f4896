"""Command-line entry point: parse argv, call one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from controller import __version__
from controller.util.errors import CcciError
from controller.util.log import setup_logging
from controller.util.paths import StateDir

log = logging.getLogger(__name__)

# One module per subcommand under controller/commands/; each has `register(subparsers)`.
COMMANDS = (
    "init", "request", "trigger", "serve", "run", "status", "sweep", "snapshot", "canonical", "warm",
    "leaks", "audit", "prune",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One clear sentence and exit 2, as for any bad input.
        self.exit(2, f"ccci: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ccci", description="CI for Docker Swarm recipes, driven by a git registry.")
    parser.add_argument("--version", action="version", version=f"ccci {__version__}")
    parser.add_argument("--state-dir", help="controller state (default $CCCI_STATE_DIR or /var/lib/ccci)")
    parser.add_argument("--log-level", default=os.environ.get("CCCI_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-json", action="store_true", help="log JSON lines (daemon)")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"controller.commands.{name}")
        module.register(subparsers)
    # The global options work after the subcommand too (`ccci status --state-dir …`).
    for sub in subparsers.choices.values():
        sub.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _log_file(state_dir: str | None) -> Path:
    state = StateDir.from_env(state_dir)
    try:
        state.logs.mkdir(parents=True, exist_ok=True)
        probe = state.log_file
        with probe.open("a"):
            pass
        return probe
    except OSError:
        return Path(tempfile.gettempdir()) / "ccci.log"


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    log_file = _log_file(args.state_dir)
    setup_logging(level=args.log_level, json_lines=args.log_json, log_file=log_file)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so a foreground run's `finally` tears its app down.
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args))
    except CcciError as exc:
        print(f"ccci: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ccci: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `ccci status --json | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:
        log.error("unexpected error:\n%s", traceback.format_exc())
        print(f"ccci: unexpected error; details in {log_file}", file=sys.stderr)
        return 3


def registry_arg(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--registry", "-r", required=required, type=Path,
                        help="path of the registry's local git clone")
