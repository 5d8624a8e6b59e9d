"""Calibration memory (issue #26 item 3): the pooled matrix in float16 / bfloat16, AUROCs in column
blocks on a chosen device, resume shards optional.

The tolerance, stated: rounding to a narrower float is monotone, so it never swaps two pooled values;
it can only merge two distinct values into a tie, which the rank AUROC counts 1/2. Each neuron's AUROC
therefore moves by at most (toxic/non-toxic pairs merged) / (2 n1 n0), and by nothing when no pair
merges. For a bfloat16 model with max pooling the pooled values are bfloat16 numbers already, so a
bfloat16 pooled matrix is lossless: the same AUROCs bit for bit. (How large the moves are on a float32
model's real activations is measured in benchmarks/RESULTS.md, bench_pool_dtype.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_sgm_integration import write_calibration

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.sgm.auroc import auroc, aurocs, block_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def pairwise_auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The definition, pair by pair: P(toxic > non-toxic) + 1/2 P(tie), per column (float64)."""
    y = labels.bool()
    a, b = scores[y].double(), scores[~y].double()  # (n1, M), (n0, M)
    greater = (a[:, None, :] > b[None, :, :]).double().sum((0, 1))
    ties = (a[:, None, :] == b[None, :, :]).double().sum((0, 1))
    return (greater + 0.5 * ties) / (a.shape[0] * b.shape[0])


