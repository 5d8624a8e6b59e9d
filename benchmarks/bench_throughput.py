"""Throughput (#26 item 4): items/s of ``mmtox`` at batch 1 and batch 8 against lmms-eval's own ``llava_hf``,
on the same exported embedded model and the same items, in one run.

    PYTHONPATH=.:/tmp/decord-side OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_throughput.py [--items 32] [--reps 3]

What it does:

1. ``mmtoxicqa export`` (the CLI) writes the embedded SmolLM2-135M LLaVA with SGM glasses folded in as a
   LLaVA-format folder that transformers and lmms-eval's ``llava_hf`` load as is. The glasses are seeded
   random AUROCs on all 30 decoder layers (``Glasses.from_auroc``): throughput does not depend on which
   neurons are dampened, and no calibration pass is needed.
2. The task's requests are built by lmms-eval itself (``TaskManager``, ``get_task_dict(..., "chat")``,
   ``build_all_requests(limit=N)``): the first N items of ``mm_toxic_qa_standard`` (its fixed shuffle),
   greedy, ``max_new_tokens`` set to ``--new-tokens`` (the demo's 64) as ``--gen_kwargs`` would.
3. Conditions, each a ``generate_until`` call on fresh copies of the same requests, repetitions interleaved
   with the order rotated: ``mmtox`` batch 1; ``mmtox`` batch 8 (length-sorted batches, this change);
   ``mmtox`` batch 8 in doc order (the batching before it: the same code with every length equal);
   ``llava_hf`` (lmms-eval 0.7.3's chat class, which asserts batch size 1) with ``device=cpu,device_map=cpu,dtype=float32``.
   One model per wrapper: the three ``mmtox`` conditions share one loaded model. Each figure is the median
   over repetitions; each ratio is printed both as the ratio of medians and as the median of the ratios
   within each repetition (robust to a load that drifts between repetitions), and as the ratio of this process's
   CPU seconds (the work done, whatever else shares the cores).

``llava_hf`` imports ``decord`` at module level (for videos) even for image tasks. decord is not a project
dependency: install it beside the venv (``pip install --no-deps --target /tmp/decord-side decord``) and put
that folder on PYTHONPATH, or pass ``--decord DIR``; without it the ``llava_hf`` rows say why they are absent.
A benchmark, not a test: it never fails on a number.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def make_export(work: Path) -> Path:
    """The embedded model with seeded random glasses folded in, written by the ``mmtoxicqa export`` command."""
    import torch

    from mmtoxicqa.methods.export import empty_model
    from mmtoxicqa.modeling.embedded import embedded_model_dir
    from mmtoxicqa.sgm import Glasses, discover_sites, find_decoder_layers

    source = embedded_model_dir()
    net = empty_model(source)
    sites = discover_sites(net)
    auroc = torch.rand(sum(s.width for s in sites), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    meta = {"model_type": net.config.model_type, "decoder_layers": len(find_decoder_layers(net)[1]), "model_id": "embedded"}
    glasses = work / "glasses.safetensors"
    Glasses.from_auroc(sites, auroc, strength=1.0, meta=meta).save(glasses)
    out = work / "embedded-sgm-export"
    command = [sys.executable, "-m", "mmtoxicqa.cli", "export", "--glasses", str(glasses), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"mmtoxicqa export failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return out


def build_requests(task_name: str, limit: int, new_tokens: int):
    """lmms-eval's own chat requests for the first ``limit`` docs of ``task_name``, and the task's dataset."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    task_manager = TaskManager("WARNING", include_path=str(ROOT / "tasks"))
    task = get_task_dict([task_name], task_manager, "chat")[task_name]
    task.set_config(key="generation_kwargs", value={"max_new_tokens": new_tokens}, update=True)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task.instances, task.dataset


def fresh(instances):
    """Copies of the requests: lmms-eval's llava_hf writes into a request's gen_kwargs (pops until, adds image_sizes)."""
    from lmms_eval.api.instance import Instance

    return [
        Instance(
            request_type=r.request_type,
            arguments=(r.args[0], r.args[1], copy.deepcopy(r.args[2]), *r.args[3:]),
            idx=r.idx,
            metadata=dict(r.metadata),
        )
        for r in instances
    ]


