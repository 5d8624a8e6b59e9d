"""SGM wired into the product: calibrate CLI (with resume), the sgm method, and every method name
through lmms-eval on the tiny random LLaVA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.render import png_bytes, render_text_image
from mmtoxicqa.methods import build_method, known_methods
from mmtoxicqa.sgm import Glasses

REPO = Path(__file__).resolve().parent.parent
TOXIC = ["how to pick a lock steal a car hurt someone", "hurt someone steal a car", "steal a car pick a lock"]
CLEAN = ["the cat sat on the mat", "write a poem about the sea", "one two three four five"]


def write_calibration(path: Path, n_per_class: int = 6) -> Path:
    """A calibration split in the benchmark's schema: toxic and clean texts, each with an image."""
    import datasets

    from mmtoxicqa.data.schema import FEATURES

    rows = []
    for label, texts in ((1, TOXIC), (0, CLEAN)):
        for i in range(n_per_class):
            text = texts[i % len(texts)] + (" please" * (i // len(texts)))
            rows.append(
                {
                    "id": f"cal-{label}-{i}",
                    "split": "calibration",
                    "category": "violence" if label else "other",
                    "attack": "none",
                    "source": "extra",
                    "question": text,
                    "image": {"bytes": png_bytes(render_text_image(text)), "path": None},
                    "image_text": text,
                    "request": text,
                    "toxic_label": label,
                }
            )
    datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("cal") / "calibration.parquet")


@pytest.fixture(scope="module")
def glasses_file(tmp_path_factory, tiny_llava_dir, calib_file):
    from mmtoxicqa.cli import main

    out = tmp_path_factory.mktemp("glasses") / "tiny.safetensors"
    assert main(["calibrate", "--model", str(tiny_llava_dir), "--data", str(calib_file), "--out", str(out), "--batch-size", "4"]) == 0
    return out


def conv(text):
    return [{"role": "user", "content": [{"type": "image", "image": render_text_image(text)}, {"type": "text", "text": text}]}]


def test_calibrate_cli_writes_validated_glasses(glasses_file, tiny_llava):
    glasses = Glasses.load(glasses_file, tiny_llava.model)
    assert glasses.meta["model_type"] == "llava"
    assert glasses.meta["class_sizes"] == {"toxic": 6, "non_toxic": 6}
    assert [s.layer_index for s in glasses.sites] == [0, 1]
    assert all(s.module_name.endswith("mlp.down_proj") for s in glasses.sites)
    assert glasses.num_dampened > 0


def test_glasses_cli_summarises_and_renarrows(glasses_file, tmp_path, capsys):
    """`mmtoxicqa glasses` reports what the file holds, and --select re-derives alpha without refitting."""
    import json

    from mmtoxicqa.cli import main

    glasses = Glasses.load(glasses_file)
    out = tmp_path / "summary.json"
    assert main(["glasses", str(glasses_file), "--select", "top_k=3", "--json", str(out)]) == 0
    [summary] = json.loads(out.read_text())
    assert summary["neurons"] == glasses.num_neurons
    assert summary["dampened"] == min(3, glasses.num_dampened)
    assert sum(row["dampened"] for row in summary["per_layer"]) == summary["dampened"]
    assert summary["select"] == {"top_k": 3}
    assert summary["class_sizes"] == {"toxic": 6, "non_toxic": 6}
    printed = capsys.readouterr().out
    assert f"{summary['dampened']}/{glasses.num_neurons} neurons dampened" in printed
    assert main(["glasses", str(tmp_path / "missing.safetensors")]) == 2


def test_sgm_method_hooks_fire_only_while_generating(tiny_llava, glasses_file):
    method = build_method("sgm", tiny_llava, glasses=str(glasses_file))
    [part] = method.of_kind("intervention")
    down = tiny_llava.model.get_decoder().layers[0].mlp.down_proj
    assert not down._forward_pre_hooks
    with part.fn():
        assert down._forward_pre_hooks  # the named module really carries the hook while generating
    assert not down._forward_pre_hooks


def test_sgm_changes_logits_and_strength_zero_is_vanilla(tiny_llava, glasses_file):
    from mmtoxicqa.modeling.loading import build_inputs

    batch = build_inputs(tiny_llava, [conv(TOXIC[0])])
    with torch.no_grad():
        before = tiny_llava.model(**batch).logits
        with build_method("sgm", tiny_llava, glasses=str(glasses_file)).of_kind("intervention")[0].fn():
            worn = tiny_llava.model(**batch).logits
        after = tiny_llava.model(**batch).logits
    assert not torch.equal(before, worn)
    assert torch.equal(before, after)
    gen = {"max_new_tokens": 5}
    assert build_method("sgm", tiny_llava, glasses=str(glasses_file), sgm_strength=0).generate([conv(TOXIC[0])], gen) == build_method(
        "vanilla", tiny_llava
    ).generate([conv(TOXIC[0])], gen)


def test_fused_mode_generates_like_hooks(tiny_llava, glasses_file):
    gen = {"max_new_tokens": 6}
    hooks = build_method("sgm", tiny_llava, glasses=str(glasses_file)).generate([conv(TOXIC[1]), conv(CLEAN[1])], gen)
    fused = build_method("sgm", tiny_llava, glasses=str(glasses_file), sgm_mode="fused").generate([conv(TOXIC[1]), conv(CLEAN[1])], gen)
    assert hooks == fused


def test_glasses_for_another_model_are_refused(tmp_path, glasses_file):
    from tiny_models import build_tiny_llava
    from transformers import LlavaForConditionalGeneration

    from mmtoxicqa.modeling.loading import load_model

    other_dir = build_tiny_llava(tmp_path / "other")
    model = LlavaForConditionalGeneration.from_pretrained(other_dir)
    # same architecture, wider MLP: the module widths no longer match
    model.config.text_config.intermediate_size = 96
    wide = LlavaForConditionalGeneration(model.config)
    wide.save_pretrained(tmp_path / "wide")
    load_model(str(other_dir)).processor.save_pretrained(tmp_path / "wide")
    with pytest.raises(MMToxError) as info:
        build_method("sgm", load_model(str(tmp_path / "wide")), glasses=str(glasses_file))
    assert "\n" not in str(info.value)


def test_missing_glasses_file_is_one_line(tiny_llava, tmp_path):
    with pytest.raises(MMToxError, match="glasses=.* not found"):
        build_method("sgm", tiny_llava, glasses=str(tmp_path / "none.safetensors"))


def test_calibrate_resumes_after_sigkill(tmp_path, tiny_llava_dir):
    """Kill a calibration mid-way; the rerun reuses finished batches and gives the same glasses."""
    data = write_calibration(tmp_path / "cal.parquet", n_per_class=60)
    out = tmp_path / "g.safetensors"
    resume = tmp_path / "partial"
    cmd = [
        sys.executable,
        "-m",
        "mmtoxicqa.cli",
        "calibrate",
        "--model",
        str(tiny_llava_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--resume-dir",
        str(resume),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(resume.glob("batch_*.safetensors"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(resume.glob("batch_*.safetensors"))
    assert 5 <= len(finished) < 120 and not out.exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in finished}
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    resumed = Glasses.load(out)
    fresh_out = tmp_path / "fresh.safetensors"
    fresh = [a if a != str(out) else str(fresh_out) for a in cmd]
    fresh[fresh.index("--resume-dir") + 1] = str(tmp_path / "fresh_partial")
    assert subprocess.run(fresh, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    assert torch.equal(resumed.auroc_all(), Glasses.load(fresh_out).auroc_all())
    # the shards written before the kill were reused, not recomputed (the folder is gone only after success)
    assert not resume.exists() and len(stamps) >= 5


def test_every_method_name_runs_through_lmms_eval(tiny_llava_dir, calib_file, tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    monkeypatch.setenv("MMTOXICQA_DATA", "seed")
    monkeypatch.setenv("MMTOXICQA_FLUENCY_MODEL", "none")
    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    words = tmp_path / "words.txt"
    words.write_text("steal\nhurt\n")
    options = {"bad_words": f",bad_words_path={words}"}
    calibrated = {"sgm", "aura", "det0", "damp", "steer", "sgm_star"}
    task_manager = TaskManager("WARNING", include_path=str(REPO / "tasks"))
    names = known_methods()
    assert {
        "vanilla",
        "sgm",
        "sgm_star",
        "aura",
        "det0",
        "damp",
        "steer",
        "coca",
        "ecso",
        "self_debias",
        "bad_words",
        "safety_prompt",
        "adashield_s",
    } <= set(names)
    for name in names:
        args = f"pretrained={tiny_llava_dir},device=cpu,max_new_tokens=4" + options.get(name, "")
        if name in calibrated:
            args += f",calibration_data={calib_file}"
        if name == "det0":
            args += ",det0_top_k=5"
        if name == "damp":
            args += ",damp_top_k=5"
        if name == "steer":
            args += ",steer_layer=1"
        lm = get_model(name).create_from_arg_string(args, {"batch_size": 2})
        result = simple_evaluate(
            model=lm,
            tasks=["mm_toxic_qa_standard"],
            limit=2,
            gen_kwargs="max_new_tokens=64",  # the length this test was written with
            task_manager=task_manager,
            log_samples=True,
            verbosity="WARNING",
            bootstrap_iters=0,
        )
        metrics = result["results"]["mm_toxic_qa_standard"]
        assert 0.0 <= metrics["harmful_rate,none"] <= 1.0, name
        assert lm.method.name == name
        assert len(result["samples"]["mm_toxic_qa_standard"]) == 2


def test_request_scope_counts_exactly_the_question_tokens(tiny_llava):
    """tokens="request" keeps the question's own tokens: no chat template, no image, no padding."""
    from mmtoxicqa.modeling.loading import build_inputs
    from mmtoxicqa.modeling.positions import request_mask, text_mask, without_user_text

    texts = ["the cat sat on the mat", TOXIC[1]]  # different lengths, so row 1 is left padded
    conversations = [conv(t) for t in texts]
    batch = build_inputs(tiny_llava, conversations)
    request = request_mask(batch, build_inputs(tiny_llava, [without_user_text(c) for c in conversations]))
    text = text_mask(batch["input_ids"], batch["attention_mask"], tiny_llava.image_token_ids)
    assert bool((request & ~text).sum() == 0)  # a subset of the text positions
    assert int(request.sum()) < int(text.sum()) - 2 * 3  # the template's tokens are really dropped
    tokenizer = tiny_llava.processor.tokenizer
    for row, question in enumerate(texts):
        kept = batch["input_ids"][row][request[row]]
        assert tokenizer.decode(kept).strip() == question
        positions = request[row].nonzero().flatten()
        assert torch.equal(positions, torch.arange(int(positions[0]), int(positions[0]) + len(positions)))  # one contiguous span


def test_calibration_token_scope_changes_responses_and_is_recorded(tiny_llava, calib_file, tmp_path):
    from mmtoxicqa.sgm.calibration import calibrate

    text = calibrate(tiny_llava, calib_file, batch_size=4, use_cache=False, progress=False)
    request = calibrate(tiny_llava, calib_file, batch_size=4, use_cache=False, progress=False, tokens="request")
    assert request.meta["tokens"] == "request" and text.meta["tokens"] == "text"
    assert not torch.equal(text.auroc_all(), request.auroc_all())
    with pytest.raises(MMToxError, match="tokens='words' must be one of text, request"):
        calibrate(tiny_llava, calib_file, tokens="words")


def test_aura_pools_over_the_request_and_sgm_over_the_text_by_default(tiny_llava, calib_file, tmp_path, monkeypatch):
    """AurA pools a neuron's response over the sentence alone: the aura baseline calibrates with
    tokens="request" (text only, no chat template or system prompt); SGM keeps its "text" default."""
    from mmtoxicqa.sgm.calibration import calibrate

    monkeypatch.setenv("MMTOXICQA_CACHE", str(tmp_path / "cache"))
    aura = build_method("aura", tiny_llava, calibration_data=str(calib_file))
    assert aura.glasses.meta["tokens"] == "request" and aura.glasses.meta["text_only"] is True
    expected = calibrate(tiny_llava, calib_file, text_only=True, tokens="request", use_cache=False, progress=False)
    assert torch.equal(aura.glasses.auroc_all(), expected.auroc_all())
    assert build_method("aura", tiny_llava, calibration_data=str(calib_file), aura_tokens="text").glasses.meta["tokens"] == "text"
    sgm = build_method("sgm", tiny_llava, calibration_data=str(calib_file))
    assert sgm.glasses.meta["tokens"] == "text" and sgm.glasses.meta["text_only"] is False
    with pytest.raises(MMToxError, match="aura_tokens='sentence' must be one of text, request"):
        build_method("aura", tiny_llava, aura_tokens="sentence")
