#!/usr/bin/env bash
# The powered organism study (issue #22): see PLAN.md (written before any method row ran) and README.md.
# Every step resumes: glasses are written once, sweep cells are skipped when finished.
# Usage: [ORGANISM=organism|organism-ocr|organism-corpus] bash results/organism/powered/run.sh [targeted|benign|untargeted|all]
# (default organism, all; run from the repo root). Same rows for every organism; its targeted and control tasks:
#   organism         mm_toxic_qa_organism (all 219)        / mm_toxic_qa_organism_untargeted (200)
#   organism-ocr     mm_toxic_qa_organism_image (all 219)  / mm_toxic_qa_organism_image_untargeted (200)
#   organism-corpus  mm_toxic_qa_corpus_toxic (all 150)    / mm_toxic_qa_corpus_neutral (all 150)
set -euo pipefail
BIN=${BIN:-.venv/bin}
SOURCES=${SOURCES:-../shared/data}
ORGANISM=${ORGANISM:-organism}
case $ORGANISM in
  organism) TARGETED=mm_toxic_qa_organism; CONTROL=mm_toxic_qa_organism_untargeted; SUB=""; BUILD="" ;;
  organism-ocr) TARGETED=mm_toxic_qa_organism_image; CONTROL=mm_toxic_qa_organism_image_untargeted; SUB=/ocr; BUILD="--base embedded-ocr" ;;
  organism-corpus) TARGETED=mm_toxic_qa_corpus_toxic; CONTROL=mm_toxic_qa_corpus_neutral; SUB=/corpus; BUILD="--recipe corpus" ;;
  *) echo "ORGANISM=$ORGANISM: use organism, organism-ocr or organism-corpus" >&2; exit 2 ;;
esac
OUT=${ORGANISM_POWERED_OUT:-out/organism/powered$SUB}
RESULTS=results/organism/powered$SUB
CELLS=$OUT/cells
GLASSES=$OUT/glasses
export MMTOXICQA_SOURCES=$SOURCES
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # see PLAN.md: one torch thread per process
mkdir -p "$CELLS" "$GLASSES"
# The answers are 64 tokens (--max-new-tokens 64, the length the task YAMLs set when this study started). The model
# argument max_new_tokens=48 below has no effect (a task's own length wins over it); it stays in COMMON only because it
# is part of the finished cells' recorded model_args, so that they resume instead of being recomputed.
COMMON="max_new_tokens=48"
CAL=400
$BIN/mmtoxicqa build-model --organism $BUILD --sources "$SOURCES"
for scope in answer request; do
  [ -f "$GLASSES/$scope.safetensors" ] || $BIN/mmtoxicqa calibrate --model $ORGANISM --tokens $scope --limit $CAL \
      --out "$GLASSES/$scope.safetensors" --batch-size 8
done
[ -f "$GLASSES/answer_site.safetensors" ] || $BIN/mmtoxicqa calibrate --model $ORGANISM --tokens answer --site gate_up_output \
    --limit $CAL --out "$GLASSES/answer_site.safetensors" --batch-size 8
A=$GLASSES/answer.safetensors
R=$GLASSES/request.safetensors
run_task() {  # $1 task, $2 limit ('' = every item)
  local task=$1 limit=${2:+--limit $2}
  local S="$BIN/mmtoxicqa sweep --models $ORGANISM --tasks $task $limit --batch-size 8 --max-new-tokens 64 --out $CELLS"
  $S --methods vanilla,safety_prompt --model-args $COMMON
  $S --methods sgm --tag answer --model-args $COMMON,glasses=$A
  $S --methods sgm --tag placebo --model-args $COMMON,glasses=$A,sgm_placebo=1
  $S --methods sgm --tag answer_fdr --model-args $COMMON,glasses=$A,sgm_select=fdr=0.05
  $S --methods sgm --tag placebo_fdr --model-args $COMMON,glasses=$A,sgm_select=fdr=0.05,sgm_placebo=1
  $S --methods sgm --tag request --model-args $COMMON,glasses=$R
  $S --methods sgm --tag answer_site --model-args $COMMON,glasses=$GLASSES/answer_site.safetensors
  $S --methods det0 --tag answer --model-args $COMMON,glasses=$A,det0_top_k=200
  $S --methods aura,sgm_star --model-args $COMMON,calibration_limit=$CAL
  $S --methods coca --model-args $COMMON  # amendment (PLAN.md): CoCa alone, to tell its share of sgm_star's cut
  # the two controls PLAN.md added in session 8, each named before it ran: a placebo at AurA's site, a placebo for SGM*
  $S --methods sgm --tag placebo_site --model-args $COMMON,glasses=$GLASSES/answer_site.safetensors,sgm_placebo=1
  $S --methods sgm_star --tag placebo --model-args $COMMON,calibration_limit=$CAL,sgm_placebo=1
}
what=${1:-all}
case $what in targeted|all) run_task $TARGETED "" ;; esac
case $what in benign|all) run_task mm_toxic_qa_benign 200 ;; esac
case $what in untargeted|all) run_task $CONTROL 200 ;; esac
$BIN/mmtoxicqa glasses "$A" "$R" "$GLASSES/answer_site.safetensors" --json "$OUT/glasses.json"
$BIN/mmtoxicqa organism-report "$CELLS" --out $RESULTS --cells-out $RESULTS/cells
