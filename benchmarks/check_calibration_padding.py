"""How much the calibration batch size moves the glasses: AUROCs at batch 1 against batch 8.

At batch 1 nothing is padded, so those AUROCs are what the model computes on each item alone. The
script fits the same items at batch 1 and at batch 8, with the batches padded as calibration pads them
(right, since FIT_VERSION 2) or, with ``--padding left``, as they were padded before (for comparison),
and prints the drift: the largest AUROC change, how many neurons move by more than 0.02, what happens
to the neurons that are tied on every item alone (AUROC exactly 0.5), and the top-100 overlap.

Usage (repo root; about 1 minute per fit on one core for 64 items of the embedded model):
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/check_calibration_padding.py --tokens text --padding right
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/check_calibration_padding.py --tokens text --padding left
"""

from __future__ import annotations

import argparse
import time

import torch

import mmtoxicqa.sgm.calibration as calibration
from mmtoxicqa.modeling.loading import load_model, resolve_pretrained


def fit(loaded, items: int, batch_size: int, tokens: str) -> torch.Tensor:
    glasses = calibration.calibrate(
        loaded, limit=items, batch_size=batch_size, use_cache=False, tokens=tokens, progress=False, resume=False
    )
    return glasses.auroc_all().double()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="pretrained= name or folder (default: embedded)")
    parser.add_argument("--items", type=int, default=64, help="class-balanced calibration items (default 64)")
    parser.add_argument("--tokens", default="text", choices=("text", "request", "answer"))
    parser.add_argument("--padding", default="right", choices=("right", "left"), help="how batch 8 is padded")
    args = parser.parse_args()

    loaded = load_model(resolve_pretrained(args.model), device="cpu", dtype="float32")
    if args.padding == "left":  # the calibration before FIT_VERSION 2: its batches padded like generation's
        real = calibration.build_inputs

        def left(loaded_model, conversations, replies=None, padding_side="left"):
            return real(loaded_model, conversations, replies, padding_side="left")

        calibration.build_inputs = left
    start = time.perf_counter()
    alone = fit(loaded, args.items, 1, args.tokens)
    batched = fit(loaded, args.items, 8, args.tokens)
    drift = (alone - batched).abs()
    tied = alone == 0.5
    top = len(set(torch.topk(alone, 100).indices.tolist()) & set(torch.topk(batched, 100).indices.tolist()))
    print(f"model {loaded.model_id}, {args.items} items, {args.tokens} scope, batch 8 padded {args.padding} vs batch 1")
    print(f"  neurons {alone.numel()}; largest AUROC change {float(drift.max()):.4f}; moved by > 0.02: {int((drift > 0.02).sum())}")
    if bool(tied.any()):
        print(
            f"  tied on every item alone: {int(tied.sum())}; at batch 8 they span "
            f"{float(batched[tied].min()):.3f}-{float(batched[tied].max()):.3f}, {int((batched[tied] > 0.5).sum())} of them above 0.5"
        )
    print(f"  above 0.5 (the paper rule): batch 1 {int((alone > 0.5).sum())}, batch 8 {int((batched > 0.5).sum())}; top-100 overlap {top}")
    print(f"  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
