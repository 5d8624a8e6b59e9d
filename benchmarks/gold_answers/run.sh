#!/usr/bin/env bash
# The runs behind tests/data/judge_gold_answers.jsonl (issue #23 item 5): real 64-token answers of the
# embedded, reading (embedded-ocr) and organism models, logged by lmms-eval (--log_samples), on the
# project's own seed items only (tasks/mm_toxic_qa/seed_items.jsonl, and the seed set's adversarial
# variants with MMTOXICQA_DATA=seed). Greedy decoding, so a rerun gives the same answers.
# Then: benchmarks/gold_answers/collect.py (answers -> rows), hand labels (a TSV id<TAB>label<TAB>reason),
# collect.py --labels (labelled rows), benchmarks/check_gold_overlap.py --drop (the licensing check) into
# tests/data/judge_gold_answers.jsonl. The labels live in that file: collect.py --labels
# tests/data/judge_gold_answers.jsonl rebuilds it from the runs.
# Usage (repo root): bash benchmarks/gold_answers/run.sh [OUT]   (default out/gold_answers; resumes per run)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${1:-out/gold_answers}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export MMTOXICQA_JUDGE=refusal,profanity
run() {  # $1 run name, $2 --model, $3 model_args, $4 task, $5 limit ('' = all), $6 MMTOXICQA_DATA ('' = unset)
  local name=$1 model=$2 args=$3 task=$4 limit=${5:+--limit $5} data=$6
  if compgen -G "$OUT/$name/*/*_samples_$task.jsonl" >/dev/null; then echo "$name: done"; return; fi
  echo "$name: $model $args $task ${5:-all}"
  env ${data:+MMTOXICQA_DATA=$data} $BIN/lmms_eval --model "$model" --model_args "$args" --tasks "$task" $limit \
    --batch_size 8 --gen_kwargs max_new_tokens=64 --output_path "$OUT/$name" --log_samples > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
run embedded-vanilla-seed mmtox pretrained=embedded mm_toxic_qa_seed "" ""
run organism-vanilla-seed mmtox pretrained=organism mm_toxic_qa_seed "" ""
run ocr-vanilla-seed mmtox pretrained=embedded-ocr mm_toxic_qa_seed "" ""
run ocr-vanilla-adversarial mmtox pretrained=embedded-ocr mm_toxic_qa_adversarial 24 seed
run embedded-safety_prompt-adversarial safety_prompt pretrained=embedded mm_toxic_qa_adversarial 24 seed
run organism-sgm-seed sgm pretrained=organism,calibration_limit=64 mm_toxic_qa_seed 24 ""
