"""Peak memory of SGM calibration on real model configurations, against the floor (weights + pooled matrix).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_calibration_memory.py \
        [--models llava-1.5-7b,qwen2-vl-7b] [--depths 1,2,4] [--items 4] [--weights-dtype float32] \
        [--auroc-models llava-1.5-7b] [--auroc-dtypes float32,float16,bfloat16] [--compare-old]

No download: every model is built from its public configuration (written out below from the model
cards' config.json: hidden and intermediate sizes, layers, heads, vocabulary, vision tower) with
random weights. Three parts, each condition in a fresh child process whose peak is the
kernel's resident high-water mark (VmHWM, reset through /proc/self/clear_refs just before the
measured step):

1. **Calibration, measured at reduced depth.** The 7B models at ``--depths`` decoder layers (the vision
   tower, projector, embeddings and LM head whole), weights in ``--weights-dtype`` (default float32:
   the CPU this was written on multiplies bfloat16 matrices at 0.1 GFLOP/s against 42 for float32, so a
   bfloat16 forward of one 576-image-token item takes minutes), ``fit_glasses`` on ``--items`` short items (one
   image each, about 20 text tokens; LLaVA 336x336 = 576 image tokens, Qwen2-VL 224x224 = 64) in one
   batch, pooled matrix in float32, AUROCs on the CPU. Printed per depth: weights, pooled matrix, the
   resident size before calibration and the peak during it, and peak / (weights + pooled matrix).
   Then the peak's least-squares line over depth is extrapolated to the real depth (32 / 28 layers)
   and set against that depth's exact floor. A full-depth 7B does not fit beside the other jobs of
   the 23 GiB machine this was run on (LLaVA-1.5-7B is 28.2 GB in float32, 14.1 GB in bfloat16;
   Qwen2-VL-7B 33.2 / 16.6 GB).
2. **The AUROC step at N = 940 (the calibration split) for the real widths**, measured: a pooled
   matrix of the model's full neuron count in each ``--auroc-dtypes`` (random values, 495 toxic /
   445 non-toxic as the split), rated with the real and the placebo labels on the CPU, default blocks.
   Printed: matrix size, peak above it, the predicted block working set, peak / matrix.
   ``--compare-old``: the same with the AUROC code before this change (commit a606231, which also made
   an N x M NaN mask and, on a GPU, a full copy of the matrix).
3. **Arithmetic** for LLaVA-1.5-7B / 13B, LLaVA-NeXT-34B, Qwen2-VL-7B / 72B: weights in bfloat16
   (parameters counted on the meta device from the same configurations), neurons, the pooled matrix
   at N = 940 per dtype, and one AUROC block's working set (``sgm.auroc.block_bytes``).

A benchmark, not a test: it never fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
N_SPLIT, N_TOXIC = 940, 495  # the calibration split's size and toxic count
OLD_AUROC_COMMIT = "a606231"

CLIP_L_336 = dict(  # openai/clip-vit-large-patch14-336, the vision tower of LLaVA-1.5 and LLaVA-NeXT
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
QWEN2_VL_VISION = dict(
    depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3
)

# Public config.json facts (hidden, intermediate, layers, heads, key/value heads, vocabulary) of each model card.
MODELS = {
    "llava-1.5-7b": dict(  # llava-hf/llava-1.5-7b-hf (Vicuna-7B)
        kind="llava",
        text=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
        ),
        image_token=32000,
    ),
    "llava-1.5-13b": dict(  # llava-hf/llava-1.5-13b-hf (Vicuna-13B)
        kind="llava",
        text=dict(
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            vocab_size=32064,
        ),
        image_token=32000,
    ),
    "llava-next-34b": dict(  # llava-hf/llava-v1.6-34b-hf (Nous-Hermes-2-Yi-34B)
        kind="llava_next",
        text=dict(
            hidden_size=7168, intermediate_size=20480, num_hidden_layers=60, num_attention_heads=56, num_key_value_heads=8, vocab_size=64064
        ),
        image_token=64000,
    ),
    "qwen2-vl-7b": dict(  # Qwen/Qwen2-VL-7B-Instruct
        kind="qwen2_vl",
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),
    ),
    "qwen2-vl-72b": dict(  # Qwen/Qwen2-VL-72B-Instruct
        kind="qwen2_vl",
        text=dict(
            hidden_size=8192,
            intermediate_size=29568,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=152064,
        ),
    ),
}


def build_config(name: str, layers: int | None = None):
    import transformers as T

    spec = MODELS[name]
    text = dict(spec["text"], max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if layers is not None:
        text["num_hidden_layers"] = layers
    if spec["kind"] == "llava":
        return T.LlavaConfig(
            vision_config=T.CLIPVisionConfig(**CLIP_L_336), text_config=T.LlamaConfig(**text), image_token_index=spec["image_token"]
        )
    if spec["kind"] == "llava_next":
        return T.LlavaNextConfig(
            vision_config=T.CLIPVisionConfig(**CLIP_L_336),
            text_config=T.LlamaConfig(**text),
            image_token_index=spec["image_token"],
            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        )
    text.update(
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    )
    return T.Qwen2VLConfig(
        text_config=text,
        vision_config=dict(QWEN2_VL_VISION, hidden_size=text["hidden_size"]),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )


def model_class(name: str):
    import transformers as T

    return {
        "llava": T.LlavaForConditionalGeneration,
        "llava_next": T.LlavaNextForConditionalGeneration,
        "qwen2_vl": T.Qwen2VLForConditionalGeneration,
    }[MODELS[name]["kind"]]


def neurons(name: str, layers: int | None = None) -> int:
    text = MODELS[name]["text"]
    return (text["num_hidden_layers"] if layers is None else layers) * text["intermediate_size"]


def count_parameters(name: str, layers: int | None = None) -> int:
    """Exact parameter count of the configuration, built on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        model = model_class(name)(build_config(name, layers))
    return sum(p.numel() for p in model.parameters())


