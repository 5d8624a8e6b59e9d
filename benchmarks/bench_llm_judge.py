"""Throughput of the ``llm`` judge against a local chat-completions server, and of ``llamaguard`` on a tiny model.

    python benchmarks/bench_llm_judge.py [--answers 128] [--latency 0.05] [--repeats 2]

* llm: a ThreadingHTTPServer on 127.0.0.1 that answers every chat-completions request after
  ``--latency`` seconds (50 ms: a fast hosted or local endpoint). Answers per second at 1, 8 and
  32 requests in flight, side by side with the ratio to 1 in flight and the ideal
  (in flight / latency); the server reports the most requests it saw at once. Verdict caches are
  off (``disk_cache=False``, ``cache_size=0``) so every answer is a request.
* llamaguard: texts per second on a tiny random Llama-architecture guard built in a temporary
  directory (tests/tiny_models.py), at batch sizes 1 and 16. A random model never writes its eos,
  so each batch generates the full ``max_new_tokens`` (24): this times the judge's overhead
  (chat template, padding, generate, category parsing), not a real Llama Guard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mmtoxicqa.scoring import clear_judges, get_judge

IN_FLIGHT = (1, 8, 32)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 would refuse bursts of 32 connections


def start_server(latency: float):
    state = {"in_flight": 0, "max_in_flight": 0, "requests": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            with lock:
                state["in_flight"] += 1
                state["requests"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(latency)
            data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "safe"}}]}).encode()
            with lock:
                state["in_flight"] -= 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, state


def bench_llm(answers: int, latency: float, repeats: int) -> list[str]:
    server, state = start_server(latency)
    os.environ["MMTOXICQA_LLM_JUDGE_URL"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    os.environ["MMTOXICQA_LLM_JUDGE_MODEL"] = "bench"
    texts = [f"Answer {i}: here is a short reply about topic {i % 7}." for i in range(answers)]
    contexts = [{"question": f"Question {i}?", "category": "other", "harmful_request": True} for i in range(answers)]
    rows = []
    try:
        for k in IN_FLIGHT:
            best, seen = float("inf"), 0
            for _ in range(repeats):
                clear_judges()
                judge = get_judge("llm", concurrency=k, disk_cache=False, cache_size=0)
                state["max_in_flight"] = 0
                start = time.perf_counter()
                judge.score(texts, contexts=contexts)
                best = min(best, time.perf_counter() - start)
                seen = max(seen, state["max_in_flight"])
            rows.append((k, answers / best, seen))
    finally:
        server.shutdown()
        server.server_close()
        clear_judges()
    base = rows[0][1]
    lines = [
        f"llm judge: {answers} answers, server latency {latency * 1000:.0f} ms per request, best of {repeats}",
        f"{'in flight':>10}{'answers/s':>12}{'vs 1':>8}{'ideal':>10}{'max seen':>10}",
    ]
    for k, rate, seen in rows:
        lines.append(f"{k:>10}{rate:>12.1f}{rate / base:>8.2f}{k / latency:>10.1f}{seen:>10}")
    return lines


def bench_llamaguard(repeats: int) -> list[str]:
    import torch
    from bench_judges_accuracy import load_gold
    from tiny_models import build_tiny_llamaguard

    rows = load_gold()
    texts = [r["answer"] for r in rows]
    contexts = [{"question": r["question"], "category": r["category"], "harmful_request": r["harmful_request"]} for r in rows]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_llamaguard(Path(tmp) / "guard", initializer_range=0.5)
        for batch_size in (1, 16):
            best = float("inf")
            for _ in range(repeats):
                clear_judges()
                judge = get_judge(f"llamaguard:{path}", cache_size=0)
                judge.score(texts[:2], contexts=contexts[:2], batch_size=batch_size)  # warm-up
                start = time.perf_counter()
                judge.score(texts, contexts=contexts, batch_size=batch_size)
                best = min(best, time.perf_counter() - start)
            out.append((batch_size, len(texts) / best))
        clear_judges()
    lines = [
        f"llamaguard judge: tiny random Llama guard (2 layers, hidden 32), {len(texts)} gold-set answers, "
        f"max_new_tokens 24, torch threads={torch.get_num_threads()}, CPU, best of {repeats}",
        f"{'batch':>10}{'texts/s':>12}",
    ]
    lines += [f"{bs:>10}{rate:>12.1f}" for bs, rate in out]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=128, help="answers per timing (default 128)")
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request (default 0.05)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per cell, best kept (default 2)")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for line in bench_llm(args.answers, args.latency, max(1, args.repeats)):
        print(line)
    print()
    for line in bench_llamaguard(max(1, args.repeats)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
