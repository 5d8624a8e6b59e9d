"""The ``lmms_eval`` command this package installs: lmms-eval's own CLI, plus our tasks and real exit codes.

lmms-eval 0.7.3 indexes only its own task folder and ``--include_path``, and exits 0 even when
a task or model fails. This wrapper (1) adds the packaged task folder to every ``TaskManager``
index (an explicit ``--include_path`` is still searched, first), and (2) watches each evaluation
lmms-eval runs so the process exits with a code a script can test. The upstream ``lmms-eval``
script and ``python -m lmms_eval`` stay untouched.
"""

from __future__ import annotations

import os
import sys
import traceback

from mmtoxicqa import methods
from mmtoxicqa.core import paths

EXIT_OK = 0
EXIT_EVAL_FAILED = 1  # a task or the model raised: no results for at least one evaluation
EXIT_NO_TASKS = 2  # no --tasks, or a task name that no index (lmms-eval's, ours, --include_path) knows
EXIT_UNSCORED = 3  # answers generated and saved, but a judge left some unscored (`mmtoxicqa rescore` finishes them)

EXIT_CODES_HELP = f"""\
mmtoxicqa's lmms_eval wrapper (lmms-eval 0.7.3 underneath; `lmms-eval` is the unwrapped original):
  MM-TOXIC-QA tasks (mm_toxic_qa, mm_toxic_qa_standard, ..., mm_utility_mini) are indexed without --include_path;
  an explicit --include_path is searched too. Models: --model mmtox, sgm, aura, coca, ... (one per method).
exit codes:
  {EXIT_OK}  every evaluation finished and every answer was scored
  {EXIT_EVAL_FAILED}  an evaluation failed (a task or the model raised; the traceback is above)
  {EXIT_NO_TASKS}  no task to run: --tasks missing or naming an unknown task
  {EXIT_UNSCORED}  answers generated and saved (--log_samples), but a judge left some unscored:
     finish them with `mmtoxicqa rescore OUTPUT_DIR --judge J`
"""


def plugin_tasks_path() -> str:
    """The packaged lmms-eval task folder (what ``mmtoxicqa tasks-path`` prints)."""
    return os.path.realpath(paths.tasks_dir())


def index_plugin_tasks() -> None:
    """Make every lmms-eval ``TaskManager`` index our task folder after lmms-eval's own and any
    ``include_path`` (earlier folders win a name clash, so a user's task of the same name is kept).

    One hook on the class, idempotent: the CLI, ``lmms-eval tasks`` and ``simple_evaluate`` all
    build their index through ``initialize_tasks``."""
    from lmms_eval.tasks import TaskManager  # heavy: lmms-eval imports torch and its model registry

    original = TaskManager.initialize_tasks
    if getattr(original, "_mmtoxicqa_indexed", False):
        return
    ours = plugin_tasks_path()

    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [] if include_path is None else [include_path] if isinstance(include_path, str) else list(include_path)
        if ours not in {os.path.realpath(str(p)) for p in paths}:
            paths.append(ours)
        return original(self, include_path=paths, include_defaults=include_defaults)

    initialize_tasks._mmtoxicqa_indexed = True
    initialize_tasks.__doc__ = original.__doc__
    TaskManager.initialize_tasks = initialize_tasks


def unscored_answers(results: dict) -> dict[str, dict[str, int]]:
    """``{task: {judge: unscored}}`` for every judge of a results dict that left answers unscored."""
    found: dict[str, dict[str, int]] = {}
    for task, metrics in (results.get("results") or {}).items():
        judges = metrics.get("judges,none") if isinstance(metrics, dict) else None
        if not isinstance(judges, dict):
            continue
        missing = {name: int(row.get("unscored") or 0) for name, row in judges.items() if isinstance(row, dict) and row.get("unscored")}
        if missing:
            found[task] = missing
    return found


class _Outcomes:
    """What each evaluation lmms-eval ran ended as (one per ``--config`` entry, or one)."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.notes: list[str] = []

    def record(self, code: int, note: str = "") -> None:
        self.codes.append(code)
        if note:
            self.notes.append(note)

    def exit_code(self) -> int:
        failed = [c for c in self.codes if c in (EXIT_EVAL_FAILED, EXIT_NO_TASKS)]
        if failed:
            return failed[0]
        return max(self.codes, default=EXIT_OK)


def _watch(outcomes: _Outcomes):
    """Wrap lmms-eval's ``cli_evaluate_single`` (called once per evaluation) to record its outcome."""
    import lmms_eval.__main__ as upstream  # heavy: lmms-eval imports torch and its model registry

    single = upstream.cli_evaluate_single

    def watched(args):
        if getattr(args, "tasks", None) is None:
            outcomes.record(EXIT_NO_TASKS, "no --tasks given; e.g. --tasks mm_toxic_qa (list them: --tasks list)")
        try:
            results, samples = single(args)
        except SystemExit:
            raise
        except Exception as exc:
            text = str(exc)
            if isinstance(exc, ValueError) and text.startswith("Tasks not found"):
                outcomes.record(EXIT_NO_TASKS, text.split(". Try")[0] + "; list the known ones with --tasks list")
            else:
                outcomes.record(EXIT_EVAL_FAILED, f"evaluation failed: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")
            raise
        if results is not None:
            missing = unscored_answers(results)
            if missing:
                where = args.output_path or "OUTPUT_DIR"
                detail = "; ".join(f"{t}: " + ", ".join(f"{n} unscored by {j}" for j, n in m.items()) for t, m in missing.items())
                outcomes.record(EXIT_UNSCORED, f"answers saved but unscored ({detail}); finish with `mmtoxicqa rescore {where}`")
            else:
                outcomes.record(EXIT_OK)
        else:
            outcomes.record(EXIT_OK)  # a non-main process of a distributed run: rank 0 reports
        return results, samples

    upstream.cli_evaluate_single = watched


