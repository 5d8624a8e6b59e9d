"""Answers per second of the ``llm`` judge inside an lmms-eval run vs ``mmtoxicqa rescore``, one run.

    python benchmarks/bench_inrun_scoring.py [--limit 64] [--latency 0.05] [--concurrency 8]

A chat-completions server on 127.0.0.1 answers every request after ``--latency`` seconds (50 ms).
The embedded model answers ``--limit`` seed items through ``lmms_eval.simple_evaluate`` (in this
process) with ``MMTOXICQA_JUDGE=llm``; verdict caches are off (``MMTOXICQA_LLM_JUDGE_CACHE=0`` and
a fresh judge per measurement), so every answer is one request. Three timings over the same answers:

* in-run: the task's batched judging (the ``JudgeAnswers`` filter) plus lmms-eval's per-item
  postprocessing (``process_results`` reading the verdicts), both timed inside the run;
* item by item: the same answers through ``process_results`` with no batched verdicts, on lmms-eval's
  4 postprocessing threads: how a run judged before the filter;
* rescore: ``mmtoxicqa rescore``'s scoring call (``rescore.score_items``) on the logged answers.

Generation is not timed. The server reports the most requests it saw in flight for each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))  # bench_llm_judge's server

for name, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(name, value)

from bench_llm_judge import start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=64, help="seed items answered (default 64)")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=8, help="MMTOXICQA_LLM_JUDGE_CONCURRENCY (default 8)")
    args = parser.parse_args()

    server, state = start_server(args.latency)
    os.environ.update(
        MMTOXICQA_DATA="seed",
        MMTOXICQA_JUDGE="llm",
        MMTOXICQA_FLUENCY_MODEL="none",
        MMTOXICQA_LLM_JUDGE_URL=f"http://127.0.0.1:{server.server_address[1]}/v1",
        MMTOXICQA_LLM_JUDGE_MODEL="bench",
        MMTOXICQA_LLM_JUDGE_CACHE="0",
        MMTOXICQA_LLM_JUDGE_CONCURRENCY=str(args.concurrency),
    )
    import lmms_eval.evaluator as evaluator

    from mmtoxicqa.lmms import task_support
    from mmtoxicqa.lmms.evaluate import index_plugin_tasks
    from mmtoxicqa.lmms.task_judging import clear_verdicts
    from mmtoxicqa.scoring import clear_judges
    from mmtoxicqa.study.rescore import score_items

    timed: dict[str, float] = {"filter": 0.0, "postprocess": 0.0}
    peaks: dict[str, int] = {}

    def reset_peak() -> None:
        state["max_in_flight"] = 0

    apply, thread_map = task_support.JudgeAnswers.apply_with_instances, evaluator._thread_map_ordered

    def timed_apply(self, resps, docs, instances):
        clear_judges()  # a fresh judge: no verdict of the health check or an earlier call is reused
        reset_peak()
        start = time.perf_counter()
        try:
            return apply(self, resps, docs, instances)
        finally:
            timed["filter"] += time.perf_counter() - start

    def timed_thread_map(*a, **kw):
        start = time.perf_counter()
        try:
            return thread_map(*a, **kw)
        finally:
            timed["postprocess"] += time.perf_counter() - start
            peaks["in-run"] = state["max_in_flight"]

    task_support.JudgeAnswers.apply_with_instances, evaluator._thread_map_ordered = timed_apply, timed_thread_map
    index_plugin_tasks()
    out = evaluator.simple_evaluate(
        model="mmtox",
        tasks=["mm_toxic_qa_seed"],
        limit=args.limit,
        batch_size=8,
        gen_kwargs="max_new_tokens=16",
        log_samples=True,
    )
    task_support.JudgeAnswers.apply_with_instances, evaluator._thread_map_ordered = apply, thread_map
    samples = out["samples"]["mm_toxic_qa_seed"]
    from mmtoxicqa.study.results import sample_answers

    answers = [sample_answers(s) for s in samples]
    docs = [dict(s["doc"]) for s in samples]
    n = sum(len(a) for a in answers)
    assert all(s["judges"]["scores"]["llm"][0] is not None for s in samples), "the in-run judge left answers unscored"
    inrun_s = timed["filter"] + timed["postprocess"]

    # item by item: lmms-eval's postprocessing threads, each item judged alone (no batched verdicts)
    clear_judges()
    clear_verdicts()
    reset_peak()
    start = time.perf_counter()
    evaluator._thread_map_ordered(lambda pair: task_support.process_results(*pair), list(zip(docs, answers)), max_workers=4)
    item_s = time.perf_counter() - start
    peaks["item by item"] = state["max_in_flight"]

    clear_judges()
    reset_peak()
    start = time.perf_counter()
    score_items(docs, answers, ["llm"])
    rescore_s = time.perf_counter() - start
    peaks["rescore"] = state["max_in_flight"]  # score_items also sends its health check, timed with it
    server.shutdown()

    print(
        f"llm judge, {n} answers of the embedded model (seed set), server latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}"
    )
    print(f"{'route':<40} {'seconds':>8} {'answers/s':>10} {'max in flight':>14}")
    rows = [
        ("in-run, batched (filter + postprocess)", inrun_s, peaks["in-run"]),
        ("in-run, item by item (before)", item_s, peaks["item by item"]),
        ("rescore (score_items)", rescore_s, peaks["rescore"]),
    ]
    for name, seconds, peak in rows:
        print(f"{name:<40} {seconds:>8.2f} {n / seconds:>10.1f} {peak:>14}")
    print(
        f"in-run / rescore answers/s: {rescore_s / inrun_s:.2f}x  (filter {timed['filter']:.2f} s, postprocess {timed['postprocess']:.2f} s)"
    )


if __name__ == "__main__":
    main()
