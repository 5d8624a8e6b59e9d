"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.sgm.planted`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.sgm.planted import TRIGGER, control_table, planted_control


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "planted-control",
        help=help_for("planted-control"),
        description=__doc__,
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tiny model and its requests")
    parser.add_argument("--judge", default="profanity", help="judge spec (offline default: profanity)")
    parser.set_defaults(func=_cli)


def _cli(args) -> int:
    rows = planted_control(args.seed, args.judge)
    print(f"planted control (seed {args.seed}, judge {args.judge}): 16 held-out requests ending in '{TRIGGER}' (targeted), 16 without")
    print(control_table(rows))
    return 0
