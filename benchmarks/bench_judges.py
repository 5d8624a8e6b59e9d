"""Throughput of the offline judges: texts per second at batch sizes 1, 16 and 128.

    python benchmarks/bench_judges.py [--texts 256] [--repeats 1]

* profanity: alt-profanity-check.
* hf_classifier: a tiny random BERT classifier built into a temporary directory (it measures
  the judge's overhead, tokenisation and batching, not a production-size model); pass
  ``--hf-model PATH`` to time a real local classifier instead.
* detoxify: timed when a checkpoint is available (``$MMTOXICQA_DETOXIFY_CHECKPOINT`` or the
  torch hub cache) and its base config loads (``$MMTOXICQA_DETOXIFY_CONFIG_DIR`` or the HF
  cache); otherwise skipped with the reason.

The judge's text cache is disabled (cache_size=0) so every text really goes through the model.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.scoring import get_judge

BATCH_SIZES = (1, 16, 128)
WORDS = (
    "the a you are is was this that answer image shows picture cat dog people person street sign text "
    "help sorry cannot idiot stupid hate nice good day bad kind of very really think should would"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(n)]


def build_tiny_classifier(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(path))
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "clean", 1: "toxic"},
        label2id={"clean": 0, "toxic": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(path))
    return path


def time_judge(make_judge, texts: list[str], batch_size: int, repeats: int) -> float:
    judge = make_judge()
    judge.score(texts[: min(len(texts), batch_size)], batch_size=batch_size)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        judge.score(texts, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="texts per timing (default 256)")
    parser.add_argument("--repeats", type=int, default=1, help="timings per cell, best kept (default 1)")
    parser.add_argument("--hf-model", default=None, help="a local sequence-classification model dir (default: a tiny random one)")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    texts = make_texts(args.texts)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        hf_path = args.hf_model or str(build_tiny_classifier(Path(tmp) / "tiny_clf"))
        judges = [
            ("profanity", lambda: get_judge("profanity", cache_size=0)),
            (
                "hf_classifier" + (f":{args.hf_model}" if args.hf_model else " (tiny BERT)"),
                lambda: get_judge(f"hf_classifier:{hf_path}", cache_size=0),
            ),
        ]
        try:
            get_judge("detoxify", cache_size=0)
            judges.append(("detoxify:original", lambda: get_judge("detoxify", cache_size=0)))
        except MMToxError as exc:
            notes.append(f"detoxify skipped: {exc}")
        for label, make in judges:
            rows.append((label, [time_judge(make, texts, bs, max(1, args.repeats)) for bs in BATCH_SIZES]))

    print(f"judge throughput, texts/s ({len(texts)} texts of 5-40 words, torch threads={torch.get_num_threads()}, CPU)")
    width = max(len(r[0]) for r in rows) + 2
    print("judge".ljust(width) + "".join(f"{'bs=' + str(bs):>12}" for bs in BATCH_SIZES))
    for label, values in rows:
        print(label.ljust(width) + "".join(f"{v:>12.1f}" for v in values))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
