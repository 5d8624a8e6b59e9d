"""How far float16 / bfloat16 storage of the pooled matrix moves the AUROCs, on the embedded model.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pool_dtype.py [--limit N] [--batch-sizes 8,1]

The embedded SmolLM2-135M LLaVA (float32, 30 layers x 1536 MLP neurons = 46,080) runs over the
calibration split (image + text, text tokens, max pooling: ``sgm``'s defaults), pooled in float32,
once per batch size (8 is ``calibrate``'s default; 1 has no padding: left padding shifts every
position, which moves activations by float32 rounding, and the AUROC ranks those differences too).
That matrix is then rounded to float16 and to bfloat16, which is exactly what ``--pool-dtype`` stores
(pooling runs in float32 and the finished rows are cast). For each dtype it prints, over all neurons:
the largest and the 99.9th-percentile |AUROC - AUROC_float32| for the real and the placebo labels,
how many neurons change side of 0.5 (dampened or not), the largest alpha change at strength 1, and
whether every neuron stays within the exact bound (merged toxic/non-toxic pairs) / (2 n1 n0).
A measurement, not a test: it never fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def merged_pairs_bound(pooled, rounded, labels, columns):
    """Per column: (cross-class pairs whose values differ in float32 but are equal after rounding) / (2 n1 n0)."""
    import torch

    y = labels.bool()
    n1, n0 = int(y.sum()), int((~y).sum())
    bounds = []
    for j in columns:
        a, b = pooled[y, j].double(), pooled[~y, j].double()
        ra, rb = rounded[y, j].double(), rounded[~y, j].double()
        merged = ((ra[:, None] == rb[None, :]) & (a[:, None] != b[None, :])).sum()
        bounds.append(float(merged) / (2.0 * n1 * n0))
    return torch.tensor(bounds, dtype=torch.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="calibration items (class-balanced subset; default: the whole split)")
    parser.add_argument("--batch-sizes", default="8,1", help="comma-separated calibration batch sizes, one collection each")
    parser.add_argument("--data", default=None, help="built data dir (default: $MMTOXICQA_DATA / the cache)")
    args = parser.parse_args()

    import torch

    from mmtoxicqa.modeling.discovery import discover_sites
    from mmtoxicqa.modeling.loading import load_model
    from mmtoxicqa.sgm.auroc import aurocs
    from mmtoxicqa.sgm.calibration import calibration_items, iter_batches
    from mmtoxicqa.sgm.collect import collect
    from mmtoxicqa.sgm.glasses import compute_alpha

    loaded = load_model(None, device="cpu")
    items = calibration_items(args.data, limit=args.limit)
    labels = torch.tensor([int(i["toxic_label"]) for i in items])
    sites = discover_sites(loaded.model)
    placebo = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    runs = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        started = time.perf_counter()
        responses = collect(
            loaded.model,
            iter_batches(loaded, items, batch_size),
            labels,
            sites=sites,
            progress=False,
            total=(len(items) + batch_size - 1) // batch_size,
        )
        pooled = responses.pooled
        relative = pooled.std(0) / pooled.abs().mean(0).clamp_min(1e-30)
        print(
            f"\nembedded model {loaded.model_id}, batch size {batch_size}: {len(items)} items ({int(labels.sum())} toxic, "
            f"{int((1 - labels).sum())} non-toxic), {pooled.shape[1]} neurons, collected in {time.perf_counter() - started:.0f}s; "
            f"|max| {float(pooled.abs().max()):.3g}; columns equal on every item: {int((pooled == pooled[0]).all(0).sum())}, "
            f"with sd/mean|x| < 1e-5: {int((relative < 1e-5).sum())}, < 2^-11 (float16's step): {int((relative < 2**-11).sum())}"
        )
        real32, placebo32 = aurocs(pooled, [labels, placebo], device="cpu")
        runs[batch_size] = (pooled, real32)
        alpha32 = compute_alpha(real32)
        print(
            f"float32: {int((real32 > 0.5).sum())} neurons with AUROC > 0.5 (dampened by the paper's rule), {int((real32 == 0.5).sum())} exactly 0.5"
        )
        print(
            "| pool dtype | matrix MB | max abs dAUROC | 99.9th pct | 99th pct | neurons moved > 0.01 | max abs dAUROC (placebo) "
            "| side of 0.5 changed | max abs dalpha | within bound |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for dtype in (torch.float16, torch.bfloat16):
            rounded = pooled.to(dtype)
            real, plac = aurocs(rounded, [labels, placebo], device="cpu")
            diff = (real - real32).abs()
            side = int(((real > 0.5) != (real32 > 0.5)).sum())
            dalpha = float((compute_alpha(real) - alpha32).abs().max())
            worst = torch.topk(diff, k=min(200, diff.numel())).indices.tolist()  # the exact bound, on the most-moved neurons
            bound = merged_pairs_bound(pooled, rounded, labels, worst)
            within = bool((diff[worst] <= bound + 1e-12).all())
            print(
                f"| {str(dtype).removeprefix('torch.')} | {rounded.numel() * rounded.element_size() / 1e6:.1f} | {float(diff.max()):.2e} | "
                f"{float(torch.quantile(diff, 0.999)):.2e} | {float(torch.quantile(diff, 0.99)):.2e} | {int((diff > 0.01).sum())} | "
                f"{float((plac - placebo32).abs().max()):.2e} | {side} | {dalpha:.2e} | {'yes' if within else 'NO'} (200 most moved) |"
            )
    if 1 in runs and len(runs) > 1:
        flat, flat_auroc = runs[1]  # no padding: content-independent positions give equal values on every item
        constant = (flat == flat[0]).all(0)
        print(
            f"\nfloat32, batch size 1 vs padded batches: {int(constant.sum())} neurons are equal on every item at batch size 1 "
            "(AUROC exactly 0.5 there)"
        )
        for batch_size, (_pooled, real32) in runs.items():
            if batch_size == 1:
                continue
            diff = (real32 - flat_auroc).abs()
            top = torch.topk(real32, k=100).indices
            print(
                f"batch size {batch_size}: |AUROC - AUROC at batch 1| max {float(diff.max()):.3f}, 99th pct {float(torch.quantile(diff, 0.99)):.3f}, "
                f"{int((diff > 0.05).sum())} neurons moved > 0.05; those constant at batch 1 reach AUROC {float(real32[constant].min()):.3f}-"
                f"{float(real32[constant].max()):.3f} ({int((real32[constant] > 0.5).sum())} of {int(constant.sum())} above 0.5); "
                f"of the 100 highest AUROCs, {int(constant[top].sum())} are such neurons"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
