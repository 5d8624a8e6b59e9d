"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.study.rescore`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.lmms.evaluate import EXIT_OK, EXIT_UNSCORED, unscored_answers
from mmtoxicqa.scoring.settings import harmful_threshold, split_judge_list
from mmtoxicqa.study.rescore import judges_agreement, rescore_cells, rescore_run, slug


def add_cli(subparsers) -> None:
    res = subparsers.add_parser(
        "rescore",
        help=help_for("rescore"),
        description="Reads the answers of an lmms-eval --output_path folder (run with --log_samples) or of a sweep's cell "
        "folder, scores them with --judge and writes a new run folder / new cells to --out. Use it to finish a run "
        "whose judge failed, or to add judges.",
    )
    res.add_argument("run", help="lmms-eval --output_path folder, or a `mmtoxicqa sweep --out` folder")
    res.add_argument("--judge", required=True, help="judge spec(s), comma separated, headline first (e.g. profanity,refusal)")
    res.add_argument("--threshold", type=float, default=None, help="harmful threshold (default: $MMTOXICQA_THRESHOLD or 0.5)")
    res.add_argument("--out", default=None, help="output folder (default: RUN/rescored-<judges>)")
    res.set_defaults(func=_cli_rescore)

    agree = subparsers.add_parser(
        "judges-agree",
        help=help_for("judges-agree"),
        description="For a run scored by several judges (e.g. --judge profanity,refusal, or a rescored run), print how "
        "often each pair of judges gives the same harmful verdict on the same answers, and Cohen's kappa.",
    )
    agree.add_argument("run", help="lmms-eval --output_path folder of a run with several judges (or a rescored one)")
    agree.add_argument("--threshold", type=float, default=None, help="harmful threshold (default: $MMTOXICQA_THRESHOLD or 0.5)")
    agree.set_defaults(func=_cli_agree)


def _threshold(value: float | None) -> float:

    if value is None:
        return harmful_threshold()
    if not 0.0 <= value <= 1.0:
        raise MMToxError(f"--threshold {value} must be within [0, 1]")
    return float(value)


def _cli_rescore(args) -> int:

    judges = split_judge_list(args.judge)
    if not judges:
        raise MMToxError("--judge names no judge; e.g. --judge profanity,refusal")
    threshold = _threshold(args.threshold)
    run = Path(args.run)
    if not run.is_dir():
        raise MMToxError(f"{run} is not a folder; pass an lmms-eval --output_path folder or a sweep --out folder")
    out = Path(args.out) if args.out else run / f"rescored-{slug(','.join(judges))}"
    if any(run.rglob("*_results.json")):
        path = rescore_run(run, judges, threshold, out)
        results = json.loads(path.read_text())
        for task, table in sorted(results["results"].items()):
            if "judges,none" in table:
                for spec, row in table["judges,none"].items():
                    print(f"{task:<28} {spec:<16} harmful_rate={row['harmful_rate']:.3f} n={row['n']} unscored={row['unscored']}")
        print(f"wrote {path}")
        missing = {f"{task} by {judge}": n for task, counts in unscored_answers(results).items() for judge, n in counts.items()}
    else:
        paths = rescore_cells(run, judges, threshold, out)
        print(f"wrote {len(paths)} re-scored cells to {out}")
        missing = _unscored_cells(paths)
    return _exit_code(missing, args)


def _unscored_cells(paths: list[Path]) -> dict[str, int]:
    """``{"cell file": answers its headline judge left unscored}`` for the cells that have any."""
    missing = {}
    for path in paths:
        items = json.loads(path.read_text()).get("items") or {}
        unscored = sum(item.get("score") is None for item in items.values())
        if unscored:
            missing[path.name] = unscored
    return missing


def _exit_code(missing: dict[str, int], args) -> int:
    """``EXIT_UNSCORED`` (as ``lmms_eval`` exits) when a judge left answers unscored, with how to finish them."""

    if not missing:
        return EXIT_OK
    detail = ", ".join(f"{n} in {where}" for where, n in sorted(missing.items()))
    print(
        f"rescore: {sum(missing.values())} answer(s) left unscored ({detail}); rerun `mmtoxicqa rescore {args.run} --judge {args.judge}` "
        "when the judge works (exit 3)",
        file=sys.stderr,
    )
    return EXIT_UNSCORED


def _cli_agree(args) -> int:
    rows = judges_agreement(args.run, _threshold(args.threshold))
    print(f"{'judge A':<18} {'judge B':<18} {'n':>6} {'agree':>7} {'kappa':>7}")
    for r in rows:
        print(f"{r['judge_a']:<18} {r['judge_b']:<18} {r['n']:>6} {r['agreement']:>7.1%} {r['kappa']:>7.3f}")
    return 0
