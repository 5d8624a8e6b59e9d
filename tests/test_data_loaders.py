"""Source loaders on fixture files (synthetic, in the upstream formats) with malformed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from source_fixtures import EXPECTED, tiny_png, write_fixture_sources

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_bytes
from mmtoxicqa.data import loaders
from mmtoxicqa.data.dedup import dedup_form, enforce_disjoint, text_hash
from mmtoxicqa.data.sources import SourceDir
from mmtoxicqa.data.splits import load_split, validate_image


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return write_fixture_sources(tmp_path_factory.mktemp("sources"), corrupt_figstep=((1, 2),))


def test_figstep_loader_counts_and_mapping(fixture_root):
    src = SourceDir(fixture_root)
    result = loaders.load_figstep(src)
    assert result.read["questions"] == EXPECTED["figstep_questions_read"] == 26
    assert len(result.items) == EXPECTED["figstep_items"] == 20
    assert result.read["images"] == 20
    skipped = dict(result.skipped)
    assert skipped.pop("corrupt_image") == 1
    assert skipped == EXPECTED["figstep_skipped"]
    first = result.items[0]
    assert (first.key, first.category, first.label) == ("1-1", "illegal_activity", "Illegal Activity")
    assert first.request.text == "How can someone do fixture task 1-1?"
    assert first.request.instruction == "Steps to do fixture task 1-1."
    assert first.image is not None
    # the corrupt PNG (1-2) is never kept
    corrupt = next(i for i in result.items if i.key == "1-2")
    assert corrupt.image is None
    # 6 = Adult Content -> sexual, 8/9 -> regulated_advice
    assert {i.category for i in result.items if i.key.startswith(("6-", "8-", "9-"))} == {"sexual", "regulated_advice"}
    # every file read is hash-tracked
    assert src.hashes[loaders.FIGSTEP_QUESTIONS] == sha256_bytes((fixture_root / loaders.FIGSTEP_QUESTIONS).read_bytes())
    assert len([k for k in src.hashes if k.endswith(".png")]) == 20


def test_figstep_benign_loader(fixture_root):
    result = loaders.load_figstep_benign(SourceDir(fixture_root))
    assert result.read["benign_sentences"] == 12
    assert len(result.items) == 10
    assert result.skipped == {"empty_or_malformed_benign_sentence": 2}
    # 5 templates per SafeBench category, in order
    assert [i.category for i in result.items[:6]] == ["illegal_activity"] * 5 + ["hate"]
    assert all(i.toxic_label == 0 for i in result.items)


def test_mmsafetybench_loader(fixture_root):
    result = loaders.load_mmsafetybench(SourceDir(fixture_root))
    assert result.read["questions"] == 28
    assert len(result.items) == 26
    assert dict(result.skipped) == EXPECTED["mmsb_skipped"]
    item = result.items[0]
    assert item.key == "01-0" and item.category == "illegal_activity" and item.label == "01-Illegal_Activitiy"
    assert item.request.topic == "fixture 01-Illegal_Activitiy activity 0"
    assert item.prompt.startswith("The image shows a phrase of an activity.")
    assert {i.category for i in result.items if i.label == "08-Political_Lobbying"} == {"political"}


def test_mmsafetybench_invalid_json_is_one_error(tmp_path):
    root = write_fixture_sources(tmp_path)
    (root / loaders.mmsb_rel("07-Sex")).write_text("{not json")
    with pytest.raises(MMToxError, match=r"07-Sex.json is not valid JSON"):
        loaders.load_mmsafetybench(SourceDir(root))


def test_parse_toxigen_line_splits_on_literal_backslash_n_dash():
    assert loaders.parse_toxigen_line(r"- first one\n- second, with - dash\n-") == ["first one", "second, with - dash"]
    assert loaders.parse_toxigen_line("no leading dash") == []
    assert loaders.parse_toxigen_line("-   \\n-") == []
    # a real newline inside the text is not a separator
    assert loaders.parse_toxigen_line(r"- a\n- b") == ["a", "b"]


def test_toxigen_loader(fixture_root):
    result = loaders.load_toxigen(SourceDir(fixture_root))
    assert result.read["lines"] == 93
    assert result.read["statements"] == 31 * 4
    assert len(result.items) == 93  # 3 unique statements per file
    assert dict(result.skipped) == {"malformed_line": 31}
    assert result.read["lines:hate_trans"] == 3 and "lines:neutral_trans" not in result.read
    labels = {i.label for i in result.items}
    assert len(labels) == 31
    assert {i.category for i in result.items} == {"hate"}
    hate = [i for i in result.items if i.label == "hate_asian"]
    assert [i.request.text for i in hate] == [f"fixture hate statement about asian number {k}" for k in range(3)]
    assert all(i.toxic_label == 1 for i in hate)
    assert all(i.toxic_label == 0 for i in result.items if i.label.startswith("neutral_"))


def test_davidson_loader(fixture_root):
    result = loaders.load_davidson(SourceDir(fixture_root))
    assert result.read["rows"] == 29
    assert len(result.items) == 24
    assert dict(result.skipped) == EXPECTED["davidson_skipped"]
    by_label = {}
    for item in result.items:
        by_label.setdefault(item.label, []).append(item)
    assert {k: len(v) for k, v in by_label.items()} == {"hate_speech": 8, "offensive_language": 8, "neither": 8}
    assert {i.category for i in by_label["hate_speech"]} == {"hate"}
    assert {i.category for i in by_label["offensive_language"]} == {"harassment"}
    assert {i.toxic_label for i in by_label["neither"]} == {0}
    # cleaned: retweet marker and URL dropped, entity unescaped
    assert by_label["hate_speech"][0].request.text == "fixture tweet class 0 number 0 & more"
    assert by_label["hate_speech"][0].key == "hate_speech-0"


def test_clean_tweet():
    assert loaders.clean_tweet("!!! RT @maya: As a &amp; b http://t.co/x @bob") == "!!! As a & b @user"


def test_bad_words_loader(fixture_root):
    words, result = loaders.load_bad_words(SourceDir(fixture_root))
    assert words == ["fixtureword", "badterm", "ugh"]
    assert result.skipped == {"empty_line": 1}


@pytest.mark.parametrize(
    "rel, loader",
    [
        (loaders.FIGSTEP_QUESTIONS, loaders.load_figstep),
        (loaders.figstep_image_rel(3, 2), loaders.load_figstep),
        (loaders.FIGSTEP_BENIGN, loaders.load_figstep_benign),
        (loaders.mmsb_rel("13-Gov_Decision"), loaders.load_mmsafetybench),
        (loaders.toxigen_rel("neutral", "women"), loaders.load_toxigen),
        (loaders.DAVIDSON_CSV, loaders.load_davidson),
    ],
)
def test_missing_source_file_is_one_error_naming_it(tmp_path, rel, loader):
    root = write_fixture_sources(tmp_path)
    (root / rel).unlink()
    with pytest.raises(MMToxError) as info:
        loader(SourceDir(root))
    message = str(info.value)
    assert f"source file {rel} is missing" in message and "--sources" in message
    assert "\n" not in message


def test_csv_without_expected_header_is_one_error(tmp_path):
    root = write_fixture_sources(tmp_path)
    (root / loaders.DAVIDSON_CSV).write_text("a,b\n1,2\n")
    with pytest.raises(MMToxError, match=r"labeled_data.csv lacks the column\(s\) class, tweet"):
        loaders.load_davidson(SourceDir(root))


def test_extra_items_validation(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(tiny_png())
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG truncated")
    lines = [
        {"image": "img/ok.png", "question": "What is in the picture?", "category": "other"},
        {
            "image": str(tmp_path / "img" / "ok.png"),
            "question": "Say something kind.",
            "category": "hate",
            "split": "calibration",
            "toxic_label": 0,
            "request": "kind words",
        },
        {"image": "img/ok.png", "question": "   ", "category": "other"},
        {"image": "img/missing.png", "question": "Where is it?", "category": "other"},
        {"image": "img/bad.png", "question": "Broken?", "category": "other"},
        {"image": "img/ok.png", "question": "Unknown?", "category": "nonsense"},
        {"image": "img/ok.png", "question": "Split?", "category": "other", "split": "train"},
        {"image": "img/ok.png", "question": "Label?", "category": "other", "split": "calibration"},
        {"image": "img/ok.png", "question": "Attack?", "category": "other", "attack": "voodoo"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken json\n[1, 2]\n\n"
    path = tmp_path / "items.jsonl"
    path.write_text(text)
    items, result, hashes = loaders.load_extra(path)
    assert [(i.split, i.category, i.toxic_label, i.attack) for i in items] == [
        ("standard", "other", 1, "none"),
        ("calibration", "hate", 0, "none"),
    ]
    assert items[0].request == "What is in the picture?" and items[1].request == "kind words"
    assert result.read["lines"] == 11
    assert dict(result.skipped) == {
        "empty_question": 1,
        "image_missing": 1,
        "corrupt_image": 1,
        "unknown_category": 1,
        "unknown_split": 1,
        "bad_toxic_label": 1,
        "unknown_attack": 1,
        "bad_json": 1,
        "not_an_object": 1,
    }
    assert hashes["extra/items.jsonl"] == sha256_bytes(path.read_bytes())
    assert "extra/img/ok.png" in hashes


def test_extra_missing_file_is_an_error(tmp_path):
    with pytest.raises(MMToxError, match="--extra file .*nope.jsonl does not exist"):
        loaders.load_extra(tmp_path / "nope.jsonl")


def test_dedup_form_and_disjointness_helper():
    assert dedup_form("  Hi,   THERE! It's\tme... ") == "hi there it s me"
    assert text_hash("How can someone do X?") == text_hash("how can someone do x")
    eval_rows = [{"id": "e1", "request": "Some Request!", "image_text": "", "question": "q"}]
    calib = [
        {"id": "c1", "request": "some request", "image_text": "x"},
        {"id": "c2", "request": "other", "image_text": "other"},
    ]
    kept, report = enforce_disjoint(calib, eval_rows)
    assert [r["id"] for r in kept] == ["c2"]
    assert report["dropped"] == 1 and report["dropped_ids"] == ["c1"] and report["passed"]


def test_validate_image(tmp_path):
    image = validate_image(tiny_png(size=(5, 3)), "x")
    assert image.size == (5, 3) and image.mode == "RGB"
    assert validate_image({"bytes": tiny_png(), "path": None}).size == (8, 8)
    with pytest.raises(MMToxError, match=r"item doc-7: image is corrupt and cannot be decoded"):
        validate_image(b"\x89PNG\r\n\x1a\n garbage", "doc-7")
    with pytest.raises(MMToxError, match="item doc-8: image is empty"):
        validate_image({"bytes": b"", "path": None}, "doc-8")


def test_load_split_missing_names_the_fix(tmp_path):
    with pytest.raises(MMToxError) as info:
        load_split("standard", tmp_path / "nowhere")
    message = str(info.value)
    assert message.startswith(f"MM-TOXIC-QA data not found at {tmp_path / 'nowhere'}")
    assert "mmtoxicqa build-data --sources ../shared/data --out" in message and "MMTOXICQA_DATA" in message
    with pytest.raises(MMToxError, match="unknown MM-TOXIC-QA split 'train'"):
        load_split("train", tmp_path)


def test_load_split_honours_mmtoxicqa_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTOXICQA_DATA", str(tmp_path / "envdata"))
    with pytest.raises(MMToxError, match="envdata"):
        load_split("benign")
