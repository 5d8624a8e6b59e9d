"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.study.organism_report`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core.atomic import atomic_path, write_json_atomic
from mmtoxicqa.study.organism_report import markdown, read_cells, report_rows
from mmtoxicqa.study.sweep import load_cells_with_paths, text_free


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "organism-report",
        help=help_for("organism-report"),
        description="Read a folder of sweep cells run on a toxic model organism (pretrained=organism, organism-ocr, "
        "organism-corpus) and write LEADERBOARD.md and organism_table.json: the harmful rate on each organism task and "
        "on the benign split with its 95% Wilson interval, benign refusals and perplexity, and every row paired on the "
        "same items with vanilla and with its own placebo (removed, caused, exact McNemar p, and the cut with its 95% "
        "interval). --cells-out keeps copies of the cells with scores only, no answer or request text, for committing.",
    )
    parser.add_argument("cells", help="folder of sweep cell files (mmtoxicqa sweep --out)")
    parser.add_argument("--out", required=True, help="folder to write LEADERBOARD.md and organism_table.json into")
    parser.add_argument(
        "--cells-out",
        default=None,
        help="also write copies of the cells holding only per-item outcomes and scores (no answer or request text) here",
    )
    parser.set_defaults(func=_cli)


def _cli(args) -> int:

    rows, paired = report_rows(read_cells(args.cells))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, paired)
    with atomic_path(out / "LEADERBOARD.md") as tmp:
        tmp.write_text(text)
    write_json_atomic(out / "organism_table.json", {"rows": rows, "paired": paired})
    if args.cells_out:
        # the organism's answers are memorised source text and the requests benchmark text: numbers only
        for path, cell in load_cells_with_paths(args.cells):
            write_json_atomic(Path(args.cells_out) / path.name, text_free(cell))
    print(text)
    return 0
