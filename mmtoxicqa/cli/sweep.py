"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.study.sweep`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.study.sweep import ANSWER_TOKENS, run_sweep
from mmtoxicqa.study.wandb_log import cells_table, log_run


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help=help_for("sweep"),
        description="""Run every model x method x task combination through lmms-eval and write one JSON file (a cell) per
combination: metrics, each item's answer, judge score and harmful flag, timings, and the exact inputs. A cell
is written atomically when it finishes, and rerunning the same command skips every finished cell whose recorded
inputs match, so an interrupted sweep resumes where it stopped. Read the cells with `mmtoxicqa leaderboard` (or
`organism-report` for a model organism).

example:
  mmtoxicqa sweep --models embedded --methods vanilla,sgm,sgm+coca --tasks mm_toxic_qa_adversarial \\
      --limit 16 --out out/sweep
  mmtoxicqa sweep --models embedded --methods sgm --tag strength_0.5 --model-args sgm_strength=0.5 --out out/sweep""",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", default="embedded", help="comma-separated hub ids / local dirs ('embedded' = the embedded model)")
    parser.add_argument("--methods", default="vanilla", help="comma-separated method specs, e.g. vanilla,sgm,sgm+coca")
    parser.add_argument(
        "--tasks",
        default="mm_toxic_qa_standard,mm_toxic_qa_adversarial,mm_toxic_qa_benign",
        help="comma-separated lmms-eval task names (ours or lmms-eval's own, e.g. mme,pope)",
    )
    parser.add_argument("--out", required=True, help="folder for the per-cell JSON files")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--model-args", default="", help="extra wrapper options, e.g. sgm_strength=0.5,glasses=g.safetensors")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"answer length of the MM-TOXIC-QA tasks (default: theirs, {ANSWER_TOKENS}); other tasks keep their own; recorded in each cell",
    )
    parser.add_argument(
        "--tag",
        default="",
        help="variant name stored in each cell and shown as 'METHOD [TAG]' in the leaderboard; "
        "use it when rerunning a method with other --model-args into the same --out",
    )
    parser.add_argument("--wandb", metavar="PROJECT", default=None, help="also log the cells as a table to this wandb project")
    parser.set_defaults(func=_cli)


def _cli(args) -> int:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    paths = run_sweep(
        split(args.models),
        split(args.methods),
        split(args.tasks),
        args.out,
        args.limit,
        args.batch_size,
        args.model_args,
        args.device,
        args.tag,
        args.max_new_tokens,
    )
    print(f"sweep: {len(paths)} cells in {args.out}")
    if args.wandb:
        print(f"wandb: {log_run(args.wandb, 'sweep', {'cells': cells_table([json.loads(Path(p).read_text()) for p in paths])})}")
    return 0
