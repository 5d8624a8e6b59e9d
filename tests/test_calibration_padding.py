"""Calibration batches compute what single items compute: the glasses do not depend on the batch size.

With left padding, a row's tokens sat at shifted positions; the rounding that followed depended on the
row's length, and lengths that differ by class leaked into the pooled responses (on the embedded model,
text scope, 64 items: AUROCs up to 0.31 away from their batch-1 values, 2,091 neurons that are constant
alone spread over 0.25-0.81). Right padding keeps every row's positions, and the causal mask keeps the
pads out of them: what is left is rounding that no longer depends on a row's length.
"""

from __future__ import annotations

import torch
from test_sgm_integration import write_calibration

from mmtoxicqa.modeling.loading import build_inputs
from mmtoxicqa.sgm.calibration import calibrate


def test_batch_of_eight_fits_the_glasses_of_batch_one(tmp_path, monkeypatch, tiny_llava):
    calib = write_calibration(tmp_path / "calibration.parquet", n_per_class=12)  # lengths differ by class
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    alone = calibrate(tiny_llava, calib, batch_size=1, use_cache=False, progress=False, resume=False).auroc_all()
    batched = calibrate(tiny_llava, calib, batch_size=8, use_cache=False, progress=False, resume=False).auroc_all()
    assert alone.numel() == batched.numel() == 128
    constant = alone == 0.5  # tied across all 24 items when run alone (34 of 128 on this model)
    assert int(constant.sum()) >= 20
    # left padding spread these over 0.29-0.65; now they stay tied
    assert torch.equal(batched[constant], alone[constant])
    # the rest moves only by rank swaps of near-tied values (left padding: up to 0.21, 35 neurons above 0.02)
    assert float((alone - batched).abs().max()) <= 0.06


def test_padding_side_is_only_for_the_call(tiny_llava):
    conversations = [[{"role": "user", "content": [{"type": "text", "text": t}]}] for t in ("hi", "a much longer question here")]
    right = build_inputs(tiny_llava, conversations, padding_side="right")
    left = build_inputs(tiny_llava, conversations)
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0  # the short row ends in pads
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1  # generation's default is unchanged
    assert tiny_llava.tokenizer.padding_side == "left"
