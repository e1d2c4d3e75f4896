"""The subcommands, one module each, and the one error boundary they all run inside.

Each module has `register(subparsers)` and `main(argv=None) -> int` (so tests call a command
in-process as well as through a real subprocess); none imports `controller.cli`, which only
hands argv to `run_cli` here.
"""

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
from collections.abc import Callable, Sequence
from pathlib import Path

from controller import __version__
from controller.util.errors import CcciError
from controller.util.log import setup_logging
from controller.util.names import host_name
from controller.util.paths import StateDir
from controller.util.systemd import stderr_is_journal

log = logging.getLogger(__name__)

COMMANDS = (
    "init", "request", "trigger", "serve", "run", "status", "sweep", "snapshot", "canonical", "warm",
    "leaks", "audit", "prune", "forge",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One clear sentence and exit 2, as for any bad input.
        self.exit(2, f"ccci: {message} (see `{self.prog} --help`)\n")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ccci", description="CI for Docker Swarm recipes, driven by a git registry.")
    parser.add_argument("--version", action="version", version=f"ccci {__version__}")
    parser.add_argument("--state-dir", help="controller state (default $CCCI_STATE_DIR or /var/lib/ccci)")
    parser.add_argument("--log-level", type=_log_level, default=os.environ.get("CCCI_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO (default, or $CCCI_LOG_LEVEL), WARNING, ERROR")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines (daemon)")
    parser.add_argument("--host", default=None,
                        help="this CI host's name in the fleet (default $CCCI_HOST, else the hostname)")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"controller.commands.{name}").register(subparsers)
    # The global options work after the subcommand too (`ccci status --state-dir …`).
    for sub in subparsers.choices.values():
        sub.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--log-level", type=_log_level, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--host", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _log_file(state_dir: str | None) -> Path:
    state = StateDir.from_env(state_dir)
    try:
        state.logs.mkdir(parents=True, exist_ok=True)
        with state.log_file.open("a"):
            pass
        return state.log_file
    except OSError:
        return Path(tempfile.gettempdir()) / "ccci.log"


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging once, run one command; map errors to exit codes (0 ok, 1 failed,
    2 bad input, 3 unexpected — with the log path, never a traceback as user interface)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    # Under systemd the journal is the log: every line once, with its priority, and no copy in
    # the state dir's file (which the commands an operator runs by hand keep writing).
    journal = stderr_is_journal()
    log_file = None if journal else _log_file(args.state_dir)
    setup_logging(level=args.log_level, json_lines=args.log_json, log_file=log_file, journal=journal)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so a foreground run's `finally` tears its app down.
        signal.signal(signal.SIGTERM, _terminate)
    # The one sentence a failed command ends with is an error to the journal too.
    error_prefix = "<3>" if journal else ""
    try:
        args.host = host_name(args.host)  # one sentence and exit 2 for a bad name, before any work
        return int(args.handler(args))
    except CcciError as exc:
        print(f"{error_prefix}ccci: {exc.message}", file=sys.stderr)
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
        print(f"{error_prefix}ccci: unexpected error; details in {log_file or 'the journal'}", file=sys.stderr)
        return 3


def entry(name: str) -> Callable[[Sequence[str] | None], int]:
    """`main(argv=None) -> int` for one subcommand, through the same error boundary."""

    def main(argv: Sequence[str] | None = None) -> int:
        return run_cli([name, *(argv if argv is not None else sys.argv[1:])])

    return main
