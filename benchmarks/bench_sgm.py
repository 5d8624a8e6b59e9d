"""SGM cost benchmark: every ratio is measured side by side in one run, repetitions interleaved.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sgm.py            # local random llama-like model
    PYTHONPATH=. .venv/bin/python benchmarks/bench_sgm.py --embedded # the embedded SmolLM2-LLaVA (if built)

Measures (targets from the design):

* generation time wearing glasses with hooks / fused vs vanilla   (<= 1.03 / <= 1.01)
* all-neuron AUROC (vectorised) vs a per-neuron sklearn loop      (>= 100x, identical values)
* calibration (collect) wall time vs bare forward passes          (<= 1.15)
* calibration peak memory (RSS) vs model size + pooled matrix

Conditions run in a rotating order inside each repetition so that machine noise (other
processes, frequency changes) hits all of them alike; each ratio is the median over
repetitions of the per-repetition ratio. This is a benchmark, not a test: it prints a table
and never fails on a missed target.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtoxicqa.sgm import auroc, collect, fit_glasses, put_on  # noqa: E402


def build_local_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return model, f"local llama-like ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)"


def load_embedded_model():
    from mmtoxicqa.modeling import embedded

    loader = getattr(embedded, "load_embedded", None)
    if loader is not None:
        loaded = loader()
    else:
        from mmtoxicqa.modeling.loading import load_model

        loaded = load_model(None)
    model = getattr(loaded, "model", loaded)
    return model.eval(), f"embedded {type(model).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)"


def make_batches(vocab: int, n: int, seq_len: int, batch_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq_len), generator=g)
    attention = torch.ones_like(ids)
    for i in range(0, n, 3):  # some left padding
        pad = 1 + i % 5
        ids[i, :pad] = 0
        attention[i, :pad] = 0
    labels = torch.arange(n) % 2
    batches = [{"input_ids": ids[i : i + batch_size], "attention_mask": attention[i : i + batch_size]} for i in range(0, n, batch_size)]
    return batches, labels


def interleaved(conditions: dict, reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each condition ``reps`` times, rotating the order every repetition; return the wall times."""
    names = list(conditions)
    for _ in range(warmup):
        for name in names:
            conditions[name]()
    times = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            conditions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict, name: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