def merged_pairs(scores: torch.Tensor, rounded: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per column: toxic/non-toxic pairs that differ in ``scores`` and are equal in ``rounded``."""
    y = labels.bool()
    a, b, ra, rb = scores[y].double(), scores[~y].double(), rounded[y].double(), rounded[~y].double()
    return ((ra[:, None, :] == rb[None, :, :]) & (a[:, None, :] != b[None, :, :])).double().sum((0, 1))


def test_a_float16_tie_counts_half_by_hand():
    # toxic 1.0004 and 2.0, non-toxic 1.0002 and 0.5: in float32 every toxic value is above every non-toxic one
    scores = torch.tensor([1.0004, 2.0, 1.0002, 0.5])
    labels = torch.tensor([1, 1, 0, 0])
    assert float(auroc(scores, labels)) == 1.0
    for dtype in (torch.float16, torch.bfloat16):
        rounded = scores.to(dtype)
        assert rounded[0] == rounded[2] == 1.0  # both round to 1.0 (float16's step at 1 is 2^-10)
        # 4 pairs: 1.0 vs 1.0 is a tie (1/2), the other three are wins: 3.5 / 4
        assert float(auroc(rounded, labels)) == 0.875 == 1.0 - 1 / (2 * 2 * 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_pool_moves_each_auroc_at_most_by_its_merged_pairs(dtype):
    g = torch.Generator().manual_seed(3)
    n, m = 60, 400
    labels = (torch.arange(n) % 2 == 0).long()
    # clustered values: differences around 1e-4 of the value, so rounding merges many pairs; a signal in some columns
    scores = 1.0 + 1e-4 * torch.randn(n, m, generator=g) + 1e-4 * labels[:, None] * torch.linspace(0, 2, m)
    scores[:, :50] *= 1000.0  # other magnitudes
    rounded = scores.to(dtype)
    narrow, wide = aurocs(rounded, [labels])[0], aurocs(scores, [labels])[0]
    assert torch.allclose(narrow, pairwise_auroc(rounded, labels), rtol=0, atol=1e-12)  # ties counted 1/2, exactly
    assert torch.allclose(wide, pairwise_auroc(scores, labels), rtol=0, atol=1e-12)
    bound = merged_pairs(scores, rounded, labels) / (2 * 30 * 30)
    moved = (narrow - wide).abs()
    assert bool((moved <= bound + 1e-12).all())
    assert int((bound > 0).sum()) > 100 and float(moved.max()) > 0.01  # the case is not vacuous: many pairs merge
    assert bool((moved[bound == 0] == 0).all())  # no merged pair, no change


def test_blocks_on_a_device_give_the_same_aurocs_and_devices_are_checked():
    from mmtoxicqa.sgm.memory import check_auroc_device, parse_pool_dtype

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 123, generator=g).to(torch.bfloat16)
    labels = torch.arange(50) % 3 == 0
    reference = pairwise_auroc(scores.float(), labels.long())
    for chunk in (1, 10, 123, None):
        [out] = aurocs(scores, [labels], chunk_size=chunk, device="cpu")
        assert torch.allclose(out, reference, rtol=0, atol=1e-12)
    assert check_auroc_device(None) is None and check_auroc_device("cpu") == torch.device("cpu")
    with pytest.raises(MMToxError, match="auroc_device='gpu' is not a device; use cpu, cuda, cuda:N or mps"):
        check_auroc_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(MMToxError, match="auroc_device='cuda' but CUDA is not available on this machine .*use auroc_device=cpu"):
            check_auroc_device("cuda")
    assert parse_pool_dtype("bf16") is torch.bfloat16 and parse_pool_dtype(None) is torch.float32
    with pytest.raises(MMToxError, match="pool dtype 'int8' is not supported; use one of float32, float16, bfloat16"):
        parse_pool_dtype("int8")


PEAK_CHILD = r"""
import json, sys, torch
from pathlib import Path
from mmtoxicqa.sgm.auroc import aurocs
torch.set_num_threads(1)
n, m, chunk = 1000, 20000, 500
scores = torch.randn(n, m, generator=torch.Generator().manual_seed(0))  # 80 MB float32
labels = (torch.arange(n) % 2 == 0).long()
placebo = labels.flip(0)
def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
aurocs(scores, [labels, placebo], chunk_size=chunk, device="cpu")
print(json.dumps({"peak": status("VmHWM") - base, "matrix": scores.numel() * 4}))
"""


def test_the_auroc_working_set_is_one_block_not_a_copy_of_the_matrix():
    proc = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    block = block_bytes(1000, 500, 500, label_sets=2, stored_bytes=4)
    assert block == 500 * (1000 * 20 + 2 * 500 * 20) == 20_000_000
    # one block (20 MB) plus allocator slack; a second copy of the matrix alone would be 80 MB
    assert measured["peak"] <= block + (16 << 20), measured
    assert measured["peak"] < measured["matrix"] / 2


@pytest.fixture(scope="module")
def calib12(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("mem") / "calibration.parquet", n_per_class=6)


def test_bfloat16_pool_is_lossless_for_a_bfloat16_model(tiny_llava_dir, calib12):
    from mmtoxicqa.modeling.loading import load_model
    from mmtoxicqa.sgm.calibration import calibrate

    loaded = load_model(str(tiny_llava_dir), dtype="bfloat16")
    wide = calibrate(loaded, calib12, batch_size=4, use_cache=False, progress=False)
    narrow = calibrate(loaded, calib12, batch_size=4, use_cache=False, progress=False, pool_dtype="bfloat16", auroc_device="cpu")
    assert wide.meta["pool_dtype"] == "float32" and narrow.meta["pool_dtype"] == "bfloat16"
    assert torch.equal(wide.auroc_all(), narrow.auroc_all())
    assert torch.equal(torch.cat(wide.placebo_auroc), torch.cat(narrow.placebo_auroc))
    assert wide.alpha_sha256() == narrow.alpha_sha256()


def test_float16_overflow_is_refused_naming_the_layer(tiny_llava_dir, calib12):
    from mmtoxicqa.modeling.loading import load_model
    from mmtoxicqa.sgm.calibration import calibrate

    loaded = load_model(str(tiny_llava_dir))
    with torch.no_grad():
        loaded.model.model.language_model.layers[1].mlp.up_proj.weight.mul_(1e7)  # pooled values up to about 4e5 (0.04 before)
    with pytest.raises(
        MMToxError, match=r"layer 1 \(.*mlp.down_proj\) has a pooled activation of .*beyond float16's 65504; pass pool dtype bfloat16"
    ):
        calibrate(loaded, calib12, batch_size=4, use_cache=False, progress=False, pool_dtype="float16")
    glasses = calibrate(loaded, calib12, batch_size=4, use_cache=False, progress=False, pool_dtype="bfloat16")
    assert glasses.meta["pool_dtype"] == "bfloat16"


def test_calibrate_command_memory_flags(tmp_path, tiny_llava_dir, calib12, monkeypatch, capsys):
    import mmtoxicqa.sgm.collect as _  # noqa: F401
    from mmtoxicqa.cli import main
    from mmtoxicqa.sgm import Glasses

    collect_module = sys.modules["mmtoxicqa.sgm.collect"]
    shards_written = []
    real_save_shard = collect_module._save_shard
    monkeypatch.setattr(collect_module, "_save_shard", lambda file, *a: (shards_written.append(file), real_save_shard(file, *a)))
    argv = ["calibrate", "--model", str(tiny_llava_dir), "--data", str(calib12), "--batch-size", "4"]
    resume = tmp_path / "resume"
    out = tmp_path / "g16.safetensors"
    extra = ["--pool-dtype", "float16", "--auroc-device", "cpu", "--auroc-block", "7", "--no-resume-shards", "--resume-dir", str(resume)]
    assert main([*argv, "--out", str(out), *extra]) == 0
    assert shards_written == [] and not resume.exists()  # no resume shard was written
    fp16 = Glasses.load(out)
    assert fp16.meta["pool_dtype"] == "float16" and fp16.summary()["pool_dtype"] == "float16"
    assert ", pooled matrix in float16" in fp16.summary_text().splitlines()[0]  # what `mmtoxicqa glasses` prints
    assert main([*argv, "--out", str(tmp_path / "g32.safetensors"), "--resume-dir", str(resume)]) == 0
    assert len(shards_written) == 3 and not resume.exists()  # 12 items in batches of 4; removed after success
    fp32 = Glasses.load(tmp_path / "g32.safetensors")
    assert fp32.meta["pool_dtype"] == "float32" and fp16.meta["class_sizes"] == fp32.meta["class_sizes"] == {"toxic": 6, "non_toxic": 6}
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "x.safetensors"), "--auroc-device", "gpu"]) == 2
    assert capsys.readouterr().err.strip() == "mmtoxicqa: error: auroc_device='gpu' is not a device; use cpu, cuda, cuda:N or mps"
