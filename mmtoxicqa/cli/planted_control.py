"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.sgm.planted`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.sgm.planted import TRIGGER, control_table, planted_control


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "planted-control",
        help=help_for("planted-control"),
        description="Build a tiny random Llama whose toxicity sits in three planted MLP neurons (they fire on the harmless "
        "word 'neighbor' and only the insult rows of its LM head read them), fit SGM glasses on labelled requests, "
        "and answer 16 held-out targeted and 16 untargeted requests as vanilla, with the glasses, and with their "
        "placebo (the same alphas on the permuted-label ranking), judged by the offline profanity judge. SGM "
        "removes the toxicity and the placebo does not: what the method does when its premise holds. Seconds on a CPU.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tiny model and its requests")
    parser.add_argument("--judge", default="profanity", help="judge spec (offline default: profanity)")
    parser.set_defaults(func=_cli)


def _cli(args) -> int:
    rows = planted_control(args.seed, args.judge)
    print(f"planted control (seed {args.seed}, judge {args.judge}): 16 held-out requests ending in '{TRIGGER}' (targeted), 16 without")
    print(control_table(rows))
    return 0
