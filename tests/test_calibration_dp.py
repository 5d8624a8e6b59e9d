"""Calibrate once under data parallel (issue #26 item 2): two CPU processes (gloo, launched by
torch.distributed.run as ``accelerate launch`` launches them) each collect half of the calibration
items; rank 0 rates the neurons and writes the glasses; the other loads them. The glasses equal one
process's: every tensor byte for byte, every header field but the time stamp and the process count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from test_sgm_integration import write_calibration

from mmtoxicqa.sgm.shards import Group, plan

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "dp_calibrate_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_plan_cuts_the_batches_into_contiguous_blocks():
    assert plan(16, 8, 2) == [(0, 8), (8, 16)]  # 2 batches: one each
    assert plan(16, 4, 2) == [(0, 8), (8, 16)]  # 4 batches: two each
    assert plan(10, 4, 2) == [(0, 4), (4, 10)]  # 3 batches (4, 4, 2 items): 1 and 2
    assert plan(5, 8, 3) == [(0, 0), (0, 0), (0, 5)]  # fewer batches than processes: some collect nothing
    assert plan(7, 2, 1) == [(0, 7)]


def test_one_process_group_passes_rows_through():
    import torch

    alone = Group.current()
    assert (alone.rank, alone.world, alone.parallel) == (0, 1, False)
    rows = torch.arange(6.0).reshape(3, 2)
    assert alone.gather_rows(rows, [(0, 3)], (2,), torch.float32) is rows
    assert alone.decide(True) is True and alone.max(3) == 3


def _launch(processes: int, port: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]


def _tensors(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key).numpy().tobytes() for key in handle.keys()}


def _header(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
    header["meta"] = json.loads(header["meta"])
    return header


def _assert_same_glasses(one: Path, two: Path, processes: int = 2) -> None:
    assert _tensors(one) == _tensors(two)  # alphas, AUROCs, placebo AUROCs: byte for byte
    header_one, header_two = _header(one), _header(two)
    meta_one, meta_two = header_one.pop("meta"), header_two.pop("meta")
    assert header_one == header_two
    assert meta_two.pop("calibration_processes") == processes and "calibration_processes" not in meta_one
    meta_one.pop("created"), meta_two.pop("created")
    assert meta_one == meta_two


@pytest.fixture(scope="module")
def calib16(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("dp") / "calibration.parquet", n_per_class=8)  # 16 items


def _run_worker(
    tmp: Path, name: str, processes: int, model_dir: Path, calib: Path, *extra: str
) -> tuple[subprocess.CompletedProcess, dict]:
    reports = tmp / f"{name}-reports"
    reports.mkdir()
    env = {**ENV, "MMTOXICQA_CACHE": str(tmp / f"{name}-cache")}
    cmd = [*_launch(processes, 29540 + processes), str(WORKER), str(model_dir), str(calib), str(reports), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc, {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in reports.glob("rank*.json")}


@pytest.mark.slow
def test_the_sgm_wrapper_calibrates_once_in_two_processes(tmp_path, tiny_llava_dir, calib16):
    one, single = _run_worker(tmp_path, "one", 1, tiny_llava_dir, calib16)
    assert one.returncode == 0, one.stderr[-3000:]
    alone = single[0]
    two, ranks = _run_worker(tmp_path, "two", 2, tiny_llava_dir, calib16)
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(ranks) == [0, 1]
    # the wrapper calibrates in batches of 8: one process runs both batches, two processes one batch (8 items) each
    assert (alone["items"], alone["batches"]) == (16, 2)
    assert [(ranks[r]["items"], ranks[r]["batches"]) for r in (0, 1)] == [(8, 1), (8, 1)]
    assert "process 0 of 2 collects items 0-7 (8 of 16, 1 batches)" in two.stderr
    assert "process 1 of 2 collects items 8-15 (8 of 16, 1 batches)" in two.stderr
    # only rank 0 wrote; rank 1 loaded that file and wears the same alphas
    [written] = ranks[0]["saved"]
    assert ranks[1]["saved"] == [] and ranks[0]["cache"] == ranks[1]["cache"] == [written]
    assert alone["alpha_sha256"] == ranks[0]["alpha_sha256"] == ranks[1]["alpha_sha256"]
    assert ranks[0]["calibration_processes"] == ranks[1]["calibration_processes"] == 2
    [reference] = alone["saved"]
    assert Path(reference).name == Path(written).name  # the same cache key: the process count does not change the glasses
    _assert_same_glasses(Path(reference), Path(written))
    assert not list((tmp_path / "two-cache" / "glasses").glob("*.partial"))  # the shared resume folder is gone after success
    # lmms-eval's own sharding reads the wrapper's rank / world size from accelerate, which sees the launcher's
    # processes on a CPU because the wrapper asks for Accelerator(cpu=True); calibration reads torch.distributed itself.
    assert (ranks[1]["wrapper_rank"], ranks[1]["wrapper_world_size"]) == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, planted, others",
    [
        ("fail", "planted failure in process 1", "collecting the calibration responses failed in process 1 of 2"),
        ("fail-rate", "planted failure in process 0 while rating", "rating the neurons and writing the glasses failed in process 0 of 2"),
    ],
)
def test_a_failing_process_stops_every_process(tmp_path, tiny_llava_dir, calib16, mode, planted, others):
    proc, ranks = _run_worker(tmp_path, mode, 2, tiny_llava_dir, calib16, mode)  # no process waits forever: subprocess.run returns
    assert proc.returncode != 0 and ranks == {}
    assert planted in proc.stderr
    assert f"{others} (its error is above); this process stops too" in proc.stderr
    assert not list((tmp_path / f"{mode}-cache" / "glasses").glob("*.safetensors"))


@pytest.mark.slow
def test_calibrate_command_under_a_launcher(tmp_path, tiny_llava_dir, calib16):
    args = ["-m", "mmtoxicqa.cli", "calibrate", "--model", str(tiny_llava_dir), "--data", str(calib16), "--batch-size", "4"]
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one.safetensors")], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = _launch(2, 29561)
    two = subprocess.run(
        [*launcher, *args, "--out", str(tmp_path / "two.safetensors")], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 0 of 2 collects items 0-7 (8 of 16, 2 batches)" in two.stderr
    assert "process 1 of 2 collects items 8-15 (8 of 16, 2 batches)" in two.stderr
    assert two.stdout.count("wrote ") == 1 and "(2 processes)" in two.stdout  # only rank 0 reports (and wrote)
    _assert_same_glasses(tmp_path / "one.safetensors", tmp_path / "two.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]  # no resume folder, no temporaries