# -- measurement helpers -----------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current resident size (Linux >= 4.0)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _batch(name: str, config, items: int):
    """``items`` short single-image inputs in one left-padded batch, shaped as the model's processor makes them."""
    import torch

    g = torch.Generator().manual_seed(0)
    kind = MODELS[name]["kind"]
    vocab = 32000 if kind == "llava" else 30000
    rows, extra = [], {}
    for i in range(items):
        before = torch.randint(3, vocab, (6,), generator=g).tolist()
        after = torch.randint(3, vocab, (12 + 2 * i,), generator=g).tolist()  # 12-18 words: lengths differ, so there is padding
        if kind == "llava":
            image = [config.image_token_index] * 576  # (336 / 14)^2 patches, CLS dropped
            rows.append([1, *before, *image, *after])
        else:
            image = [config.vision_start_token_id, *[config.image_token_id] * 64, config.vision_end_token_id]  # 16x16 patches, 2x2 merged
            rows.append([*before, *image, *after])
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(items, width, dtype=torch.long)
    attention = torch.zeros(items, width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention[i, width - len(row) :] = 1
    if kind == "llava":
        extra["pixel_values"] = torch.randn(items, 3, 336, 336, generator=g).to(torch.bfloat16)
    else:
        extra["pixel_values"] = torch.randn(items * 256, 3 * 2 * 14 * 14, generator=g).to(torch.bfloat16)
        extra["image_grid_thw"] = torch.tensor([[1, 16, 16]] * items)
        extra["mm_token_type_ids"] = (input_ids == config.image_token_id).long()  # 0 text, 1 image, as the processor returns it
    return {"input_ids": input_ids, "attention_mask": attention, **extra}


def child_calibrate(name: str, layers: int, items: int, weights_dtype: str) -> dict:
    import torch

    from mmtoxicqa.sgm import fit_glasses

    dtype = getattr(torch, weights_dtype)
    torch.manual_seed(0)
    config = build_config(name, layers)
    started = time.perf_counter()
    model = model_class(name)._from_config(config, dtype=dtype).eval()
    built = time.perf_counter() - started
    batch = _batch(name, config, items)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    labels = [i % 2 for i in range(items)]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    glasses = fit_glasses(model, [batch], labels, dtype=torch.float32, auroc_device="cpu", progress=False, min_per_class=1)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    return {
        "model": name,
        "layers": layers,
        "items": items,
        "tokens": int(batch["input_ids"].shape[1]),
        "weights": weights,
        "weights_dtype": weights_dtype,
        "pooled": items * glasses.num_neurons * 4,
        "rss_before": before,
        "peak": peak,
        "seconds": round(seconds, 1),
        "build_seconds": round(built, 1),
    }


def child_auroc(name: str, dtype_name: str, old: bool) -> dict:
    import torch

    from mmtoxicqa.sgm.auroc import block_bytes, default_chunk_size
    from mmtoxicqa.sgm.memory import parse_pool_dtype

    dtype = parse_pool_dtype(dtype_name)
    m = neurons(name)
    g = torch.Generator().manual_seed(0)
    matrix = torch.empty(N_SPLIT, m, dtype=dtype)
    for start in range(0, N_SPLIT, 20):  # filled in row blocks: no float32 copy of the whole matrix
        matrix[start : start + 20] = torch.randn(min(20, N_SPLIT - start), m, generator=g).to(dtype)
    labels = torch.zeros(N_SPLIT, dtype=torch.long)
    labels[torch.randperm(N_SPLIT, generator=g)[:N_TOXIC]] = 1
    placebo = labels[torch.randperm(N_SPLIT, generator=torch.Generator().manual_seed(0))]
    if old:
        source = subprocess.run(
            ["git", "show", f"{OLD_AUROC_COMMIT}:mmtoxicqa/sgm/auroc.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        namespace: dict = {"__name__": "old_auroc"}
        exec(compile(source, "old_auroc.py", "exec"), namespace)

        def rate():  # the old fit_glasses: scores.to(auroc_device) (no copy on the CPU), then auroc() twice
            namespace["auroc"](matrix, labels)
            namespace["auroc"](matrix, placebo)

    else:
        from mmtoxicqa.sgm.auroc import aurocs

        def rate():
            aurocs(matrix, [labels, placebo], device="cpu")

    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    rate()
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    chunk = default_chunk_size(N_SPLIT)
    return {
        "model": name,
        "dtype": dtype_name,
        "code": f"before ({OLD_AUROC_COMMIT})" if old else "blocks",
        "matrix": matrix.numel() * matrix.element_size(),
        "rss_before": before,
        "peak": peak,
        "block_predicted": block_bytes(N_SPLIT, N_TOXIC, chunk, label_sets=2, stored_bytes=matrix.element_size()),
        "seconds": round(seconds, 1),
    }


def run_child(*args: str, need_bytes: int) -> dict | None:
    available = _mem_available()
    if available < need_bytes + 2 * GB:
        print(f"  skipped {' '.join(args)}: needs about {need_bytes / GB:.1f} GB + 2 GB margin, {available / GB:.1f} GB available")
        return None
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- parent ------------------------------------------------------------------------------------------


def part_calibration(models: list[str], depths: list[int], items: int, weights_dtype: str) -> None:
    size = 4 if weights_dtype == "float32" else 2
    print(
        f"\n## 1. Calibration on {items} short items, random {weights_dtype} weights, at reduced depth (peak RSS, one child process each)\n"
    )
    print(
        "| model | decoder layers | tokens/item | weights GB | pooled MB | RSS before GB | peak GB | peak / (weights + pooled) | calibration s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = {}
    for name in models:
        points = []
        for layers in depths:
            need = int(count_parameters(name, layers) * size * 1.25)
            row = run_child("calibrate", name, str(layers), str(items), weights_dtype, need_bytes=need)
            if row is None:
                continue
            points.append(row)
            floor = row["weights"] + row["pooled"]
            print(
                f"| {name} | {layers} | {row['tokens']} | {row['weights'] / GB:.2f} | {row['pooled'] / 1e6:.2f} | {row['rss_before'] / GB:.2f} | "
                f"{row['peak'] / GB:.2f} | {row['peak'] / floor:.3f} | {row['seconds']} |"
            )
        lines[name] = points
    print("\nExtrapolated to the real depth (least-squares line of the measured peaks over decoder layers; the floor is exact):\n")
    print(
        f"| model | layers | weights GB ({weights_dtype}) | pooled MB (these items) | floor GB | predicted peak GB | predicted peak / floor | peak per layer MB (fit) | per-layer weights MB (exact) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, points in lines.items():
        if len(points) < 2:
            continue
        xs = [p["layers"] for p in points]
        ys = [p["peak"] for p in points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        intercept = mean_y - slope * mean_x
        depth = MODELS[name]["text"]["num_hidden_layers"]
        weights = count_parameters(name) * size
        per_layer = (count_parameters(name, 2) - count_parameters(name, 1)) * size
        pooled = items * neurons(name) * 4
        predicted = intercept + slope * depth
        print(
            f"| {name} | {depth} | {weights / GB:.2f} | {pooled / 1e6:.2f} | {(weights + pooled) / GB:.2f} | {predicted / GB:.2f} | "
            f"{predicted / (weights + pooled):.3f} | {slope / 1e6:.0f} | {per_layer / 1e6:.0f} |"
        )


def part_auroc(models: list[str], dtypes: list[str], compare_old: bool) -> None:
    print(f"\n## 2. The AUROC step at N = {N_SPLIT} (real and placebo labels, CPU, default blocks), full neuron count\n")
    print("| model | neurons | pool dtype | code | matrix GB | peak above matrix MB | predicted block MB | peak / matrix | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in models:
        for dtype in dtypes:
            for old in (False, True) if compare_old else (False,):
                size = N_SPLIT * neurons(name) * {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
                row = run_child("auroc", name, dtype, "old" if old else "new", need_bytes=int(size * 2.2))
                if row is None:
                    continue
                above = row["peak"] - row["rss_before"]
                print(
                    f"| {name} | {neurons(name)} | {dtype} | {row['code']} | {row['matrix'] / GB:.3f} | {above / 1e6:.0f} | "
                    f"{row['block_predicted'] / 1e6:.0f} | {(row['matrix'] + above) / row['matrix']:.3f} | {row['seconds']} |"
                )


def part_arithmetic() -> None:
    from mmtoxicqa.sgm.auroc import block_bytes, default_chunk_size

    chunk = default_chunk_size(N_SPLIT)
    print(
        f"\n## 3. Arithmetic: weights (bfloat16), pooled matrix at N = {N_SPLIT}, one AUROC block ({chunk} neurons, real + placebo labels)\n"
    )
    print(
        "| model | parameters | weights GB (bf16) | decoder layers x MLP width | neurons | pooled float32 GB | pooled fp16/bf16 GB | AUROC block MB (f32 / 16-bit) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("llava-1.5-7b", "qwen2-vl-7b", "llava-1.5-13b", "llava-next-34b", "qwen2-vl-72b"):
        params = count_parameters(name)
        text = MODELS[name]["text"]
        m = neurons(name)
        b32 = block_bytes(N_SPLIT, N_TOXIC, chunk, label_sets=2, stored_bytes=4)
        b16 = block_bytes(N_SPLIT, N_TOXIC, chunk, label_sets=2, stored_bytes=2)
        print(
            f"| {name} | {params / 1e9:.2f}B | {params * 2 / GB:.1f} | {text['num_hidden_layers']} x {text['intermediate_size']} | {m:,} | "
            f"{N_SPLIT * m * 4 / GB:.2f} | {N_SPLIT * m * 2 / GB:.2f} | {b32 / 1e6:.0f} / {b16 / 1e6:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="llava-1.5-7b,qwen2-vl-7b")
    parser.add_argument("--depths", default="1,2,4")
    parser.add_argument("--weights-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--auroc-models", default="llava-1.5-7b")
    parser.add_argument("--auroc-dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--compare-old", action="store_true")
    parser.add_argument("--parts", default="1,2,3")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "calibrate":
            row = child_calibrate(rest[0], int(rest[1]), int(rest[2]), rest[3])
        else:
            row = child_auroc(rest[0], rest[1], rest[2] == "old")
        print(json.dumps(row))
        return 0
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {_mem_available() / GB:.1f} GB available at start")
    parts = set(args.parts.split(","))
    if "1" in parts:
        part_calibration(args.models.split(","), [int(d) for d in args.depths.split(",")], args.items, args.weights_dtype)
    if "2" in parts:
        part_auroc(args.auroc_models.split(","), args.auroc_dtypes.split(","), args.compare_old)
    if "3" in parts:
        part_arithmetic()
    return 0


if __name__ == "__main__":
    sys.exit(main())
