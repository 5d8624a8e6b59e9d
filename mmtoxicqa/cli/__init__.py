"""The ``mmtoxicqa`` command line: the top layer, and the only place argparse lives.

Each module of this folder adds one job's subcommands with ``add_cli(subparsers)`` and calls into the
library; this file collects them and turns MMToxError (and an OS fault such as a full disk) into one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mmtoxicqa import __version__
from mmtoxicqa.core import paths
from mmtoxicqa.core.errors import MMToxError, is_os_fault, os_fault

# One module per job, each with add_cli(subparsers); the library modules they call hold no argparse.
_SUBCOMMAND_MODULES = (
    "mmtoxicqa.cli.build_model",
    "mmtoxicqa.cli.read_images",
    "mmtoxicqa.cli.sources",
    "mmtoxicqa.cli.build_data",
    "mmtoxicqa.cli.hub",
    "mmtoxicqa.cli.calibrate",
    "mmtoxicqa.cli.runs",
    "mmtoxicqa.cli.rescore",
    "mmtoxicqa.cli.sweep",
    "mmtoxicqa.cli.leaderboard",
    "mmtoxicqa.cli.export",
    "mmtoxicqa.cli.organism_report",
    "mmtoxicqa.cli.planted_control",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtoxicqa",
        description="MM-TOXIC-QA: measure and reduce toxic output of multimodal LLMs (lmms-eval plugin).",
    )
    parser.add_argument("--version", action="version", version=f"mmtoxicqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tasks_p = sub.add_parser("tasks-path", help="print the folder of the bundled lmms-eval task YAMLs (for --include_path)")
    tasks_p.set_defaults(func=_print_tasks_path)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def _print_tasks_path(_args) -> int:

    print(paths.tasks_dir())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
