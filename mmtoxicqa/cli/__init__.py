"""The ``mmtoxicqa`` command line: the top layer, and the only place argparse lives.

Each module of this folder adds one job's subcommands with ``add_cli(subparsers)`` and calls into the
library; this file collects them and turns MMToxError (and an OS fault such as a full disk) into one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mmtoxicqa import __version__
from mmtoxicqa.cli.commands import COMMANDS
from mmtoxicqa.core import paths
from mmtoxicqa.core.errors import MMToxError, is_os_fault, os_fault

TASKS_PATH_HELP = "print the folder of the bundled lmms-eval task YAMLs (for --include_path)"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s real subparser; every other command is listed by name and help only
    (from :data:`~mmtoxicqa.cli.commands.COMMANDS`), so that neither ``mmtoxicqa --help`` nor one command
    imports the libraries of all the others. ``command="*"`` builds every real subparser (tests, docs)."""

    parser = argparse.ArgumentParser(
        prog="mmtoxicqa",
        description="MM-TOXIC-QA: measure and reduce toxic output of multimodal LLMs (lmms-eval plugin). "
        "`mmtoxicqa COMMAND --help` explains a command.",
    )
    parser.add_argument("--version", action="version", version=f"mmtoxicqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tasks_p = sub.add_parser("tasks-path", help=TASKS_PATH_HELP)
    tasks_p.set_defaults(func=_print_tasks_path)
    wanted = set(COMMANDS) if command == "*" else {command} & set(COMMANDS)
    for module in dict.fromkeys(COMMANDS[name][0] for name in wanted):  # a module may add several commands
        importlib.import_module(f"mmtoxicqa.cli.{module}").add_cli(sub)
    for name, (_module, help_text) in COMMANDS.items():
        if name not in sub.choices:  # listed for --help; never run (its real parser is built when it is named)
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line: the first argument that is not an option."""

    return next((a for a in argv if not a.startswith("-")), None)


def _print_tasks_path(_args) -> int:

    print(paths.tasks_dir())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MMToxError as exc:
        print(f"mmtoxicqa: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, ...: one line naming the file, not a traceback
        if not is_os_fault(exc):
            raise
        print(f"mmtoxicqa: error: {os_fault(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmtoxicqa: interrupted (finished work was saved; rerun the same command to resume)", file=sys.stderr)
        return 130