def _record_worn() -> None:
    """Add what the run's method wore (``config.mmtoxicqa_method``: name, glasses digest, dampened count,
    explicit overrides) to every results JSON lmms-eval writes, so two runs can be told apart."""
    from lmms_eval import evaluator  # heavy: lmms-eval imports torch and its model registry

    simple = evaluator.simple_evaluate
    if getattr(simple, "_mmtoxicqa_records", False):
        return

    def recorded(*args, **kwargs):

        methods.forget_last_built()
        results = simple(*args, **kwargs)
        built = methods.last_built()
        if isinstance(results, dict) and isinstance(results.get("config"), dict) and built is not None:
            results["config"]["mmtoxicqa_method"] = built
        return results

    recorded._mmtoxicqa_records = True
    evaluator.simple_evaluate = recorded


def _short(metric: str, value) -> str:
    """A one-cell stand-in for a dict-valued metric in the printed table (the JSON keeps the dict)."""
    if metric == "breakdown":
        return "per category/attack: next table"
    if metric == "judges":
        parts = [
            f"{name} {row.get('harmful_rate', float('nan')):.3f} [{row.get('ci_low', float('nan')):.3f}, {row.get('ci_high', float('nan')):.3f}]"
            + (f" {row['unscored']} unscored" if row.get("unscored") else "")
            for name, row in value.items()
            if isinstance(row, dict)
        ]
        shown = parts[:1]
        for part in parts[1:]:  # a cell of at most ~64 characters keeps the table under 200 with any number of judges
            if len("; ".join([*shown, part])) > 64:
                break
            shown.append(part)
        more = len(parts) - len(shown)
        return "; ".join(shown) + (f"; +{more} more (results JSON)" if more else "")
    if metric == "data" and "path" in value:
        return f"{value['path']} (datasheet {str(value.get('sha256', ''))[:12]})"
    return f"{{{len(value)} fields: see the results JSON}}"


def compact_results(results: dict, column: str = "results") -> dict:
    """A copy of ``results`` whose dict-valued metrics are one short cell each, so lmms-eval's
    table stays readable (under 200 characters for our tasks)."""
    rows = {}
    for task, metrics in (results.get(column) or {}).items():
        rows[task] = (
            {k: _short(k.split(",")[0], v) if isinstance(v, dict) else v for k, v in metrics.items()}
            if isinstance(metrics, dict)
            else metrics
        )
    return {**results, column: rows}


def breakdown_table(results: dict) -> str:
    """The per-category and per-attack breakdown of every task as its own markdown table ('' if none)."""
    lines = []
    for task, metrics in (results.get("results") or {}).items():
        breakdown = metrics.get("breakdown,none") if isinstance(metrics, dict) else None
        if not isinstance(breakdown, dict):
            continue
        for by, groups in breakdown.items():
            for name, row in (groups or {}).items():
                lines.append(
                    f"| {task} | {by} | {name} | {row.get('n', 0)} | {row.get('harmful_rate', float('nan')):.3f} "
                    f"| [{row.get('ci_low', float('nan')):.3f}, {row.get('ci_high', float('nan')):.3f}] | {row.get('refusal_rate', float('nan')):.3f} |"
                )
    if not lines:
        return ""
    head = "| task | by | group | n | harmful_rate | 95% CI | refusal_rate |\n|---|---|---|---:|---:|---|---:|"
    return "Breakdown (headline judge):\n" + head + "\n" + "\n".join(lines)


def _print_compact_tables() -> None:
    """Route lmms-eval's results printing through :func:`compact_results` and add the breakdown table."""
    import lmms_eval.__main__ as upstream  # heavy: lmms-eval imports torch and its model registry

    make_table = upstream.make_table

    def compact_make_table(result_dict, column="results", sort_results=False):
        table = make_table(compact_results(result_dict, column), column, sort_results)
        extra = breakdown_table(result_dict) if column == "results" else ""
        return table + ("\n" + extra + "\n" if extra else "")

    upstream.make_table = compact_make_table


def _wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None) -> int:
    """Run lmms-eval's CLI with our task folder indexed; exit 0/1/2/3 (see ``EXIT_CODES_HELP``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    index_plugin_tasks()
    from lmms_eval.cli.dispatch import main as upstream_main  # heavy: lmms-eval imports torch and its model registry

    outcomes = _Outcomes()
    evaluating = bool(argv) and (argv[0].startswith("-") or argv[0] == "eval") and not _wants_help(argv)
    if evaluating:
        _watch(outcomes)
        _print_compact_tables()
        _record_worn()
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "lmms_eval", *argv]
    code = EXIT_OK
    try:
        upstream_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        if not outcomes.codes:  # raised before any evaluation started: lmms-eval's own traceback, exit 1
            raise
        traceback.print_exc()  # --verbosity DEBUG re-raises; the outcome is recorded
    finally:
        sys.argv = saved_argv
    if _wants_help(argv):
        print(EXIT_CODES_HELP)
    if evaluating:
        code = outcomes.exit_code() if outcomes.codes else code
        for note in outcomes.notes:
            print(f"lmms_eval: {note}", file=sys.stderr)
        if code:
            print(f"lmms_eval: exit {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