def padding_share(lm, instances) -> float:
    """Padded positions / all positions over the batches ``lm`` forms for ``instances`` (prompts only)."""
    from mmtoxicqa.modeling.loading import build_inputs

    padded = total = 0
    for batch in lm.batches(fresh(instances))[1]:
        conversations = [lm.conversation_for(a[1], a[3], a[4], a[5]) for a in batch]
        mask = build_inputs(lm.loaded, conversations)["attention_mask"]
        padded += int((mask == 0).sum())
        total += mask.numel()
    return padded / max(total, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--task", default="mm_toxic_qa_standard")
    parser.add_argument("--decord", default=None, help="folder holding decord (added to sys.path) for llava_hf")
    parser.add_argument("--skip-llava-hf", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MMTOXICQA_JUDGE", "refusal")  # the task's judge health check at load: the cheap offline one
    if args.decord:
        sys.path.insert(0, args.decord)

    import torch
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    from mmtoxicqa.model_wrappers.mmtox import MMTox

    threads = torch.get_num_threads()
    print(
        f"bench_throughput: {args.items} items of {args.task}, greedy, max_new_tokens={args.new_tokens}, {args.reps} interleaved repetitions; "
        f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs, load average {load_average()} at start",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    export = make_export(work)
    instances, dataset = build_requests(args.task, args.items, args.new_tokens)
    print(f"export: {export}; {len(instances)} requests", flush=True)

    lm = MMTox(pretrained=str(export), device="cpu", dtype="float32", batch_size=args.batch)  # one model for every mmtox condition
    lm.task_dict = {args.task: dataset}

    @contextlib.contextmanager
    def doc_order():
        """The batching before length sorting: every request the same length, so each group keeps doc order."""
        lm.prompt_size = lambda request_args: (0, 0)
        try:
            yield
        finally:
            del lm.prompt_size

    def mmtox(batch: int, sort: bool = True):
        def run(requests):
            lm.batch_size_per_gpu = batch
            with contextlib.nullcontext() if sort else doc_order():
                return [r.text for r in lm.generate_until(requests)]

        return run

    start = time.perf_counter()
    sizes = [lm.prompt_size(r.args) for r in instances]
    key_seconds = time.perf_counter() - start
    text_tokens = [t for _, t in sizes]
    lm.batch_size_per_gpu = args.batch
    pad_sorted = padding_share(lm, instances)
    with doc_order():
        pad_doc = padding_share(lm, instances)

    conditions = {
        "mmtox batch 1": mmtox(1),
        f"mmtox batch {args.batch}": mmtox(args.batch),
        f"mmtox batch {args.batch}, doc order": mmtox(args.batch, sort=False),
    }
    why_not = None
    if not args.skip_llava_hf:
        try:
            from lmms_eval.models import get_model

            cls = get_model("llava_hf")
            hf = cls(pretrained=str(export), device="cpu", device_map="cpu", dtype="float32", batch_size=1)
            hf.task_dict = {args.task: dataset}
            conditions["llava_hf (lmms-eval, batch 1)"] = lambda requests: [
                r.text if hasattr(r, "text") else str(r) for r in hf.generate_until(requests)
            ]
        except Exception as exc:  # noqa: BLE001  (report why, keep the mmtox rows)
            why_not = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"llava_hf not run: {why_not}", flush=True)
    else:
        why_not = "--skip-llava-hf"

    names = list(conditions)
    seconds = {name: [] for name in names}
    cpu = {name: [] for name in names}  # this process's CPU seconds: the work done, less sensitive to other jobs on the cores
    answers = {}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            requests = fresh(instances)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = conditions[name](requests)
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            answers.setdefault(name, [a.strip() for a in out])
            print(
                f"  rep {rep + 1} {name}: {seconds[name][-1]:.1f} s ({len(instances) / seconds[name][-1]:.3f} items/s), "
                f"{cpu[name][-1]:.1f} CPU s, load {load_average()}",
                flush=True,
            )

    reference = answers["mmtox batch 1"]
    # a batch decodes until its longest answer ends: the steps its finished rows still take (from batch-1 answer lengths, + end token)
    lengths = {
        a[3]: min(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1, args.new_tokens)
        for a, t in zip((r.args for r in instances), reference)
    }

    def idle_share(sort: bool) -> float:
        lm.batch_size_per_gpu = args.batch
        with contextlib.nullcontext() if sort else doc_order():
            batches = [[a[3] for a in batch] for batch in lm.batches(fresh(instances))[1]]
        steps = sum(max(lengths[d] for d in batch) * len(batch) for batch in batches)
        return 1 - sum(lengths.values()) / steps

    rate = {name: len(instances) / statistics.median(values) for name, values in seconds.items()}
    answer_tokens = sum(len(lm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in reference)
    print()
    print(f"{'condition':38s} {'items/s':>8s} {'median s':>9s} {'min-max s':>13s} {'items/CPU-s':>12s}  answers == mmtox batch 1")
    for name in names:
        values = seconds[name]
        same = sum(a == b for a, b in zip(answers[name], reference))
        per_cpu = len(instances) / statistics.median(cpu[name])
        print(
            f"{name:38s} {rate[name]:8.3f} {statistics.median(values):9.1f} {min(values):6.1f}-{max(values):<6.1f} {per_cpu:12.3f}  "
            f"{same}/{len(reference)}"
        )
    if why_not:
        print(f"{'llava_hf (lmms-eval, batch 1)':38s} {'-':>8s}  not run: {why_not}")
    b, hf = f"mmtox batch {args.batch}", "llava_hf (lmms-eval, batch 1)"
    ratios = [
        (f"{b} / mmtox batch 1", b, "mmtox batch 1", ">= 3"),
        (f"{b} / llava_hf", b, hf, ">= 1"),
        ("mmtox batch 1 / llava_hf", "mmtox batch 1", hf, "(info: the same work at batch 1)"),
        (f"{b} length-sorted / doc order", b, f"{b}, doc order", "(info: what sorting adds)"),
    ]
    print()
    print(f"{'ratio of items/s':44s} {'medians':>8s} {'paired':>7s}  {'per repetition':22s} {'CPU time':>8s}  target")
    for label, top, bottom, target in ratios:
        if top not in seconds or bottom not in seconds:
            continue
        paired = [low / high for high, low in zip(seconds[top], seconds[bottom])]  # the same repetition: time of bottom / time of top
        by_cpu = statistics.median(low / high for high, low in zip(cpu[top], cpu[bottom]))
        each = ", ".join(f"{r:.2f}" for r in paired)
        print(f"{label:44s} {rate[top] / rate[bottom]:8.2f} {statistics.median(paired):7.2f}  {each:22s} {by_cpu:8.2f}  {target}")
    print(
        "medians: ratio of the conditions' median items/s; paired: median over repetitions of the ratio within each repetition; "
        "CPU time: the paired ratio of this process's CPU seconds (the work, whatever else runs on the cores)"
    )
    print()
    print(
        f"prompts: {min(text_tokens)}-{max(text_tokens)} text tokens (median {statistics.median(text_tokens):.0f}) + "
        f"{sizes[0][0]} image ({lm.model.config.image_seq_length} tokens) each; padding of the batch-{args.batch} prompts: "
        f"{pad_sorted:.1%} length-sorted, {pad_doc:.1%} in doc order"
    )
    print(
        f"length key (prompt_size) for {len(instances)} requests: {key_seconds:.2f} s ({key_seconds / len(instances) * 1000:.0f} ms each); "
        f"mmtox batch 1 answers: {answer_tokens} tokens in all ({answer_tokens / len(reference):.1f} per item)"
    )
    print(
        f"decode steps of batch-{args.batch} rows whose answer had ended (batches run to their longest answer): "
        f"{idle_share(True):.1%} length-sorted, {idle_share(False):.1%} in doc order"
    )
    print(f"load average at end: {load_average()}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
