"""`mmtoxicqa export` cost on the embedded model: time and peak memory vs checkpoint size, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_export.py [--reps 3] [--shard-mb 100]

The embedded SmolLM2-135M LLaVA (``mmtoxicqa build-model``) is exported in three layouts: its own
float32 single file, the same resharded into ``--shard-mb`` MB shards, and a bfloat16 copy (half the
bytes). The glasses are built with ``Glasses.from_auroc`` for every one of the 30 decoder layers from
seeded uniform AUROCs at strength 1 (about half the neurons dampened, every down_proj rewritten):
the work depends on how many tensors change, not on how the AUROCs were obtained.

Per layout, four conditions, each in a fresh child process (imports and the meta model built before
the clock and the memory high-water mark start, so both cover the operation alone):

* ``copy``: a plain copy of the same files (``shutil.copyfile``), the floor any export pays;
* ``export``: ``export_checkpoint`` (byte copy per shard + the changed tensors rewritten in row blocks);
* ``shard_in_ram``: per shard, ``safetensors.torch.load_file`` + fold + ``save_file`` (one shard in memory);
* ``whole_in_ram``: ``from_pretrained`` + ``wear(mode="fused")`` + ``save_pretrained`` (the whole model in memory).

Peak memory is the kernel's resident high-water mark (VmHWM, reset through ``/proc/self/clear_refs``
just before the operation) minus the resident size at that moment. Repetitions rotate the condition
order; each figure is the median over repetitions. A benchmark, not a test: it never fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONDITIONS = ("copy", "export", "shard_in_ram", "whole_in_ram")
MIB = 1 << 20


# -- child: one condition, measured ----------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(kind: str, src: str, dst: str, glasses: str) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from mmtoxicqa.methods import export
    from mmtoxicqa.sgm import Glasses, wear
    from mmtoxicqa.sgm.wear import scale_neurons

    src_path, dst_path = Path(src), Path(dst)
    net = export.empty_model(src_path)  # warm: transformers' model modules imported, config parsed
    g = Glasses.load(glasses)
    if kind == "shard_in_ram":
        folds = export.plan_folds(g, net, export.read_checkpoint(src_path))  # planning is not what this condition measures
    del net

    def copy():
        dst_path.mkdir()
        for rel in export.source_files(src_path):
            shutil.copyfile(src_path / rel, dst_path / rel)

    def do_export():
        export.export_checkpoint(src, glasses, dst)

    def shard_in_ram():
        dst_path.mkdir()
        by_file = {}
        for fold in folds:
            by_file.setdefault(fold.info.file, []).append(fold)
        for rel in export.source_files(src_path):
            if not rel.endswith(".safetensors"):
                shutil.copyfile(src_path / rel, dst_path / rel)
                continue
            tensors = load_file(src_path / rel)
            for fold in by_file.get(rel, []):
                tensors[fold.key] = scale_neurons(tensors[fold.key], fold.alpha, fold.dim)
            save_file(tensors, str(dst_path / rel), metadata={"format": "pt"})
            del tensors

    def whole_in_ram():
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(src_path, dtype="auto")
        with wear(model, g, mode="fused"):
            model.save_pretrained(dst_path, max_shard_size=_max_shard(src_path))
        for rel in export.source_files(src_path):
            if not rel.endswith(".safetensors") and not (dst_path / rel).exists():
                shutil.copyfile(src_path / rel, dst_path / rel)

    run = {"copy": copy, "export": do_export, "shard_in_ram": shard_in_ram, "whole_in_ram": whole_in_ram}[kind]
    torch.set_num_threads(1)
    exact = _reset_peak()
    before = _status("VmRSS")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    return {"seconds": seconds, "rss_before": before, "rss_peak": peak, "exact_peak": exact}


def _max_shard(folder: Path) -> str:
    sizes = [p.stat().st_size for p in folder.glob("*.safetensors")]
    return f"{max(sizes) // 1000 + 1}KB" if len(sizes) > 1 else "100GB"


# -- parent ----------------------------------------------------------------------------------------


def make_layouts(work: Path, shard_mb: int) -> dict[str, Path]:
    """The embedded model as it is (float32, one file), resharded, and in bfloat16."""
    import torch
    from transformers import AutoModelForImageTextToText

    from mmtoxicqa.modeling.embedded import embedded_model_dir

    source = embedded_model_dir()
    layouts = {"fp32, 1 file": source}
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    sharded, bf16 = work / "fp32_sharded", work / "bf16"
    for folder, dtype, shard in ((sharded, torch.float32, f"{shard_mb}MB"), (bf16, torch.bfloat16, "100GB")):
        model.to(dtype).save_pretrained(folder, max_shard_size=shard)
        for rel in ("chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
            if (source / rel).is_file():
                shutil.copyfile(source / rel, folder / rel)
    layouts[f"fp32, {shard_mb} MB shards"] = sharded
    layouts["bf16, 1 file"] = bf16
    return layouts


def make_glasses(source: Path, path: Path) -> tuple[int, int]:
    import torch

    from mmtoxicqa.methods.export import empty_model
    from mmtoxicqa.sgm import Glasses, discover_sites, find_decoder_layers

    net = empty_model(source)
    sites = discover_sites(net)
    auroc = torch.rand(sum(s.width for s in sites), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    meta = {"model_type": net.config.model_type, "decoder_layers": len(find_decoder_layers(net)[1]), "model_id": "embedded"}
    glasses = Glasses.from_auroc(sites, auroc, strength=1.0, meta=meta)
    glasses.save(path)
    return len(sites), glasses.num_dampened


def run_child(kind: str, src: Path, dst: Path, glasses: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", kind, str(src), str(dst), str(glasses)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} on {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> str:
    """How many tensors of two checkpoints are equal, by key, whatever their sharding."""
    import torch
    from safetensors import safe_open

    def index(folder):
        out = {}
        for path in folder.glob("*.safetensors"):
            with safe_open(str(path), framework="pt") as handle:
                out.update({k: path for k in handle.keys()})
        return out

    left, right = index(a), index(b)
    common = sorted(set(left) & set(right))
    equal = 0
    for key in common:
        with safe_open(str(left[key]), framework="pt") as x, safe_open(str(right[key]), framework="pt") as y:
            equal += bool(torch.equal(x.get_tensor(key), y.get_tensor(key)))
    extra = "" if len(common) == len(left) == len(right) else f" ({len(left)} vs {len(right)} keys)"
    return f"{equal}/{len(common)} tensors equal{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--child", nargs=4, metavar=("KIND", "SRC", "DST", "GLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        layouts = make_layouts(work, args.shard_mb)
        glasses = work / "glasses.safetensors"
        layers, dampened = make_glasses(next(iter(layouts.values())), glasses)
        print(
            f"embedded model, glasses from_auroc on all {layers} decoder layers ({dampened} neurons dampened); "
            f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread per child, {args.reps} repetitions per condition\n"
        )
        rows = []
        for name, src in layouts.items():
            shards = [p.stat().st_size for p in src.glob("*.safetensors")]
            times = {k: [] for k in CONDITIONS}
            rss = {k: [] for k in CONDITIONS}
            exact, compared = True, None
            for rep in range(args.reps):
                order = CONDITIONS[rep % len(CONDITIONS) :] + CONDITIONS[: rep % len(CONDITIONS)]
                for kind in order:
                    dst = work / f"out_{kind}"
                    shutil.rmtree(dst, ignore_errors=True)
                    result = run_child(kind, src, dst, glasses)
                    times[kind].append(result["seconds"])
                    rss[kind].append(result["rss_peak"] - result["rss_before"])
                    exact &= result["exact_peak"]
                if compared is None:  # once: the export against the in-memory fused model saved by transformers
                    compared = same_tensors(work / "out_export", work / "out_whole_in_ram")
                for kind in CONDITIONS:
                    shutil.rmtree(work / f"out_{kind}", ignore_errors=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            mem = {k: statistics.median(v) for k, v in rss.items()}
            rows.append((name, sum(shards), len(shards), max(shards), med, mem, compared, exact))

        header = (
            f"{'layout':<20} {'size MiB':>8} {'files':>5} {'largest':>7} {'copy s':>7} {'export s':>8} {'exp/copy':>8} "
            f"{'export +RSS':>11} {'/largest':>8} {'shard-in-RAM +RSS':>17} {'whole-in-RAM +RSS':>17} {'whole s':>7}  export == whole-in-RAM"
        )
        print(header)
        print("-" * len(header))
        for name, size, files, largest, med, mem, compared, exact in rows:
            print(
                f"{name:<20} {size / MIB:>8.1f} {files:>5} {largest / MIB:>7.1f} {med['copy']:>7.2f} {med['export']:>8.2f} "
                f"{med['export'] / med['copy']:>8.2f} {mem['export'] / MIB:>7.1f} MiB {mem['export'] / largest:>8.3f} "
                f"{mem['shard_in_ram'] / MIB:>13.1f} MiB {mem['whole_in_ram'] / MIB:>13.1f} MiB {med['whole_in_ram']:>7.2f}  "
                f"{compared}" + ("" if exact else "  (VmHWM not reset: clear_refs unavailable, peak includes start-up)")
            )
        print(
            "\n+RSS: peak resident memory during the operation minus resident memory just before it (median). "
            "/largest: export's +RSS over the largest shard. copy s / export s / whole s: wall seconds (median)."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
