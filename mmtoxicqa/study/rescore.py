"""Judgement after generation: re-score saved answers with other judges, and how far judges agree.

Answers are what a run costs; a judge is cheap to change. ``mmtoxicqa rescore`` reads the answers
an lmms-eval run logged (``--log_samples``) or a sweep's cells, scores them with ``--judge`` (one or
several, headline first) and writes a new run folder / new cells; nothing is generated again. It
is also how a run whose judge failed half-way (endpoint down) is finished.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmtoxicqa.core.atomic import atomic_path, write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.lmms.task_metrics import JUDGE_METRICS, aggregations, item_context, judge_values
from mmtoxicqa.metrics.rates import cohen_kappa
from mmtoxicqa.scoring import check_judges, get_judge
from mmtoxicqa.study.results import logged_doc, read_results_json, read_samples, run_folder, sample_answers
from mmtoxicqa.study.sweep import load_cells_with_paths


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]


def score_items(docs: list[dict], answers: list[list[str]], judges: list[str]) -> list[tuple[dict[str, list[float]], dict[str, list]]]:
    """Per item, each judge's scores of its answers (NaN where a judge could not score) and why an
    answer is unscored (None where scored): one answer refused by the judge leaves the others scored."""

    check_judges(judges)
    flat = [a for item in answers for a in item]
    contexts = [item_context(doc) for doc, item in zip(docs, answers) for _ in item]
    per_judge, why = {}, {}
    for spec in judges:
        judge = get_judge(spec)
        per_judge[spec], why[spec] = judge.score_with_reasons(flat, contexts=contexts if judge.uses_context else None)
    out, start = [], 0
    for item in answers:
        end = start + len(item)
        out.append(({spec: v[start:end] for spec, v in per_judge.items()}, {spec: r[start:end] for spec, r in why.items()}))
        start = end
    return out


def _clt(values: list[float]) -> float | str:
    n = len(values)
    if n < 2:
        return "N/A"
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def rescore_run(run_dir: str | Path, judges: list[str], threshold: float, out_dir: str | Path) -> Path:
    """Re-score an lmms-eval run folder into ``out_dir`` (results JSON + samples, same file names)."""
    from lmms_eval.api.metrics import clustered_stderr  # heavy: lmms-eval imports torch and its model registry

    results_file, samples_files = run_folder(run_dir)
    results = read_results_json(results_file)
    out_dir = Path(out_dir)
    rescored_tasks = []
    for samples_file in samples_files:
        task = samples_file.stem.split("_samples_", 1)[1]
        samples = read_samples(samples_file, results)
        if samples and "harmful_rate" in samples[0]:
            answers = [sample_answers(s) for s in samples]
            docs = [logged_doc(s, samples_file) for s in samples]
            for sample, doc, item_answers, (scores, reasons) in zip(samples, docs, answers, score_items(docs, answers, judges)):
                sample.update(judge_values(doc, item_answers, scores, threshold, reasons))
            table = results.setdefault("results", {}).setdefault(task, {})
            for metric in JUDGE_METRICS:
                records = [s[metric] for s in samples]
                table[f"{metric},none"] = aggregations()[f"agg_{metric}"](records)
                scored = [r for r in records if isinstance(r, dict) and r.get("score") is not None]
                if scored:
                    table[f"{metric}_stderr_clt,none"] = _clt([r["score"] for r in scored])
                    clusters = [r.get("request_key") for r in scored]
                    table[f"{metric}_stderr_clustered,none"] = (
                        clustered_stderr([r["score"] for r in scored], clusters) if len(set(clusters)) > 1 else "N/A"
                    )
            rescored_tasks.append(task)
        with atomic_path(out_dir / samples_file.name) as tmp:
            tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    if not rescored_tasks:
        raise MMToxError(f"no MM-TOXIC-QA samples under {run_dir}; rescore needs a run made with --log_samples")
    results["rescored"] = {"judges": judges, "threshold": threshold, "from": str(results_file)}
    write_json_atomic(out_dir / results_file.name, results)
    return out_dir / results_file.name


def rescore_cells(cells_dir: str | Path, judges: list[str], threshold: float, out_dir: str | Path) -> list[Path]:
    """Re-score a sweep's cells (their saved answers) into ``out_dir``, one new cell per cell."""

    written = []
    for path, cell in load_cells_with_paths(cells_dir):
        items = cell.get("items") or {}
        if not items or any("answer" not in v for v in items.values()):
            raise MMToxError(f"{path} has no saved answers (written by an older mmtoxicqa); rerun that cell with `mmtoxicqa sweep`")
        ids = list(items)
        docs = [dict(items[i], id=i) for i in ids]
        answers = [[items[i]["answer"]] for i in ids]
        values = [
            judge_values(doc, a, scores, threshold, reasons)
            for doc, a, (scores, reasons) in zip(docs, answers, score_items(docs, answers, judges))
        ]
        for item_id, value in zip(ids, values):
            first = value["judges"]["scores"][judges[0]][0]
            items[item_id].update(score=first, harmful=None if first is None else int(first >= threshold))
        for metric in JUDGE_METRICS:
            cell["metrics"][metric] = aggregations()[f"agg_{metric}"]([v[metric] for v in values])
        cell.update(judge=",".join(judges), threshold=threshold, rescored_from=str(path))
        write_json_atomic(Path(out_dir) / path.name, cell)
        written.append(Path(out_dir) / path.name)
    if not written:
        raise MMToxError(f"no sweep cells in {cells_dir}; point at a `mmtoxicqa sweep --out` folder or an lmms-eval run folder")
    return written


def agreement(flags_a: list[int], flags_b: list[int]) -> dict:
    """Percent agreement and Cohen's kappa of two judges' harmful flags on the same answers."""
    n = len(flags_a)
    if n == 0:
        return {"n": 0, "agreement": math.nan, "kappa": math.nan}

    observed = sum(a == b for a, b in zip(flags_a, flags_b)) / n
    return {"n": n, "agreement": observed, "kappa": cohen_kappa(flags_a, flags_b)}


def judges_agreement(run_dir: str | Path, threshold: float) -> list[dict]:
    """Pairwise agreement of the judges a run (or a rescored run) logged, over the answers both scored."""

    _, samples_files = run_folder(run_dir)
    per_judge: dict[str, dict[str, float]] = {}
    for samples_file in samples_files:
        for sample in read_samples(samples_file):
            logged = (sample.get("judges") or {}).get("scores") or {}
            key = f"{samples_file.stem}:{sample.get('doc_id')}"
            for spec, scores in logged.items():
                if scores and scores[0] is not None:
                    per_judge.setdefault(spec, {})[key] = scores[0]
    specs = list(per_judge)
    if len(specs) < 2:
        raise MMToxError(
            f"{run_dir} has scores of {len(specs)} judge(s); run with MMTOXICQA_JUDGE=a,b or `mmtoxicqa rescore --judge a,b` first"
        )
    rows = []
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            common = sorted(set(per_judge[a]) & set(per_judge[b]))
            result = agreement([int(per_judge[a][k] >= threshold) for k in common], [int(per_judge[b][k] >= threshold) for k in common])
            rows.append({"judge_a": a, "judge_b": b, **result})
    return rows
