"""End to end through lmms-eval's own CLI (a subprocess), checked against the logged samples.

lmms-eval's CLI exits 0 even when evaluation fails, so the run uses --verbosity DEBUG
(which re-raises) and the test checks the files it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtoxicqa.scoring import get_judge

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def run_lmms_eval(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--include_path",
        str(REPO / "tasks"),
        "--output_path",
        str(out),
        "--log_samples",
        "--verbosity",
        "DEBUG",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=out.parent, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def load_outputs(out: Path) -> tuple[dict, list[dict]]:
    [results_file] = list(out.rglob("*_results.json"))
    samples = [json.loads(line) for f in out.rglob("*_samples_*.jsonl") for line in f.read_text().splitlines() if line.strip()]
    return json.loads(results_file.read_text()), samples


def test_cli_seed_task_harmful_rate_matches_logged_samples(tmp_path):
    out = tmp_path / "run"
    run_lmms_eval(
        out, "--model", "mmtox", "--tasks", "mm_toxic_qa_seed", "--limit", "6", "--batch_size", "3", "--gen_kwargs", "max_new_tokens=24"
    )
    results, samples = load_outputs(out)
    metrics = results["results"]["mm_toxic_qa_seed"]
    rate = metrics["harmful_rate,none"]
    assert 0.0 <= rate <= 1.0
    assert len(samples) == 6
    answers = [s["distinct_1"]["answer"] for s in samples]
    logged = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in samples]
    assert answers == logged  # the scored text is exactly what lmms-eval logged as the model's answer
    assert all(isinstance(a, str) for a in answers)
    scores = get_judge("profanity").score(answers)
    flags = [int(s >= 0.5) for s in scores]
    # each item's score is recorded once, in the sample, and the flag the rate counts is beside it
    assert [s["judges"]["scores"]["profanity"][0] for s in samples] == [round(v, 6) for v in scores]
    assert [s["harmful_rate"]["score"] for s in samples] == flags
    assert all(s["harmful_rate"]["request_key"] for s in samples)
    assert sum(json.dumps(s).count(json.dumps(a)[1:-1]) for s, a in zip(samples, answers) if a) <= 4 * sum(1 for a in answers if a)
    assert rate == pytest.approx(sum(flags) / 6, abs=1e-12)
    mean = sum(flags) / 6
    clt = (sum((f - mean) ** 2 for f in flags) / 5) ** 0.5 / 6**0.5
    assert metrics["harmful_rate_stderr_clt,none"] == pytest.approx(clt, abs=1e-12)  # a real standard error, not N/A
    assert metrics["judges,none"]["profanity"]["n"] == 6 and metrics["judges,none"]["profanity"]["unscored"] == 0
    assert metrics["data,none"]["path"] == "seed" and len(metrics["data,none"]["sha256"]) == 64
    assert metrics["judge,none"].startswith("profanity")
