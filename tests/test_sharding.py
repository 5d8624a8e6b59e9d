"""Scale-out: two CPU processes (torch.distributed, gloo) give the same merged results as one.

lmms-eval shards docs by the wrapper's rank / world size and gathers the outputs; the
wrapper takes both from accelerate, which reads the launcher's environment (on a CPU only when the
wrapper asks for ``Accelerator(cpu=True)``; before that, both processes answered all 8 docs and this
test passed without sharding anything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _run(out: Path, model_dir: Path, processes: int) -> tuple[dict[int, str], str]:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(29500 + processes)]
        if processes > 1
        else [sys.executable]
    )
    cmd = launcher + [
        "-m",
        "lmms_eval",
        "--model",
        "mmtox",
        "--model_args",
        f"pretrained={model_dir},device=cpu",
        "--tasks",
        "mm_utility_mini",
        "--include_path",
        str(REPO / "tasks"),
        "--limit",
        "8",
        "--batch_size",
        "2",
        "--output_path",
        str(out),
        "--log_samples",
        "--verbosity",
        "DEBUG",
    ]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [samples] = list(out.rglob("*_samples_mm_utility_mini.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    return {r["doc_id"]: r["filtered_resps"] for r in rows}, proc.stdout + proc.stderr


def test_two_processes_equal_one(tmp_path, tiny_llava_dir):
    single, _ = _run(tmp_path / "one", tiny_llava_dir, 1)
    sharded, log = _run(tmp_path / "two", tiny_llava_dir, 2)
    assert sorted(single) == list(range(8))
    assert sharded == single
    # each process answered its own half: the work was split, not repeated (on a CPU accelerate must be told cpu=True)
    assert "process 0 of 2 answers 4 requests" in log, log[-3000:]
    assert "process 1 of 2 answers 4 requests" in log, log[-3000:]
