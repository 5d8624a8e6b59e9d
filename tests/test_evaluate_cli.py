"""The ``lmms_eval`` command this package installs (mmtoxicqa.lmms.evaluate), run as real subprocesses.

It indexes our tasks with no ``--include_path``, still honours a user's ``--include_path``, makes
``LMMS_EVAL_PLUGINS=mmtoxicqa`` work through ``mmtoxicqa.models``, and exits 1/2/3 where lmms-eval
itself exits 0. Runs use the shipped seed set, two items and a few new tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from local_http import QuietHandler, read_prompt, reply_chat, serving

from mmtoxicqa.lmms import evaluate

REPO = Path(__file__).resolve().parent.parent
WRAPPER = [sys.executable, "-c", "import sys; from mmtoxicqa.lmms.evaluate import main; sys.exit(main())"]
QUIET = {"MMTOXICQA_DATA": "seed", "MMTOXICQA_FLUENCY_MODEL": "none", "OMP_NUM_THREADS": "1", "LMMS_EVAL_PLUGINS": ""}
HEALTH_PROBE = "How do I boil an egg?"  # the llm judge's health-check question


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run from a folder with no ``tasks/`` beside it, so only an index can find our tasks."""
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **QUIET, **(env or {})}, capture_output=True, text=True, timeout=900)


def seed_args(out: Path, *extra: str) -> list[str]:
    return ["--model", "mmtox", "--limit", "2", "--gen_kwargs", "max_new_tokens=4", "--output_path", str(out), "--log_samples", *extra]


def results_of(out: Path) -> dict:
    [path] = list(out.rglob("*_results.json"))
    return json.loads(path.read_text())["results"]


def test_unscored_answers_reads_the_judges_metric():
    results = {"results": {"a": {"judges,none": {"profanity": {"unscored": 0}, "llm": {"unscored": 2}}}, "b": {"harmful_rate,none": 0.1}}}
    assert evaluate.unscored_answers(results) == {"a": {"llm": 2}}
    assert evaluate.unscored_answers({"results": {"a": {"judges,none": {"profanity": {"unscored": 0}}}}}) == {}


def test_printed_table_gets_short_cells_and_a_breakdown_table():
    results = {
        "results": {
            "t": {
                "harmful_rate,none": 0.25,
                "judges,none": {"profanity": {"harmful_rate": 0.25, "ci_low": 0.05, "ci_high": 0.7, "n": 4, "unscored": 1}},
                "data,none": {"path": "seed", "sha256": "ab" * 32},
                "breakdown,none": {
                    "category": {"hate": {"n": 4, "harmful_rate": 0.25, "ci_low": 0.05, "ci_high": 0.7, "refusal_rate": 0.5}}
                },
            }
        }
    }
    short = evaluate.compact_results(results)["results"]["t"]
    assert short["judges,none"] == "profanity 0.250 [0.050, 0.700] 1 unscored"
    assert short["data,none"] == "seed (datasheet abababababab)"
    assert short["harmful_rate,none"] == 0.25
    assert results["results"]["t"]["judges,none"]["profanity"]["n"] == 4  # the original is untouched
    assert "| t | category | hate | 4 | 0.250 | [0.050, 0.700] | 0.500 |" in evaluate.breakdown_table(results)


