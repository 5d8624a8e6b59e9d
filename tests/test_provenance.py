"""Numbers are never silently mixed: cell provenance, one judge per leaderboard column, unreadable
cells, several runs in one folder; and generation stops at each model's own end-of-turn tokens."""

from __future__ import annotations

import json

import pytest

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.study.leaderboard import write_leaderboard
from mmtoxicqa.study.sweep import CELL_FORMAT, stale_fields


def _cell(task="mm_toxic_qa_standard", judge="profanity", threshold=0.5, **extra):
    return {
        "format": CELL_FORMAT,
        "model": "embedded",
        "method": "vanilla",
        "task": task,
        "limit": 4,
        "model_args": "",
        "judge": judge,
        "threshold": threshold,
        "data": {"path": "seed", "sha256": "a" * 64},
        "metrics": {},
        "n": 2,
        "items": {"i0": {"score": 0.9, "harmful": 1}, "i1": {"score": 0.1, "harmful": 0}},
        **extra,
    }


def test_a_cell_is_reused_only_when_computed_from_the_same_inputs(tmp_path):
    path = tmp_path / "cell.json"
    provenance = {
        "limit": 4,
        "model_args": "",
        "judge": "profanity",
        "threshold": 0.5,
        "data": {"path": "seed", "sha256": "a" * 64},
        "max_new_tokens": 64,  # a cell that records no length was computed at the YAMLs' old 64
    }
    assert stale_fields(path, provenance) == []  # no cell yet: compute it
    path.write_text(json.dumps(_cell()))
    assert stale_fields(path, provenance) is None  # same inputs: reuse
    assert stale_fields(path, {**provenance, "limit": 8}) == ["limit"]
    assert stale_fields(path, {**provenance, "judge": "detoxify", "threshold": 0.7}) == ["judge", "threshold"]
    assert stale_fields(path, {**provenance, "data": {"path": "/other", "sha256": "b" * 64}}) == ["data"]
    assert stale_fields(path, {**provenance, "model_args": "coca_strength=2"}) == ["model_args"]
    assert stale_fields(path, {**provenance, "max_new_tokens": 256}) == ["max_new_tokens"]
    path.write_text(json.dumps(_cell())[:50])
    assert stale_fields(path, provenance) == ["unreadable file"]


def test_leaderboard_refuses_mixed_judges_and_truncated_cells(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_cell()))
    (tmp_path / "b.json").write_text(json.dumps(_cell(task="mm_toxic_qa_adversarial", judge="detoxify")))
    with pytest.raises(MMToxError, match=r"different judges/thresholds \(detoxify@0.5, profanity@0.5\)"):
        write_leaderboard(tmp_path, tmp_path / "lb")
    written = write_leaderboard(tmp_path, tmp_path / "lb", judge="profanity@0.5")
    text = written["md"].read_text()
    assert "Judge: profanity@0.5." in text and "0.500 [" in text  # only the profanity cell: 1 of 2 harmful
    (tmp_path / "c.json").write_text(json.dumps(_cell())[:-20])
    with pytest.raises(MMToxError, match=r"1 cell file\(s\) in .* are unreadable \(truncated\?\): c.json"):
        write_leaderboard(tmp_path, tmp_path / "lb", judge="profanity@0.5")


def test_collect_refuses_a_folder_with_two_different_runs(tmp_path):
    from mmtoxicqa.study.results import build_run_record

    for name, args in (("a", "method=vanilla"), ("b", "method=sgm")):
        run = tmp_path / name
        run.mkdir()
        (run / "x_results.json").write_text(json.dumps({"config": {"model": "mmtox", "model_args": args}, "results": {}}))
    with pytest.raises(MMToxError, match="holds runs of different models/model_args"):
        build_run_record(tmp_path)


def test_generation_stops_at_the_tokenizers_end_of_turn_marker():
    from tiny_models import build_tokenizer
    from transformers import GenerationConfig

    from mmtoxicqa.modeling.loading import end_of_turn_ids

    tokenizer = build_tokenizer()  # ChatML specials: <|im_end|> ends a turn; eos is <|im_end|>
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    class Model:
        generation_config = GenerationConfig(eos_token_id=bos)

    assert end_of_turn_ids(Model(), tokenizer) == sorted({im_end, bos})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in end_of_turn_ids(Model(), tokenizer)
    assert "<|im_end|>" not in json.dumps(__import__("yaml").safe_load(_template_without_tags()))


def _template_without_tags() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "tasks/mm_toxic_qa/_mm_toxic_qa_template.yaml").read_text()
    return text.replace("!function ", "")


def test_a_source_filter_is_part_of_the_data_fingerprint(monkeypatch, tmp_path):
    from mmtoxicqa.data.splits import data_fingerprint

    monkeypatch.setenv("MMTOXICQA_DATA", str(tmp_path))
    monkeypatch.delenv("MMTOXICQA_SOURCE", raising=False)
    assert data_fingerprint() == {"path": str(tmp_path), "sha256": None}
    monkeypatch.setenv("MMTOXICQA_SOURCE", "extra")
    assert data_fingerprint() == {"path": str(tmp_path), "sha256": None, "source": "extra"}
