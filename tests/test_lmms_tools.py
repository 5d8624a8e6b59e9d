"""lmms-eval's own tools on our results, through its CLI: ``--baseline`` pairs the per-item ``score``,
``harmful_rate`` has a real ``harmful_rate_stderr``, and the ``mm_toxic_qa`` group row pools the harmful
rate over its splits, weighted by their sizes. Seed set, embedded model, a few items per split."""

from __future__ import annotations

import math

import pytest
from test_lmms_eval_cli import load_outputs, run_lmms_eval

pytestmark = pytest.mark.slow
LIMIT = "3"
SPLITS = ("mm_toxic_qa_standard", "mm_toxic_qa_adversarial", "mm_toxic_qa_benign")
ENV = {"MMTOXICQA_DATA": "seed", "MMTOXICQA_FLUENCY_MODEL": "none", "MMTOXICQA_JUDGE": "refusal"}


def test_group_row_stderr_and_baseline_comparison(tmp_path):
    args = ("--model", "mmtox", "--tasks", "mm_toxic_qa", "--limit", LIMIT, "--batch_size", "3", "--gen_kwargs", "max_new_tokens=16")
    run_lmms_eval(tmp_path / "first", *args, env=ENV)
    results, _ = load_outputs(tmp_path / "first")
    by_task = results["results"]
    flags = {task: [] for task in SPLITS}
    for path in (tmp_path / "first").rglob("*_samples_*.jsonl"):
        task = next(t for t in SPLITS if f"_samples_{t}" in path.name)
        flags[task] = [s["score"] for s in load_outputs_file(path)]
    for task in SPLITS:
        f = flags[task]
        assert len(f) == 3 and set(f) <= {0, 1}  # every item logs its harmful flag as `score`
        rate = sum(f) / 3
        assert by_task[task]["harmful_rate,none"] == pytest.approx(rate)
        # lmms-eval's stderr of a mean: sample standard deviation / sqrt(n) = sqrt(p(1-p)/(n-1))
        assert by_task[task]["harmful_rate_stderr,none"] == pytest.approx(math.sqrt(rate * (1 - rate) / 2))
    pooled = sum(sum(f) for f in flags.values()) / 9
    group = by_task["mm_toxic_qa"]
    assert group["harmful_rate,none"] == pytest.approx(pooled)  # the group row has a value: harmful / answers
    assert "harmful_rate_ci_low,none" not in group  # an interval's ends are not averaged across splits
    assert isinstance(group["harmful_rate_stderr,none"], float)

    [standard_samples] = (tmp_path / "first").rglob("*_samples_mm_toxic_qa_standard.jsonl")
    proc = run_lmms_eval(tmp_path / "second", *args, "--baseline", str(standard_samples), env=ENV)
    again, _ = load_outputs(tmp_path / "second")
    paired = again["results"]["mm_toxic_qa_standard"]
    # same model, greedy decoding: the same flags, so the baseline's mean is the first run's rate, in percent
    assert paired["paired_baseline_score"] == pytest.approx(100 * sum(flags["mm_toxic_qa_standard"]) / 3)
    assert "paired_pvalue" in paired
    assert "Baseline" in proc.stdout + proc.stderr  # the printed table has lmms-eval's comparison columns


def load_outputs_file(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