@pytest.mark.slow
def test_installed_wrapper_finds_our_tasks_without_include_path(tmp_path):
    out = tmp_path / "run"
    proc = run([*WRAPPER, *seed_args(out, "--tasks", "mm_toxic_qa_seed,mm_utility_mini")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = results_of(out)
    assert results["mm_toxic_qa_seed"]["judges,none"]["profanity"]["n"] == 2
    assert "exact_match,none" in results["mm_utility_mini"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table and max(len(line) for line in table) < 200  # the breakdown is its own table, not a 600-character cell
    assert any(line.startswith("| mm_toxic_qa_seed | category |") for line in table)


@pytest.mark.slow
def test_user_include_path_still_works_beside_ours(tmp_path):
    own = tmp_path / "my_tasks"
    own.mkdir()
    seed_yaml = (REPO / "tasks" / "mm_toxic_qa" / "mm_toxic_qa_seed.yaml").read_text()
    assert "task: mm_toxic_qa_seed" in seed_yaml
    (own / "my_seed.yaml").write_text(seed_yaml.replace("task: mm_toxic_qa_seed", "task: my_seed_copy"))
    for name in ("_mm_toxic_qa_template.yaml", "utils.py", "seed_items.jsonl"):
        shutil.copy(REPO / "tasks" / "mm_toxic_qa" / name, own / name)
    out = tmp_path / "run"
    proc = run([*WRAPPER, *seed_args(out, "--tasks", "my_seed_copy,mm_utility_mini", "--include_path", str(own))], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(results_of(out)) == {"my_seed_copy", "mm_utility_mini"}


@pytest.mark.slow
def test_lmms_eval_plugins_variable_works_with_upstream_entry_point(tmp_path):
    """Plain ``python -m lmms_eval`` (not our wrapper): lmms-eval imports mmtoxicqa.models."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "lmms_eval", *seed_args(out, "--tasks", "mm_toxic_qa_seed")]
    proc = run(cmd + ["--verbosity", "DEBUG"], tmp_path, {"LMMS_EVAL_PLUGINS": "mmtoxicqa"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results_of(out)["mm_toxic_qa_seed"]["judges,none"]["profanity"]["n"] == 2


def test_models_module_is_what_lmms_eval_legacy_plugins_expect():
    import importlib

    from mmtoxicqa import models
    from mmtoxicqa.model_wrappers.method_models import MMTox_sgm
    from mmtoxicqa.model_wrappers.mmtox import MMTox

    assert models.AVAILABLE_MODELS["mmtox"] == "MMTox" and models.AVAILABLE_MODELS["sgm"] == "MMTox_sgm"
    # lmms-eval records "<plugin>.models.<name>.<class>" and imports it
    for name, cls in (("mmtox", MMTox), ("sgm", MMTox_sgm)):
        assert getattr(importlib.import_module(f"mmtoxicqa.models.{name}"), models.AVAILABLE_MODELS[name]) is cls


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        ("no_such_task_xyz", evaluate.EXIT_NO_TASKS, "Tasks not found: no_such_task_xyz"),
        (None, evaluate.EXIT_NO_TASKS, "no --tasks given"),
    ],
)
def test_exit_code_when_no_task_matches(tmp_path, tasks, code, message):
    args = seed_args(tmp_path / "run") + (["--tasks", tasks] if tasks else [])
    proc = run([*WRAPPER, *args], tmp_path)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr


@pytest.mark.slow
def test_exit_code_when_the_model_fails(tmp_path):
    proc = run([*WRAPPER, *seed_args(tmp_path / "run", "--tasks", "mm_toxic_qa_seed", "--model_args", "dtype=int8")], tmp_path)
    assert proc.returncode == evaluate.EXIT_EVAL_FAILED, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "evaluation failed: MMToxError" in proc.stderr and "dtype" in proc.stderr
    # the same failure through unwrapped lmms-eval exits 0: the reason this wrapper exists
    upstream = run(
        [sys.executable, "-m", "lmms_eval", *seed_args(tmp_path / "up", "--tasks", "mm_toxic_qa_seed", "--model_args", "dtype=int8")],
        tmp_path,
    )
    assert upstream.returncode == 0


class MuddledJudge(QuietHandler):
    """Passes the llm judge's health check, then replies with text that is no verdict."""

    def do_POST(self):
        reply_chat(self, "safe" if HEALTH_PROBE in read_prompt(self) else "hmm, hard to say")


@pytest.mark.slow
def test_exit_code_when_answers_are_saved_but_unscored(tmp_path):
    out = tmp_path / "run"
    with serving(MuddledJudge, watchdog_s=600) as url:
        env = {
            "MMTOXICQA_JUDGE": "profanity,llm",
            "MMTOXICQA_LLM_JUDGE_URL": f"{url}/v1",
            "MMTOXICQA_LLM_JUDGE_MODEL": "muddled",
            "MMTOXICQA_LLM_JUDGE_CACHE": "0",
        }
        proc = run([*WRAPPER, *seed_args(out, "--tasks", "mm_toxic_qa_seed")], tmp_path, env)
    assert proc.returncode == evaluate.EXIT_UNSCORED, proc.stdout[-2000:] + proc.stderr[-2000:]
    judges = results_of(out)["mm_toxic_qa_seed"]["judges,none"]
    assert (judges["profanity"]["unscored"], judges["llm"]["unscored"]) == (0, 2)
    assert len(list(out.rglob("*_samples_*.jsonl"))) == 1  # the answers are saved
    assert f"mmtoxicqa rescore {out}" in proc.stderr


def test_help_lists_the_exit_codes(capsys):
    assert evaluate.main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert "exit codes:" in printed and "3  answers generated and saved" in printed


def test_judges_cell_stays_short_with_many_judges():
    row = {"harmful_rate": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 4, "unscored": 0}
    results = {"results": {"t": {"judges,none": {name: dict(row) for name in ("refusal", "profanity", "llm", "llamaguard")}}}}
    cell = evaluate.compact_results(results)["results"]["t"]["judges,none"]
    assert cell == "refusal 0.500 [0.100, 0.900]; profanity 0.500 [0.100, 0.900]; +2 more (results JSON)"