class PeakRSS:
    """Peak resident memory of this process while the block runs (polls /proc/self/statm)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        self.before = self._rss()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False

    @property
    def delta(self) -> int:
        return self.peak - self.before


def memory_child(argv, mode: str) -> dict:
    import json
    import subprocess

    argv = list(sys.argv[1:] if argv is None else argv)
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--memory-child", mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_memory_child(args, model, vocab) -> int:
    import json

    batches, labels = make_batches(vocab, args.memory_inputs, args.memory_len, args.calib_batch, seed=3)
    if args.memory_child == "bare":
        with PeakRSS() as peak, torch.inference_mode():
            for batch in batches:
                model(**batch, use_cache=False)
    else:
        with PeakRSS() as peak:
            collect(model, batches, labels, progress=False, early_stop=args.memory_child == "collect")
    print(json.dumps({"before": peak.before, "peak": peak.peak, "delta": peak.delta}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true", help="use the embedded model instead of the local random one")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is the least noisy on a shared CPU)")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--calib-inputs", type=int, default=128)
    parser.add_argument("--calib-len", type=int, default=48)
    parser.add_argument("--calib-batch", type=int, default=16)
    parser.add_argument(
        "--sklearn-neurons",
        type=int,
        default=1500,
        help="neurons timed in the sklearn loop (its per-neuron cost is constant; scaled to all)",
    )
    parser.add_argument(
        "--memory-inputs", type=int, default=1024, help="inputs in the memory measurement (many, so the pooled matrix is sizeable)"
    )
    parser.add_argument("--memory-len", type=int, default=16)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("calibration", "auroc", "memory", "generation"), help="sections to leave out"
    )
    parser.add_argument("--memory-child", choices=("bare", "collect", "collect_full"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, label = load_embedded_model() if args.embedded else build_local_model(args)
    vocab = model.get_input_embeddings().weight.shape[0]
    vocab = min(vocab, 30000)
    if args.memory_child:
        return run_memory_child(args, model, vocab)
    print(f"model: {label}; torch {torch.__version__}, {args.threads} thread(s), {args.reps} interleaved repetitions")
    rows = []

    # ---------------------------------------------------------------- calibration time
    batches, labels = make_batches(vocab, args.calib_inputs, args.calib_len, args.calib_batch, seed=1)

    def bare():
        with torch.inference_mode():
            for batch in batches:
                model(**batch, use_cache=False)

    results = {}

    def calib():
        results["responses"] = collect(model, batches, labels, progress=False)

    def calib_full():
        collect(model, batches, labels, progress=False, early_stop=False)

    if "calibration" in args.skip:
        calib()
    else:
        times = interleaved({"bare": bare, "bare_again": bare, "collect": calib, "collect_no_early_stop": calib_full}, args.reps)
        rows.append(
            (
                "calibration: collect / bare forward",
                paired_ratio(times, "collect", "bare"),
                "<= 1.15",
                f"bare {statistics.median(times['bare']):.3f}s for {args.calib_inputs} inputs x {args.calib_len} tokens",
            )
        )
        rows.append(("calibration: bare / bare (noise floor)", paired_ratio(times, "bare_again", "bare"), "~1", "A/A"))
        rows.append(
            (
                "calibration without early stop / bare forward",
                paired_ratio(times, "collect_no_early_stop", "bare"),
                "(info)",
                "hooks + pooling cost alone (LM head also run)",
            )
        )
    responses = results["responses"]

    # ---------------------------------------------------------------- AUROC
    if "auroc" not in args.skip:
        from sklearn.metrics import roc_auc_score

        scores, y = responses.pooled, responses.labels
        m = scores.shape[1]
        auroc(scores, y)  # warm-up
        ours_times = []
        for _ in range(3):
            start = time.perf_counter()
            ours = auroc(scores, y)
            ours_times.append(time.perf_counter() - start)
        k = min(args.sklearn_neurons, m)
        columns = torch.linspace(0, m - 1, k).long()
        y_np = y.numpy()
        start = time.perf_counter()
        reference = [roc_auc_score(y_np, scores[:, j].numpy()) for j in columns.tolist()]
        sk_per_neuron = (time.perf_counter() - start) / k
        diff = float((ours[columns] - torch.tensor(reference, dtype=torch.float64)).abs().max())
        ours_t = statistics.median(ours_times)
        rows.append(
            (
                "AUROC all neurons: sklearn loop / vectorised",
                sk_per_neuron * m / ours_t,
                ">= 100",
                f"{m} neurons x {scores.shape[0]} inputs: ours {ours_t * 1e3:.1f} ms, sklearn {sk_per_neuron * 1e3:.2f} ms/neuron; max |diff| {diff:.1e} on {k} neurons",
            )
        )
        # The same with ties (float16 scores) to exercise the average-rank path.
        half = scores.half()
        ours_h = auroc(half, y)
        ref_h = torch.tensor([roc_auc_score(y_np, half[:, j].float().numpy()) for j in columns[:300].tolist()], dtype=torch.float64)
        rows.append(
            (
                "AUROC with ties (fp16 scores): max |ours - sklearn|",
                float((ours_h[columns[:300]] - ref_h).abs().max()),
                "<= 1e-9",
                "300 neurons",
            )
        )

    # ---------------------------------------------------------------- calibration memory
    if "memory" not in args.skip:
        # Each measured in a fresh process (same model, same inputs) so allocator reuse cannot hide anything;
        # --memory-inputs short inputs, so that the pooled matrix is large next to the per-batch activations.
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        pooled_bytes = args.memory_inputs * responses.pooled.shape[1] * responses.pooled.element_size()
        mem = {mode: memory_child(argv, mode) for mode in ("bare", "collect", "collect_full")}
        mib = 1 << 20
        rows.append(
            (
                "calibration peak RSS / bare-forward peak RSS",
                mem["collect"]["peak"] / mem["bare"]["peak"],
                "(info)",
                (
                    f"bare {mem['bare']['peak'] / mib:.0f} MiB, collect {mem['collect']['peak'] / mib:.0f} MiB, "
                    f"collect without early stop {mem['collect_full']['peak'] / mib:.0f} MiB (process with model loaded: {mem['bare']['before'] / mib:.0f} MiB)"
                ),
            )
        )
        rows.append(
            (
                "calibration peak RSS increase / (model + pooled)",
                mem["collect"]["delta"] / (param_bytes + pooled_bytes),
                "(info)",
                (
                    f"+{mem['collect']['delta'] / mib:.1f} MiB over the loaded process (model {param_bytes / mib:.0f} MiB, pooled matrix {pooled_bytes / mib:.2f} MiB; "
                    f"bare forwards +{mem['bare']['delta'] / mib:.1f} MiB: activations + logits; {args.memory_inputs} inputs x {args.memory_len} tokens)"
                ),
            )
        )
        rows.append(
            (
                "(collect without early stop - bare) peak RSS / pooled",
                (mem["collect_full"]["peak"] - mem["bare"]["peak"]) / pooled_bytes,
                "~1 (info)",
                "what recording adds beyond the same forward passes, in units of the pooled matrix",
            )
        )

    # ---------------------------------------------------------------- generation
    if "generation" not in args.skip:
        glasses = fit_glasses(model, batches, labels, progress=False)
        gen_ids, _ = make_batches(vocab, args.gen_batch, args.prompt_len, args.gen_batch, seed=2)
        prompt = {"input_ids": gen_ids[0]["input_ids"], "attention_mask": torch.ones_like(gen_ids[0]["input_ids"])}
        settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        outputs = {}

        def gen(name):
            def run():
                with torch.inference_mode():
                    outputs[name] = model.generate(**prompt, **settings)

            return run

        def gen_hooks():
            handle = put_on(model, glasses, mode="hooks")
            try:
                gen("hooks")()
            finally:
                handle.remove()

        fused_handle = {}

        def gen_fused():
            # put_on/remove for fused mode are one-off costs outside the generation loop; timed separately below.
            fused_handle["h"] = put_on(model, glasses, mode="fused")
            try:
                start = time.perf_counter()
                gen("fused")()
                fused_handle["gen"] = time.perf_counter() - start
            finally:
                fused_handle["h"].remove()

        fused_gen_times = []

        def gen_fused_timed():
            gen_fused()
            fused_gen_times.append(fused_handle["gen"])

        times = interleaved(
            {"vanilla": gen("vanilla"), "vanilla_again": gen("vanilla_again"), "hooks": gen_hooks, "fused": gen_fused_timed}, args.reps
        )
        times_gen = times
        fused_gen_times = fused_gen_times[-args.reps :]
        times["fused_gen_only"] = fused_gen_times
        gen_desc = f"{args.gen_batch} x ({args.prompt_len} prompt + {args.new_tokens} new) tokens, vanilla {statistics.median(times['vanilla']):.3f}s; {glasses.num_dampened}/{glasses.num_neurons} neurons dampened"
        rows.append(
            (
                "generation: vanilla / vanilla (noise floor)",
                paired_ratio(times, "vanilla_again", "vanilla"),
                "~1",
                "A/A: the same run twice",
            )
        )
        rows.append(
            ("generation: hooks / vanilla", paired_ratio(times, "hooks", "vanilla"), "<= 1.03", gen_desc + " (put_on/remove included)")
        )
        rows.append(("generation: fused / vanilla", paired_ratio(times, "fused_gen_only", "vanilla"), "<= 1.01", "generate() only"))
        rows.append(
            (
                "generation: fused incl. put_on+remove / vanilla",
                paired_ratio(times, "fused", "vanilla"),
                "(info)",
                "weights scaled and restored each time",
            )
        )
        same = torch.equal(outputs["hooks"], outputs["fused"])
        rows.append(("generation: hooks tokens == fused tokens", float(same), "1", ""))

        # Worst case for hooks: one-token forwards without KV context (the least work per hook call).
        token = {"input_ids": prompt["input_ids"][:, :1], "attention_mask": prompt["attention_mask"][:, :1]}

        def steps(n=20):
            with torch.inference_mode():
                for _ in range(n):
                    model(**token, use_cache=False)

        def steps_hooks():
            with put_on(model, glasses, mode="hooks"):
                steps()

        times = interleaved({"plain": steps, "hooks": steps_hooks}, max(15, 3 * args.reps))
        rows.append(
            (
                "one-token forward: hooks / plain (upper bound)",
                paired_ratio(times, "hooks", "plain"),
                "(info)",
                f"{args.gen_batch} x 1 token, no cache: {statistics.median(times['plain']) / 20 * 1e3:.2f} ms per forward",
            )
        )

    if "generation" not in args.skip:
        # Noise-free estimate: the extra time one hooked projection call costs, times the hooked layers per
        # decoding step, over the measured vanilla time per generated token.
        from mmtoxicqa.modeling.discovery import site_modules

        handle = put_on(model, glasses, mode="hooks")
        hooked = handle.layers_touched
        handle.remove()
        site = max(glasses.sites, key=lambda st: st.width)
        module = site_modules(model, [site])[0]
        x = torch.randn(args.gen_batch, 1, site.width)

        def calls(n=2000):
            with torch.inference_mode():
                for _ in range(n):
                    module(x)

        def calls_hooked():
            with put_on(model, glasses, mode="hooks"):
                calls()

        micro = interleaved({"plain": calls, "hooked": calls_hooked}, 7)
        extra_per_call = max(0.0, statistics.median(a - b for a, b in zip(micro["hooked"], micro["plain"])) / 2000)
        per_token = statistics.median(times_gen["vanilla"]) / args.new_tokens
        rows.append(
            (
                "generation: hooks overhead estimate (per-call cost)",
                1 + extra_per_call * hooked / per_token,
                "<= 1.03",
                f"+{extra_per_call * 1e6:.1f} us per hooked call x {hooked} layers per step vs {per_token * 1e3:.1f} ms per generated token",
            )
        )

    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value':>10}  {'target':>9}  notes")
    print("-" * (width + 80))
    for name, value, target, note in rows:
        shown = f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
        print(f"{name.ljust(width)}  {shown:>10}  {target:>9}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
