"""The ``mmtoxicqa`` command line: one subcommand per job, each defined next to the code it runs.

Each feature module exposes ``add_cli(subparsers)`` which adds its subcommand and sets
``func`` on the parser; this file only collects them and turns MMToxError (and an OS fault such as a full disk) into one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mmtoxicqa import __version__
from mmtoxicqa.core import paths
from mmtoxicqa.core.errors import MMToxError, is_os_fault, os_fault

# Modules that contribute subcommands (each has add_cli(subparsers)).
_SUBCOMMAND_MODULES = (
    "mmtoxicqa.cli.build_model",
    "mmtoxicqa.modeling.reader",
    "mmtoxicqa.data.sources",
    "mmtoxicqa.data.builder",
    "mmtoxicqa.data.hub",
    "mmtoxicqa.sgm.calibration",
    "mmtoxicqa.study.results",
    "mmtoxicqa.study.rescore",
    "mmtoxicqa.study.sweep",
    "mmtoxicqa.study.leaderboard",
    "mmtoxicqa.methods.export",
    "mmtoxicqa.study.organism_report",
    "mmtoxicqa.sgm.planted",
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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a feature not built yet must not break the others
            if exc.name and name.startswith(exc.name):
                continue
            raise
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
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


if __name__ == "__main__":
    sys.exit(main())
