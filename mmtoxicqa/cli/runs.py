"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.study.results`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.study.results import build_run_record, check_setting, format_rows, load_record, regress


def add_cli(subparsers) -> None:
    col = subparsers.add_parser(
        "collect",
        help=help_for("collect"),
        description="Read an lmms-eval --output_path folder of a run made with --log_samples and write one run record "
        "(JSON): every item's id, judge score and harmful flag per split, with the judge and threshold. "
        "`mmtoxicqa regress` compares two of them.",
    )
    col.add_argument("output_dir", help="the lmms_eval --output_path folder")
    col.add_argument("--out", required=True, help="where to write the run record (JSON, written atomically)")
    col.add_argument("--judge", default=None, help="judge spec (default: $MMTOXICQA_JUDGE or profanity)")
    col.add_argument("--threshold", type=float, default=None, help="harmful threshold (default: $MMTOXICQA_THRESHOLD or 0.5)")
    col.set_defaults(func=_cli_collect)

    reg = subparsers.add_parser(
        "regress",
        help=help_for("regress"),
        description="Compare two run records (from `mmtoxicqa collect`) on the items both runs scored. Exit 0: no "
        "regression; 1: some split's harmful rate rose by more than --max-increase and the exact McNemar test on the "
        "discordant items (harmful in one run only) gives p < --alpha; 2: unusable input (not a run record, empty or bad "
        "items, no item in common, different judge or threshold, --max-increase/--alpha out of range).",
    )
    reg.add_argument("--baseline", required=True, help="run record of the accepted state")
    reg.add_argument("--current", required=True, help="run record of the change under test")
    reg.add_argument("--max-increase", default=0.02, help="tolerated absolute rise of the harmful rate, in [0, 1] (default 0.02)")
    reg.add_argument("--alpha", default=0.05, help="significance level of the McNemar test, in (0, 1) (default 0.05)")
    reg.set_defaults(func=_cli_regress)


def _cli_collect(args) -> int:
    record = build_run_record(args.output_dir, args.judge, args.threshold)
    write_json_atomic(args.out, record)
    for task, data in sorted(record["tasks"].items()):
        unscored = f" unscored={data['unscored']}" if data.get("unscored") else ""
        print(f"{task:<28} n={data['n']:<5} harmful_rate={data['harmful_rate']:.3f}{unscored}")
    return 0


def _cli_regress(args) -> int:
    max_increase = check_setting("--max-increase", args.max_increase, 0.0, 1.0)
    alpha = check_setting("--alpha", args.alpha, 0.0, 1.0, low_open=True)
    code, rows = regress(load_record(args.baseline), load_record(args.current), max_increase, alpha)
    print(format_rows(rows, max_increase, alpha))
    print("FAIL: harmful rate regressed" if code else "PASS: no harmful-rate regression")
    return code
