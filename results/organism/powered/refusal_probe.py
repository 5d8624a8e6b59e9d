"""Do the answer-scope glasses dampen refusal neurons? (issue #22: why answer-scope SGM cut benign refusals)

For the organism's own vanilla answers to the benign items (the study's full sweep cell under ``out/``:
the committed cells keep no answer text), every answer is teacher-forced
after its request, pooled over the answer's tokens exactly as the answer scope pools (max, right padded),
and labelled by the refusal detector (1 = the answer refuses). Each neuron then gets a *refusal AUROC*
(refusals vs compliant answers). The script reports, for each set of neurons the study's rows dampen, how
far that set's refusal AUROCs sit above 0.5, next to the same count of neurons the placebo dampens.

An approximation to state with the numbers: the probe shows each item's image as the typographic render
of its ``image_text`` (the cell keeps the text, not the image bytes).

Usage (repo root; about 2 minutes on one CPU core):
  OMP_NUM_THREADS=1 .venv/bin/python results/organism/powered/refusal_probe.py \
      --cell out/organism/powered/cells/organism__vanilla__mm_toxic_qa_benign__25f995698ba8.json \
      --glasses out/organism/powered/glasses/answer.safetensors out/organism/powered/glasses/request.safetensors \
      --out results/organism/powered/refusal_probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.metrics.refusal_phrases import is_refusal
from mmtoxicqa.modeling.loading import load_model, resolve_pretrained
from mmtoxicqa.sgm.api import fit_glasses
from mmtoxicqa.sgm.calibration import iter_batches
from mmtoxicqa.sgm.glasses import Glasses, selection_mask


def refusal_items(cell: Path) -> list[dict]:
    record = json.loads(cell.read_text())
    if not any("answer" in row for row in record["items"].values()):
        raise SystemExit(f"{cell} keeps no answers (a committed, text-free cell); pass the study's cell under out/")
    items = []
    for item_id, row in sorted(record["items"].items()):
        answer = " ".join(str(row.get("answer") or "").split())
        if not answer:
            continue
        items.append(
            {
                "id": item_id,
                "question": row["question"],
                "image": None,
                "image_text": row.get("image_text") or None,
                "reply": answer,
                "toxic_label": int(is_refusal(row.get("answer"))),  # here: 1 = the answer refuses
            }
        )
    return items


def describe(refusal: torch.Tensor, mask: torch.Tensor) -> dict:
    chosen = refusal[mask]
    if chosen.numel() == 0:
        return {"neurons": 0}
    return {
        "neurons": int(mask.sum()),
        "mean_refusal_auroc": round(float(chosen.mean()), 4),
        "share_above_0.5": round(float((chosen > 0.5).double().mean()), 4),
        "share_above_0.6": round(float((chosen > 0.6).double().mean()), 4),
        "share_below_0.4": round(float((chosen < 0.4).double().mean()), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--cell", required=True, type=Path, help="a sweep cell with the model's own answers (vanilla)")
    parser.add_argument("--glasses", nargs="+", required=True, type=Path, help="glasses files to describe")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    items = refusal_items(args.cell)
    labels = [i["toxic_label"] for i in items]
    loaded = load_model(resolve_pretrained(args.model), device="cpu", dtype="float32")
    probe = fit_glasses(
        loaded,
        iter_batches(loaded, items, args.batch_size, tokens="answer"),
        labels,
        total=(len(items) + args.batch_size - 1) // args.batch_size,
        placebo_seed=None,
    )
    refusal = probe.auroc_all().double()
    out = {
        "cell": str(args.cell),
        "model": args.model,
        "answers": len(items),
        "refusals": int(sum(labels)),
        "refusal_auroc_max": round(float(refusal.max()), 4),
        "refusal_auroc_min": round(float(refusal.min()), 4),
        "all_neurons": describe(refusal, torch.ones_like(refusal, dtype=torch.bool)),
        "glasses": {},
    }
    for path in args.glasses:
        glasses = Glasses.load(path, loaded.model)
        toxic = glasses.auroc_all().double()
        if toxic.numel() != refusal.numel():
            raise SystemExit(f"{path}: {toxic.numel()} neurons, the probe {refusal.numel()}; it reads the down_proj input site only")
        sizes = glasses.meta.get("class_sizes")
        fdr = selection_mask(toxic, {"fdr": 0.05}, sizes)
        placebo = glasses.placebo()
        placebo_fdr = glasses.with_options(select="fdr=0.05").placebo()
        out["glasses"][path.stem] = {
            "file": str(path),
            "spearman_toxic_vs_refusal_auroc": round(float(spearmanr(toxic.numpy(), refusal.numpy()).statistic), 4),  # ties averaged
            "paper_rule": describe(refusal, glasses.alpha_all() < 1),
            "placebo": describe(refusal, placebo.alpha_all() < 1),
            "fdr_0.05": describe(refusal, fdr),
            "placebo_fdr": describe(refusal, placebo_fdr.alpha_all() < 1),
            "top_200": describe(refusal, torch.zeros_like(fdr).index_fill_(0, torch.topk(toxic, 200).indices, True)),
        }
    write_json_atomic(args.out, out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
