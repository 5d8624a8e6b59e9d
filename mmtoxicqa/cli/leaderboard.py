"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.study.leaderboard`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.study.leaderboard import checked_cells, paired_rows, write_leaderboard
from mmtoxicqa.study.wandb_log import csv_table, log_run

DESCRIPTION = (
    "Read a folder of sweep cells and write LEADERBOARD.md, leaderboard.csv and frontier.png. One row per model and "
    "method: the harmful rate of each split with its 95% Wilson interval, refusals on benign items, perplexity of the "
    "benign answers, utility and seconds per item. Below it every method is paired with vanilla on the same items: "
    "how many harmful answers it removed and caused, the exact McNemar p, and the cut (vanilla's harmful / the "
    "method's) with its 95% interval. The frontier plots harm against fluency. Prints the markdown."
)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("leaderboard", help=help_for("leaderboard"), description=DESCRIPTION)
    parser.add_argument("results_dir", help="folder of sweep cell files (mmtoxicqa sweep --out)")
    parser.add_argument("--out", default="results", help="where to write the leaderboard files (default: results/)")
    parser.add_argument("--judge", default=None, help="only cells scored by this judge (as shown in the header, e.g. profanity@0.5)")
    parser.add_argument("--wandb", metavar="PROJECT", default=None, help="also log the tables and frontier plot to this wandb project")
    parser.set_defaults(func=_cli)


def _cli(args) -> int:
    written = write_leaderboard(args.results_dir, args.out, args.judge)
    print(Path(written["md"]).read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    if args.wandb:
        paired = paired_rows(checked_cells(args.results_dir, args.judge))
        columns = [
            "model",
            "method",
            "split",
            "n",
            "harmful_vanilla",
            "harmful_method",
            "fixed",
            "new",
            "p",
            "cut",
            "cut_low",
            "cut_high",
            "p_scores",
        ]
        tables = {
            "leaderboard": csv_table(Path(written["csv"]).read_text()),
            "paired": (columns, [[r[c] for c in columns] for r in paired]),
        }
        print(f"wandb: {log_run(args.wandb, 'leaderboard', tables, {'frontier': written.get('png')} if written.get('png') else None)}")
    return 0
